#include "atomic_network.h"
#include "hot.h"
#include "compact_function.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <stdexcept>

namespace pyfragnn {

namespace {
constexpr double kExpLimit = 35.0;  // n2p2 clips logistic/softplus beyond |x| > 35

/// tanh(x) within a few ulp, without branches or library calls (tanh4 below: the same for four
/// values, which the layer loop uses): tanh|x| = -m / (2 + m) with m = expm1(-2|x|) =
/// 2^n e^r - 1 (r = y - n ln2, e^r by its Taylor polynomial as exp_approx); for n = 0,
/// m = r (e^r - 1)/r without the cancellation of e^r - 1. |x| >= 20 gives 1 (tanh 20 rounds
/// to 1).
inline double tanh_fast(double x) {
    double t, n;
    const double r = exp_reduce(-2.0 * std::min(std::fabs(x), 20.0), t, n);
    const double em1_r = expm1_over_r(r) * r;  // e^r - 1
    const double m = n == 0.0 ? em1_r : (em1_r + 1.0) * pow2_of(t) - 1.0;
    return std::copysign(-m / (2.0 + m), x);
}
}

Activation activation_from_letter(char letter) {
    switch (letter) {
        case 'l': case 't': case 's': case 'p': case 'r':
        case 'g': case 'c': case 'S': case 'e': case 'h':
            return static_cast<Activation>(letter);
        default:
            throw std::invalid_argument(std::string("unknown activation function '") + letter +
                                        "' (known: l t s p r g c S e h)");
    }
}

void activate(Activation a, double x, double& f, double& df, double& d2f) {
    switch (a) {
        case Activation::IDENTITY: f = x; df = 1.0; d2f = 0.0; return;
        case Activation::TANH: {
            const double t = tanh_fast(x);
            f = t; df = 1.0 - t * t; d2f = -2.0 * t * df; return;
        }
        case Activation::LOGISTIC:
        case Activation::REVLOGISTIC: {
            double s, ds, d2s;
            if (x > kExpLimit) { s = 1.0; ds = 0.0; d2s = 0.0; }
            else if (x < -kExpLimit) { s = 0.0; ds = 0.0; d2s = 0.0; }
            else { s = 1.0 / (1.0 + std::exp(-x)); ds = s * (1.0 - s); d2s = ds * (1.0 - 2.0 * s); }
            if (a == Activation::LOGISTIC) { f = s; df = ds; d2f = d2s; }
            else { f = 1.0 - s; df = -ds; d2f = -d2s; }
            return;
        }
        case Activation::SOFTPLUS: {
            if (x > kExpLimit) { f = x; df = 1.0; d2f = 0.0; }
            else if (x < -kExpLimit) { f = 0.0; df = 0.0; d2f = 0.0; }
            else {
                const double e = std::exp(x);
                f = std::log(1.0 + e); df = 1.0 / (1.0 / e + 1.0); d2f = df * (1.0 - df);
            }
            return;
        }
        case Activation::RELU:
            if (x > 0.0) { f = x; df = 1.0; } else { f = 0.0; df = 0.0; }
            d2f = 0.0; return;
        case Activation::GAUSSIAN: {
            const double g = std::exp(-0.5 * x * x);
            f = g; df = -x * g; d2f = (x * x - 1.0) * g; return;
        }
        case Activation::COS: f = std::cos(x); df = -std::sin(x); d2f = -f; return;
        case Activation::EXP: { const double e = std::exp(-x); f = e; df = -e; d2f = e; return; }
        case Activation::HARMONIC: f = x * x; df = 2.0 * x; d2f = 2.0; return;
    }
    throw std::invalid_argument("invalid activation function");
}

AtomicNetwork::AtomicNetwork(std::vector<int> layers, std::vector<Activation> activations,
                             bool normalize_nodes)
    : layers_(std::move(layers)), act_(std::move(activations)), normalize_(normalize_nodes) {
    if (layers_.size() < 2) throw std::invalid_argument("atomic network needs at least 2 layers");
    if (act_.size() != layers_.size() - 1)
        throw std::invalid_argument("atomic network: expected " +
                                    std::to_string(layers_.size() - 1) + " activations, got " +
                                    std::to_string(act_.size()));
    for (int n : layers_)
        if (n < 1) throw std::invalid_argument("atomic network: layer with no neurons");
    if (layers_.back() != 1) throw std::invalid_argument("atomic network: output layer must have 1 neuron");
    size_t n = 0;
    for (size_t l = 1; l < layers_.size(); ++l) {
        offset_.push_back(static_cast<int>(n));
        n += static_cast<size_t>(layers_[l - 1]) * layers_[l] + layers_[l];
    }
    w_.assign(n, 0.0);
    size_t nt = 0;
    for (size_t l = 1; l < layers_.size(); ++l) {
        offset_t_.push_back(static_cast<int>(nt));
        nt += static_cast<size_t>(layers_[l]) * ((layers_[l - 1] + 3) & ~3);
    }
    wt_.assign(nt, 0.0);
}

void AtomicNetwork::set_parameters(const std::vector<double>& w) {
    if (w.size() != w_.size())
        throw std::invalid_argument("atomic network expects " + std::to_string(w_.size()) +
                                    " weights and biases, got " + std::to_string(w.size()));
    w_ = w;
    update_transposed();
}

void AtomicNetwork::set_parameters(const double* w) {
    std::copy(w, w + w_.size(), w_.begin());
    update_transposed();
}

void AtomicNetwork::update_transposed() {
    for (size_t l = 1; l < layers_.size(); ++l) {
        const int nin = layers_[l - 1], nout = layers_[l], nin4 = (nin + 3) & ~3;
        const double* W = w_.data() + offset_[l - 1];
        double* T = wt_.data() + offset_t_[l - 1];
        for (int j = 0; j < nout; ++j)
            for (int i = 0; i < nin4; ++i)
                T[static_cast<size_t>(j) * nin4 + i] = i < nin ? W[static_cast<size_t>(i) * nout + j] : 0.0;
    }
}

namespace {
#pragma GCC diagnostic ignored "-Wpsabi"  // v4d_net helpers are inlined (flatten)
typedef double v4d_net __attribute__((vector_size(32)));
typedef long long v4i_net __attribute__((vector_size(32)));

/// tanh_fast of four values, the same operations lane by lane in vector form (GCC left the
/// scalar function's loop over a layer's nodes scalar: "control flow in loop").
inline v4d_net tanh4(v4d_net x) {
    const v4i_net sign = {INT64_MIN, INT64_MIN, INT64_MIN, INT64_MIN};
    const v4d_net ax = (v4d_net)((v4i_net)x & ~sign);
    v4d_net t, n;
    const v4d_net r = exp_reduce<v4d_net>(-2.0 * (ax < 20.0 ? ax : 20.0), t, n);
    const v4d_net em1_r = expm1_over_r(r) * r;
    constexpr double shifter = 6755399441055744.0;  // pow2_of, by lane
    std::int64_t shift_bits;
    std::memcpy(&shift_bits, &shifter, sizeof shift_bits);
    const v4d_net scale = (v4d_net)(((v4i_net)t - shift_bits + 1023) << 52);
    const v4d_net m = n == 0.0 ? em1_r : (em1_r + 1.0) * scale - 1.0;
    const v4d_net h = -m / (2.0 + m);
    return (v4d_net)(((v4i_net)h & ~sign) | ((v4i_net)x & sign));  // copysign
}

/// a = (a + b) c, y = tanh(a), dy = 1 - y^2 for n nodes, four at a time.
inline void tanh_layer(int n, const double* b, double c, double* a, double* y, double* dy) {
    int j = 0;
    for (; j + 4 <= n; j += 4) {  // whole vectors: loads and stores of four nodes
        v4d_net av, bv;
        std::memcpy(&av, a + j, sizeof av);
        std::memcpy(&bv, b + j, sizeof bv);
        av = (av + bv) * c;
        const v4d_net t = tanh4(av), d = 1.0 - t * t;
        std::memcpy(a + j, &av, sizeof av);
        std::memcpy(y + j, &t, sizeof t);
        std::memcpy(dy + j, &d, sizeof d);
    }
    for (; j < n; j += 4) {
        const int k = std::min(4, n - j);
        v4d_net av = {0.0, 0.0, 0.0, 0.0};
        for (int l = 0; l < k; ++l) av[l] = (a[j + l] + b[j + l]) * c;
        const v4d_net t = tanh4(av), d = 1.0 - t * t;
        for (int l = 0; l < k; ++l) {
            a[j + l] = av[l];
            y[j + l] = t[l];
            dy[j + l] = d[l];
        }
    }
}

/// a[0..4 NC) = sum_i W[i][.] y[i] over i < nin (W rows of 4 NC), the sums in registers (a
/// loop over a[] in memory waited on a store and reload per input), as two partial sums over
/// even and odd i so that two chains of dependent adds run at once.
template <int NC>
inline void weighted_rows(int nin, const double* W, const double* y, double* a) {
    v4d_net acc[NC], acc2[NC];
    for (int c = 0; c < NC; ++c) acc[c] = acc2[c] = v4d_net{0.0, 0.0, 0.0, 0.0};
    int i = 0;
    for (; i + 1 < nin; i += 2) {
        const double yi = y[i], yi2 = y[i + 1];
        const double* Wi = W + static_cast<size_t>(i) * 4 * NC;
        for (int c = 0; c < NC; ++c) {
            v4d_net w, w2;
            std::memcpy(&w, Wi + 4 * c, sizeof w);
            std::memcpy(&w2, Wi + 4 * NC + 4 * c, sizeof w2);
            acc[c] += w * yi;
            acc2[c] += w2 * yi2;
        }
    }
    if (i < nin) {
        const double yi = y[i];
        const double* Wi = W + static_cast<size_t>(i) * 4 * NC;
        for (int c = 0; c < NC; ++c) {
            v4d_net w;
            std::memcpy(&w, Wi + 4 * c, sizeof w);
            acc[c] += w * yi;
        }
    }
    for (int c = 0; c < NC; ++c) acc[c] += acc2[c];
    std::memcpy(a, acc, sizeof acc);
}
}  // namespace

// Node storage in ws: layer l (1..L) occupies [node_off(l), node_off(l)+n_l); layer 0 is x.
void AtomicNetwork::forward(const double* x, NetworkWorkspace& ws, bool second) const {
    const size_t L = layers_.size() - 1;
    size_t total = 0;
    for (size_t l = 0; l <= L; ++l) total += layers_[l];
    if (ws.a.size() < total) {
        ws.a.resize(total); ws.y.resize(total); ws.dy.resize(total); ws.d2y.resize(total);
        ws.g.resize(total); ws.ra.resize(total); ws.ry.resize(total); ws.rg.resize(total);
    }
    const int n0 = layers_[0];
    for (int i = 0; i < n0; ++i) ws.y[i] = x[i];
    size_t in = 0, out = n0;
    for (size_t l = 1; l <= L; ++l) {
        const int nin = layers_[l - 1], nout = layers_[l];
        const double* W = w_.data() + offset_[l - 1];
        const double* b = W + static_cast<size_t>(nin) * nout;
        double* a = ws.a.data() + out;
        const double* yin = ws.y.data() + in;
        switch (nout) {
        case 1: a[0] = dot(nin, W, yin); break;  // the output node, its sum in registers
        case 4: weighted_rows<1>(nin, W, yin, a); break;
        case 8: weighted_rows<2>(nin, W, yin, a); break;
        case 12: weighted_rows<3>(nin, W, yin, a); break;
        case 16: weighted_rows<4>(nin, W, yin, a); break;
        default:
            for (int j = 0; j < nout; ++j) a[j] = 0.0;
            for (int i = 0; i < nin; ++i) {
                const double yi = yin[i];
                const double* Wi = W + static_cast<size_t>(i) * nout;
                for (int j = 0; j < nout; ++j) a[j] += Wi[j] * yi;
            }
        }
        const double c = normalize_ ? 1.0 / nin : 1.0;
        double* y = ws.y.data() + out;
        double* dy = ws.dy.data() + out;
        if (act_[l - 1] == Activation::TANH) {  // vectorised; the numbers of activate()
            tanh_layer(nout, b, c, a, y, dy);
            if (second)
                for (int j = 0; j < nout; ++j) ws.d2y[out + j] = -2.0 * y[j] * dy[j];
        } else {
            double d2;
            for (int j = 0; j < nout; ++j) {
                a[j] = (a[j] + b[j]) * c;
                activate(act_[l - 1], a[j], y[j], dy[j], d2);
                if (second) ws.d2y[out + j] = d2;
            }
        }
        in = out;
        out += nout;
    }
}

PYFRAGNN_HOT_V3
double AtomicNetwork::evaluate(const double* x, double* dEdx, NetworkWorkspace& ws) const {
    forward(x, ws, false);
    const size_t L = layers_.size() - 1;
    size_t out = 0;
    for (size_t l = 0; l < L; ++l) out += layers_[l];
    const double E = ws.y[out];
    if (!dEdx) return E;
    // Backward: g = dE/dy of layer l; delta = g * f'(a) * c.
    ws.g[out] = 1.0;
    for (size_t l = L; l >= 1; --l) {
        const int nin = layers_[l - 1], nout = layers_[l];
        const size_t in = out - nin;
        const double c = normalize_ ? 1.0 / nin : 1.0;
        double* delta = ws.a.data() + out;  // reuse a as delta storage
        for (int j = 0; j < nout; ++j) delta[j] = ws.g[out + j] * ws.dy[out + j] * c;
        double* gin = (l == 1) ? dEdx : ws.g.data() + in;
        // gin[i] = sum_j W[i][j] delta[j] (j in order) for four i per vector, from the
        // transposed copy: the rows of W^T are short (n_l), their sums chains of dependent adds.
        const int nin4 = (nin + 3) & ~3;
        const double* T = wt_.data() + offset_t_[l - 1];
        auto store = [&](int i, const v4d_net& s) {  // gin has nin entries, not nin4
            if (i + 4 <= nin) std::memcpy(gin + i, &s, sizeof s);
            else for (int k = 0; i + k < nin; ++k) gin[i + k] = s[k];
        };
        // NOUT: the usual widths at compile time, so that the loop over the outputs unrolls
        // and delta stays in registers (0: nout at run time).
        auto rows = [&](auto NOUT) PYFRAGNN_LAMBDA {
            const int n = NOUT() > 0 ? NOUT() : nout;
            int i = 0;
            for (; i + 8 <= nin4; i += 8) {  // two vectors of inputs per pass over the outputs
                v4d_net s0 = {0.0, 0.0, 0.0, 0.0}, s1 = s0;
                for (int j = 0; j < n; ++j) {
                    v4d_net t0, t1;
                    std::memcpy(&t0, T + static_cast<size_t>(j) * nin4 + i, sizeof t0);
                    std::memcpy(&t1, T + static_cast<size_t>(j) * nin4 + i + 4, sizeof t1);
                    s0 += t0 * delta[j];
                    s1 += t1 * delta[j];
                }
                store(i, s0);
                store(i + 4, s1);
            }
            for (; i < nin4; i += 4) {
                v4d_net s = {0.0, 0.0, 0.0, 0.0};
                for (int j = 0; j < n; ++j) {
                    v4d_net t;
                    std::memcpy(&t, T + static_cast<size_t>(j) * nin4 + i, sizeof t);
                    s += t * delta[j];
                }
                store(i, s);
            }
        };
        switch (nout) {
        case 4: rows(std::integral_constant<int, 4>{}); break;
        case 8: rows(std::integral_constant<int, 8>{}); break;
        case 12: rows(std::integral_constant<int, 12>{}); break;
        case 16: rows(std::integral_constant<int, 16>{}); break;
        default: rows(std::integral_constant<int, 0>{}); break;
        }
        out = in;
    }
    return E;
}

double AtomicNetwork::gradient(const double* x, double scale, double* dEdw,
                               NetworkWorkspace& ws) const {
    forward(x, ws, false);
    const size_t L = layers_.size() - 1;
    size_t out = 0;
    for (size_t l = 0; l < L; ++l) out += layers_[l];
    const double E = ws.y[out];
    ws.g[out] = 1.0;
    for (size_t l = L; l >= 1; --l) {
        const int nin = layers_[l - 1], nout = layers_[l];
        const size_t in = out - nin;
        const double* W = w_.data() + offset_[l - 1];
        double* gW = dEdw + offset_[l - 1];
        double* gb = gW + static_cast<size_t>(nin) * nout;
        const double c = normalize_ ? 1.0 / nin : 1.0;
        double* delta = ws.a.data() + out;
        for (int j = 0; j < nout; ++j) {
            delta[j] = ws.g[out + j] * ws.dy[out + j] * c;
            gb[j] += scale * delta[j];
        }
        for (int i = 0; i < nin; ++i) {
            const double yi = scale * ws.y[in + i];
            const double* Wi = W + static_cast<size_t>(i) * nout;
            double* gWi = gW + static_cast<size_t>(i) * nout;
            double s = 0.0;
            for (int j = 0; j < nout; ++j) {
                gWi[j] += yi * delta[j];
                s += Wi[j] * delta[j];
            }
            if (l > 1) ws.g[in + i] = s;
        }
        out = in;
    }
    return E;
}

double AtomicNetwork::input_directional_gradient(const double* x, const double* v, double scale,
                                                 double* dsdw, NetworkWorkspace& ws) const {
    forward(x, ws, true);
    const size_t L = layers_.size() - 1;
    // Forward tangent: R{a_l} = c W_l R{y_{l-1}}, R{y_l} = f'(a_l) R{a_l}, R{y_0} = v.
    const int n0 = layers_[0];
    for (int i = 0; i < n0; ++i) ws.ry[i] = v[i];
    size_t in = 0, out = n0;
    for (size_t l = 1; l <= L; ++l) {
        const int nin = layers_[l - 1], nout = layers_[l];
        const double* W = w_.data() + offset_[l - 1];
        const double c = normalize_ ? 1.0 / nin : 1.0;
        double* ra = ws.ra.data() + out;
        for (int j = 0; j < nout; ++j) ra[j] = 0.0;
        for (int i = 0; i < nin; ++i) {
            const double ri = ws.ry[in + i];
            const double* Wi = W + static_cast<size_t>(i) * nout;
            for (int j = 0; j < nout; ++j) ra[j] += Wi[j] * ri;
        }
        for (int j = 0; j < nout; ++j) {
            ra[j] *= c;
            ws.ry[out + j] = ws.dy[out + j] * ra[j];
        }
        in = out;
        out += nout;
    }
    out = in;  // output layer start
    const double s = ws.ry[out];
    // Backward with R{.}: delta = c g f'(a); R{delta} = c (R{g} f'(a) + g f''(a) R{a});
    // ds/dW_l[j][i] = R{delta_j} y_i + delta_j R{y_i}; ds/db_l[j] = R{delta_j}.
    ws.g[out] = 1.0;
    ws.rg[out] = 0.0;
    for (size_t l = L; l >= 1; --l) {
        const int nin = layers_[l - 1], nout = layers_[l];
        const size_t pin = out - nin;
        const double* W = w_.data() + offset_[l - 1];
        double* gW = dsdw + offset_[l - 1];
        double* gb = gW + static_cast<size_t>(nin) * nout;
        const double c = normalize_ ? 1.0 / nin : 1.0;
        double* delta = ws.a.data() + out;  // a no longer needed
        double* rdelta = ws.ra.data() + out;
        for (int j = 0; j < nout; ++j) {
            const double rd = c * (ws.rg[out + j] * ws.dy[out + j] +
                                   ws.g[out + j] * ws.d2y[out + j] * rdelta[j]);
            delta[j] = c * ws.g[out + j] * ws.dy[out + j];
            rdelta[j] = rd;
            gb[j] += scale * rd;
        }
        for (int i = 0; i < nin; ++i) {
            const double yi = ws.y[pin + i], ryi = ws.ry[pin + i];
            const double* Wi = W + static_cast<size_t>(i) * nout;
            double* gWi = gW + static_cast<size_t>(i) * nout;
            double sg = 0.0, srg = 0.0;
            for (int j = 0; j < nout; ++j) {
                gWi[j] += scale * (rdelta[j] * yi + delta[j] * ryi);
                sg += Wi[j] * delta[j];
                srg += Wi[j] * rdelta[j];
            }
            if (l > 1) { ws.g[pin + i] = sg; ws.rg[pin + i] = srg; }
        }
        out = pin;
    }
    return s;
}

}  // namespace pyfragnn
