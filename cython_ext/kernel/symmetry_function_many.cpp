// Descriptor::contract_many: the contraction of several dE/dG vectors (a committee's members
// sharing one symmetry-function set) in one pass over the neighbours and triplets.
//
// The per-triplet geometry (Gaussian products, angular powers, cutoff products, inverse
// distances) and the index/unit-vector loads of the scatter are formed once; only the
// weighted sums, the four triplet coefficients and the scatter are per vector. The formulas
// are those of Descriptor::contract (symmetry_function.cpp), which documents the workspace
// layout that Descriptor::compute leaves behind and this function reads.
#include "symmetry_function.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__GLIBC__) && \
    !defined(PYFRAGNN_NO_MULTIVERSION)
#if __GNUC__ >= 12
#define PYFRAGNN_MANY_HOT __attribute__((target_clones("arch=x86-64-v3", "default"), flatten))
#else
#define PYFRAGNN_MANY_HOT __attribute__((target_clones("avx2", "default"), flatten))
#endif
#else
#define PYFRAGNN_MANY_HOT
#endif

namespace pyfragnn {

namespace {

constexpr int kBlockMany = 128;
constexpr int kFingerprintMany = 4;  // as kFingerprint in symmetry_function.cpp
constexpr int kMaxVec = 4;           // vectors per pass (more are done in passes)

inline void pow_array_many(int n, const double* in, int m, double* out) {
    switch (m) {
    case 0: std::fill(out, out + n, 1.0); return;
    case 1: std::copy(in, in + n, out); return;
    case 2: for (int i = 0; i < n; ++i) out[i] = in[i] * in[i]; return;
    case 3: for (int i = 0; i < n; ++i) out[i] = in[i] * in[i] * in[i]; return;
    case 4: for (int i = 0; i < n; ++i) { const double x2 = in[i] * in[i]; out[i] = x2 * x2; } return;
    default: break;
    }
    std::copy(in, in + n, out);
    int bit = 30;
    while (!((m >> bit) & 1)) --bit;
    for (--bit; bit >= 0; --bit) {
        for (int i = 0; i < n; ++i) out[i] *= out[i];
        if ((m >> bit) & 1)
            for (int i = 0; i < n; ++i) out[i] *= in[i];
    }
}

}  // namespace

void Descriptor::contract_many(const AtomEnvironment& env, int nvec, const double* dEdG,
                               double* dEdd, DescriptorWorkspace& ws) const {
    const std::size_t nsf = sfs_.size(), nd = 3 * static_cast<std::size_t>(env.n);
    if (nvec <= 1 || !compact_radial_.empty() || !compact_angular_.empty()) {
        for (int v = 0; v < nvec; ++v) contract(env, dEdG + v * nsf, dEdd + v * nd, ws);
        return;
    }
    for (int v0 = 0; v0 < nvec; v0 += kMaxVec) {
        const int nv = std::min(kMaxVec, nvec - v0);
        if (nv == 1) contract(env, dEdG + v0 * nsf, dEdd + v0 * nd, ws);
        else contract_pass(env, nv, dEdG + v0 * nsf, dEdd + v0 * nd, ws);
    }
}

PYFRAGNN_MANY_HOT
void Descriptor::contract_pass(const AtomEnvironment& env, int nv, const double* dEdG,
                               double* dEdd, DescriptorWorkspace& ws) const {
    const int n = env.n, ne = n_elements_;
    const int n_rad = static_cast<int>(radial_.size()), n_ang = static_cast<int>(angular_.size());
    const std::size_t nsf = sfs_.size(), nd = 3 * static_cast<std::size_t>(n);
    std::fill(dEdd, dEdd + nv * nd, 0.0);
    if (sfs_.empty()) return;
    {  // compute(env, ws) must have run for this env (as for contract)
        const Descriptor* self = this;
        const bool cached = ws.buf.size() >= kFingerprintMany &&
                            std::memcmp(ws.buf.data(), &self, sizeof self) == 0 && ws.buf[1] == n &&
                            (n == 0 || (ws.buf[2] == env.d[0] && ws.buf[3] == env.d[3 * n - 1]));
        if (!cached) {
            std::vector<double> G(nsf);
            compute(env, G.data(), ws);
        }
    }
    const int head = 2 * ne + 2;
    const int* start = ws.ibuf.data();
    const double* buf = ws.buf.data();
    const double* u = buf + kFingerprintMany;

    // Own scratch: along_u [nv][n], then the block arrays.
    std::size_t need = static_cast<std::size_t>(nv) * n + static_cast<std::size_t>(nv) * n;
    for (const AngularGroup& g : angular_) {
        const std::size_t ng = g.gauss.size(), np = g.powers.size(), nt = g.terms.size();
        need = std::max(need, static_cast<std::size_t>(nv) * n +
                                  kBlockMany * (10 + ng + 2 * np + nv * (2 * ng + 5)) + nv * nt);
    }
    if (ws.batch.size() < need) ws.batch.resize(need);
    double* along = ws.batch.data();                  // [nv][n]
    double* scratch = along + static_cast<std::size_t>(nv) * n;
    std::fill(along, along + static_cast<std::size_t>(nv) * n, 0.0);
    auto list = [&](int e, const int*& first, int& count) {  // e < 0: all elements
        first = start + start[e < 0 ? 0 : e];
        count = start[e < 0 ? ne : e + 1] - start[e < 0 ? 0 : e];
    };

    // Radial Gaussians: dG_t/dr = g_t (dfc - 2 eta (r - rs) fc), along u_j.
    for (int gi = 0; gi < n_rad; ++gi) {
        const RadialGroup& g = radial_[gi];
        const int* first; int m;
        list(g.e1, first, m);
        const double* r = buf + start[head + 1 + gi];
        const double* fc = r + m;
        const double* dfc = fc + m;
        double* s = scratch;  // [nv][m]
        std::fill(s, s + static_cast<std::size_t>(nv) * m, 0.0);
        for (std::size_t t = 0; t < g.terms.size(); ++t) {
            const RadialTerm& term = g.terms[t];
            const double two_eta = 2.0 * term.eta;
            const double* gt = dfc + (1 + t) * m;
            for (int v = 0; v < nv; ++v) {
                const double w = dEdG[v * nsf + term.sf];
                if (w == 0.0) continue;
                double* sv = s + static_cast<std::size_t>(v) * m;
                for (int a = 0; a < m; ++a)
                    sv[a] += w * gt[a] * (dfc[a] - two_eta * (r[a] - term.rs) * fc[a]);
            }
        }
        for (int v = 0; v < nv; ++v) {
            const double* sv = s + static_cast<std::size_t>(v) * m;
            double* av = along + static_cast<std::size_t>(v) * n;
            for (int a = 0; a < m; ++a) av[first[a]] += sv[a];
        }
    }

    // Angular Gaussians (3, 9, 13).
    for (int gi = 0; gi < n_ang; ++gi) {
        const AngularGroup& g = angular_[gi];
        const int* h = start + head + 1 + n_rad + 5 * gi;
        const int ng = static_cast<int>(g.gauss.size()), npow = static_cast<int>(g.powers.size());
        const int nt = static_cast<int>(g.terms.size());
        const bool with_jk = g.type != 9;
        const double* nb_fc = buf + h[0];
        const double* nb_dfc = nb_fc + n;
        const double* nb_g = nb_dfc + n;
        const int cap = h[2], count = h[3];
        const int* pj = start + h[4];
        const int* pk = pj + cap;
        const double* cosv = buf + h[1];
        const double* rjk = cosv + cap;
        const double* fjk = rjk + cap;
        const double* dfjk = fjk + cap;
        const double* xjk = dfjk + cap;
        // shared per block
        double* rij = scratch;                 // [kBlock]
        double* rik = rij + kBlockMany;
        double* tmp = rik + kBlockMany;
        double* cF = tmp + kBlockMany;         // fc_j fc_k fc_jk
        double* cJ = cF + kBlockMany;          // dfc_j fc_k fc_jk
        double* cK = cJ + kBlockMany;          // fc_j dfc_k fc_jk
        double* cJK = cK + kBlockMany;         // fc_j fc_k dfc_jk / r_jk
        double* inv_j = cJK + kBlockMany;
        double* inv_k = inv_j + kBlockMany;
        double* cosb = inv_k + kBlockMany;     // unused spare
        double* tg = cosb + kBlockMany;        // [ng][kBlock]
        double* pw = tg + ng * kBlockMany;     // [npow][kBlock]
        double* dpw = pw + npow * kBlockMany;  // [npow][kBlock]
        double* per = dpw + npow * kBlockMany; // per vector: Q, R [ng], s0 sc sj sk sjk
        const std::size_t per_size = static_cast<std::size_t>(2 * ng + 5) * kBlockMany;
        double* wt = per + nv * per_size;      // [nv][nt]
        bool any = false;
        for (int v = 0; v < nv; ++v)
            for (int t = 0; t < nt; ++t) {
                wt[v * nt + t] = dEdG[v * nsf + g.terms[t].sf] * g.terms[t].norm;
                any = any || wt[v * nt + t] != 0.0;
            }
        if (!any) continue;
        for (int t0 = 0; t0 < count; t0 += kBlockMany) {
            const int nb = std::min(kBlockMany, count - t0);
            const int* bj = pj + t0;
            const int* bk = pk + t0;
            const double* bc = cosv + t0;
            const double* br = rjk + t0;
            for (int i = 0; i < nb; ++i) {
                rij[i] = env.r[bj[i]];
                rik[i] = env.r[bk[i]];
            }
            for (int i = 0; i < nb; ++i) {
                const int j = bj[i], k = bk[i];
                const double fj = nb_fc[j], fk = nb_fc[k];
                const double f3 = with_jk ? fjk[t0 + i] : 1.0;
                cF[i] = fj * fk * f3;
                cJ[i] = nb_dfc[j] * fk * f3;
                cK[i] = fj * nb_dfc[k] * f3;
                cJK[i] = with_jk ? fj * fk * dfjk[t0 + i] : 0.0;
                inv_j[i] = 1.0 / rij[i];
                inv_k[i] = 1.0 / rik[i];
            }
            if (with_jk)
                for (int i = 0; i < nb; ++i) cJK[i] /= br[i];
            for (int q = 0; q < ng; ++q) {
                const double* gq = nb_g + q * n;
                double* tq = tg + q * kBlockMany;
                if (with_jk) {
                    const double* xq = xjk + q * cap + t0;
                    for (int i = 0; i < nb; ++i) tq[i] = gq[bj[i]] * gq[bk[i]] * xq[i];
                } else {
                    for (int i = 0; i < nb; ++i) tq[i] = gq[bj[i]] * gq[bk[i]];
                }
            }
            for (int w = 0; w < npow; ++w) {  // pw = P^zeta, dpw = zeta lambda P^(zeta-1)
                const AngularPower& p = g.powers[w];
                double* pww = pw + w * kBlockMany;
                double* dpww = dpw + w * kBlockMany;
                for (int i = 0; i < nb; ++i) {
                    const double pp = 1.0 + p.lambda * bc[i];
                    tmp[i] = 0.5 * (pp + std::fabs(pp));
                }
                const double zl = p.zeta * p.lambda;
                if (p.zeta_int == 1) {
                    for (int i = 0; i < nb; ++i) {
                        pww[i] = tmp[i];
                        dpww[i] = tmp[i] > 0.0 ? zl : 0.0;
                    }
                    continue;
                }
                if (p.zeta_int >= 0) pow_array_many(nb, tmp, p.zeta_int - 1, dpww);
                else
                    for (int i = 0; i < nb; ++i)
                        dpww[i] = tmp[i] > 0.0 ? std::pow(tmp[i], p.zeta - 1.0) : 0.0;
                for (int i = 0; i < nb; ++i) {
                    pww[i] = dpww[i] * tmp[i];
                    dpww[i] *= zl;
                }
            }
            // per vector: weighted sums, then the four triplet coefficients
            for (int v = 0; v < nv; ++v) {
                double* Q = per + v * per_size;
                double* R = Q + ng * kBlockMany;
                double* s0 = R + ng * kBlockMany;
                double* sc = s0 + kBlockMany;
                double* sj = sc + kBlockMany;
                double* sk = sj + kBlockMany;
                double* sjk = sk + kBlockMany;
                std::fill(Q, Q + 2 * ng * kBlockMany, 0.0);
                const double* wv = wt + v * nt;
                for (int t = 0; t < nt; ++t) {
                    const AngularTerm& term = g.terms[t];
                    const double w = wv[t];
                    if (w == 0.0) continue;
                    double* Qq = Q + term.gauss * kBlockMany;
                    double* Rq = R + term.gauss * kBlockMany;
                    const double* pww = pw + term.power * kBlockMany;
                    const double* dpww = dpw + term.power * kBlockMany;
                    for (int i = 0; i < nb; ++i) {
                        Qq[i] += w * pww[i];
                        Rq[i] += w * dpww[i];
                    }
                }
                std::fill(s0, s0 + 5 * kBlockMany, 0.0);
                for (int q = 0; q < ng; ++q) {
                    const double two_eta = 2.0 * g.gauss[q].eta, rs = g.gauss[q].rs;
                    const double* tq = tg + q * kBlockMany;
                    const double* Qq = Q + q * kBlockMany;
                    const double* Rq = R + q * kBlockMany;
                    for (int i = 0; i < nb; ++i) {
                        const double x = Qq[i] * tq[i];
                        s0[i] += x;
                        sc[i] += Rq[i] * tq[i];
                        sj[i] -= two_eta * (rij[i] - rs) * x;
                        sk[i] -= two_eta * (rik[i] - rs) * x;
                        sjk[i] -= two_eta * (br[i] - rs) * x;
                    }
                }
                // alpha/beta overwrite s0, sj, sk, sjk (as in contract)
                for (int i = 0; i < nb; ++i) {
                    const double t_rij = cF[i] * sj[i] + s0[i] * cJ[i];
                    const double t_rik = cF[i] * sk[i] + s0[i] * cK[i];
                    const double t_rjk_r = with_jk ? cF[i] * sjk[i] / br[i] + s0[i] * cJK[i] : 0.0;
                    const double t_cos = cF[i] * sc[i], c = bc[i];
                    s0[i] = t_rij - t_cos * c * inv_j[i] + t_rjk_r * rij[i];    // alpha_j
                    sj[i] = t_cos * inv_j[i] - t_rjk_r * rik[i];                // beta_j
                    sk[i] = t_rik - t_cos * c * inv_k[i] + t_rjk_r * rik[i];    // alpha_k
                    sjk[i] = t_cos * inv_k[i] - t_rjk_r * rij[i];               // beta_k
                }
            }
            // scatter: index and unit-vector loads shared by the vectors
            for (int i = 0; i < nb;) {
                const int j = bj[i];
                const double* uj = u + 3 * j;
                double aj[kMaxVec] = {0.0}, gx[kMaxVec] = {0.0}, gy[kMaxVec] = {0.0},
                       gz[kMaxVec] = {0.0};
                for (; i < nb && bj[i] == j; ++i) {
                    const int k = bk[i];
                    const double* uk = u + 3 * k;
                    for (int v = 0; v < nv; ++v) {
                        const double* base = per + v * per_size + 2 * ng * kBlockMany;
                        const double alpha_j = base[i], beta_j = base[2 * kBlockMany + i];
                        const double alpha_k = base[3 * kBlockMany + i];
                        const double beta_k = base[4 * kBlockMany + i];
                        aj[v] += alpha_j;
                        gx[v] += beta_j * uk[0];
                        gy[v] += beta_j * uk[1];
                        gz[v] += beta_j * uk[2];
                        along[static_cast<std::size_t>(v) * n + k] += alpha_k;
                        double* gk = dEdd + v * nd + 3 * k;
                        gk[0] += beta_k * uj[0];
                        gk[1] += beta_k * uj[1];
                        gk[2] += beta_k * uj[2];
                    }
                }
                for (int v = 0; v < nv; ++v) {
                    along[static_cast<std::size_t>(v) * n + j] += aj[v];
                    double* gj = dEdd + v * nd + 3 * j;
                    gj[0] += gx[v];
                    gj[1] += gy[v];
                    gj[2] += gz[v];
                }
            }
        }
    }
    for (int v = 0; v < nv; ++v) {
        const double* av = along + static_cast<std::size_t>(v) * n;
        double* dv = dEdd + v * nd;
        for (int j = 0; j < n; ++j)
            for (int c = 0; c < 3; ++c) dv[3 * j + c] += av[j] * u[3 * j + c];
    }
}

}  // namespace pyfragnn
