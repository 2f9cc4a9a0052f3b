// Weight derivatives of energies and forces for trainers; see training.h.
#include "training.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace pyfragnn {

namespace {
struct Scratch {
    NetworkWorkspace nws;
    DescriptorWorkspace dws;
    std::vector<double> G, x, dEdx, dEdd, v, jac;
};
Scratch& scratch() {
    thread_local Scratch s;
    return s;
}
}  // namespace

std::vector<int64_t> weight_offsets(const Model& model) {
    std::vector<int64_t> off(model.n_elements() + 1, 0);
    for (int e = 0; e < model.n_elements(); ++e)
        off[e + 1] = off[e] + model.network(e).n_parameters();
    return off;
}

void get_weights(const Model& model, double* w) {
    int64_t o = 0;
    for (int e = 0; e < model.n_elements(); ++e) {
        const auto& p = model.network(e).parameters();
        for (size_t k = 0; k < p.size(); ++k) w[o + k] = p[k];
        o += static_cast<int64_t>(p.size());
    }
}

void set_weights(Model& model, const double* w) {
    int64_t o = 0;
    for (int e = 0; e < model.n_elements(); ++e) {
        AtomicNetwork& net = model.network(e);
        net.set_parameters(w + o);
        o += net.n_parameters();
    }
}

TrainingStructure::TrainingStructure(const Model& model, const double* positions, int64_t n,
                                     const double* cell, const bool* pbc, const int* element,
                                     bool cache_jacobians)
    : n_(n) {
    const int ne = model.n_elements();
    woff_ = weight_offsets(model);
    n_weights_ = woff_.back();
    element_.assign(element, element + n);
    for (int64_t i = 0; i < n; ++i)
        if (element_[i] < -1 || element_[i] >= ne)
            throw std::invalid_argument("atom " + std::to_string(i) + " has element index " +
                                        std::to_string(element_[i]) + ", the potential has " +
                                        std::to_string(ne) + " elements");
    NeighborList nl = build_neighbor_list(positions, n, cell, pbc, model.cutoff());
    // Filter neighbours exactly as Model::compute: element >= 0 and r < rc(element of centre).
    noff_.assign(n + 1, 0);
    nsf_.assign(n, 0);
    goff_.assign(n + 1, 0);
    joff_.assign(n + 1, 0);
    std::vector<int64_t> rcount(n + 1, 0);
    for (int64_t i = 0; i < n; ++i) {
        const int e = element_[i];
        if (e >= 0) {
            const double rc = model.descriptor(e).cutoff();
            const double rc2 = rc * rc;
            for (int64_t k = nl.offsets[i]; k < nl.offsets[i + 1]; ++k) {
                const int t = nl.index[k];
                if (element_[t] < 0) continue;
                const double* v = &nl.d[3 * k];
                const double r2 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
                if (!(r2 < rc2)) continue;
                if (r2 == 0.0)
                    throw std::invalid_argument("atoms " + std::to_string(i) + " and " +
                                                std::to_string(t) + " are at the same position");
                d_.insert(d_.end(), v, v + 3);
                r_.push_back(std::sqrt(r2));
                ej_.push_back(element_[t]);
                tj_.push_back(t);
                if (t != i) ++rcount[t + 1];
            }
            nsf_[i] = model.descriptor(e).size();
        }
        noff_[i + 1] = static_cast<int64_t>(r_.size());
        goff_[i + 1] = goff_[i] + nsf_[i];
        joff_[i + 1] = joff_[i] + static_cast<int64_t>(nsf_[i]) * 3 * (noff_[i + 1] - noff_[i]);
    }
    jac_size_ = joff_[n];
    // Reverse map (distinct centres i != k per target k, centres in ascending order).
    roff_.assign(n + 1, 0);
    {
        std::vector<int64_t> last(n, -1);
        std::vector<int64_t> cnt(n + 1, 0);
        for (int64_t i = 0; i < n; ++i)
            for (int64_t k = noff_[i]; k < noff_[i + 1]; ++k) {
                const int t = tj_[k];
                if (t != i && last[t] != i) { last[t] = i; ++cnt[t + 1]; }
            }
        for (int64_t k = 0; k < n; ++k) roff_[k + 1] = roff_[k] + cnt[k + 1];
        rsrc_.assign(roff_[n], 0);
        std::vector<int64_t> fill(roff_.begin(), roff_.end() - 1);
        std::fill(last.begin(), last.end(), -1);
        for (int64_t i = 0; i < n; ++i)
            for (int64_t k = noff_[i]; k < noff_[i + 1]; ++k) {
                const int t = tj_[k];
                if (t != i && last[t] != i) { last[t] = i; rsrc_[fill[t]++] = static_cast<int>(i); }
            }
    }
    G_.assign(goff_[n], 0.0);
    x_.assign(goff_[n], 0.0);
    cache_jac_ = cache_jacobians;
    if (cache_jac_) jac_.assign(jac_size_, 0.0);
    Scratch& s = scratch();
    for (int64_t i = 0; i < n; ++i) {
        const int e = element_[i];
        if (e < 0) continue;
        const AtomEnvironment env = environment(i);
        if (cache_jac_)
            model.descriptor(e).jacobian(env, &G_[goff_[i]], jac_.data() + joff_[i], s.dws);
        else
            model.descriptor(e).compute(env, &G_[goff_[i]], s.dws);
    }
    rescale(model);
}

int64_t TrainingStructure::base_bytes() const {
    return static_cast<int64_t>(
        8 * (d_.capacity() + r_.capacity() + G_.capacity() + x_.capacity() + noff_.capacity() +
             roff_.capacity() + goff_.capacity() + joff_.capacity() + woff_.capacity()) +
        4 * (ej_.capacity() + tj_.capacity() + rsrc_.capacity() + nsf_.capacity() +
             element_.capacity()));
}

void TrainingStructure::rescale(const Model& model) {
    for (int64_t i = 0; i < n_; ++i) {
        const int e = element_[i];
        if (e < 0) continue;
        model.scale(e, &G_[goff_[i]], &x_[goff_[i]]);
    }
}

void TrainingStructure::set_cache_jacobians(const Model& model, bool on) {
    if (on == cache_jac_) return;
    if (!on) {
        std::vector<double>().swap(jac_);
        cache_jac_ = false;
        return;
    }
    jac_.assign(jac_size_, 0.0);
    Scratch& s = scratch();
    for (int64_t i = 0; i < n_; ++i) {
        const int e = element_[i];
        if (e < 0) continue;
        const AtomEnvironment env = environment(i);
        s.G.resize(nsf_[i]);
        model.descriptor(e).jacobian(env, s.G.data(), jac_.data() + joff_[i], s.dws);
    }
    cache_jac_ = true;
}

double TrainingStructure::energy(const Model& model, double* atom_energies) const {
    Scratch& s = scratch();
    double etot = 0.0;
    for (int64_t i = 0; i < n_; ++i) {
        const int e = element_[i];
        if (e < 0) {
            if (atom_energies) atom_energies[i] = 0.0;
            continue;
        }
        const double ei = model.atomic_energy(e, &x_[goff_[i]], nullptr, s.nws);
        if (atom_energies) atom_energies[i] = ei;
        etot += ei;
    }
    return etot;
}

double TrainingStructure::atom_dEdd(const Model& model, int64_t i) const {
    Scratch& s = scratch();
    const int e = element_[i];
    const int nsf = nsf_[i];
    const int nn_ = static_cast<int>(noff_[i + 1] - noff_[i]);
    s.dEdx.resize(nsf);
    const double ei = model.atomic_energy(e, &x_[goff_[i]], s.dEdx.data(), s.nws);  // dE/dG
    s.dEdd.assign(3 * static_cast<size_t>(nn_), 0.0);
    if (nn_ == 0) return ei;
    if (cache_jac_) {
        const double* J = jac_.data() + joff_[i];
        for (int q = 0; q < nsf; ++q) {
            const double gq = s.dEdx[q];
            if (gq == 0.0) continue;
            const double* Jq = J + static_cast<size_t>(q) * nn_ * 3;
            for (int m = 0; m < 3 * nn_; ++m) s.dEdd[m] += gq * Jq[m];
        }
    } else {
        const AtomEnvironment env = environment(i);
        s.G.resize(nsf);
        model.descriptor(e).compute(env, s.G.data(), s.dws);
        model.descriptor(e).contract(env, s.dEdx.data(), s.dEdd.data(), s.dws);
    }
    return ei;
}

double TrainingStructure::energy_forces(const Model& model, double* forces) const {
    Scratch& s = scratch();
    double etot = 0.0;
    for (int64_t k = 0; k < 3 * n_; ++k) forces[k] = 0.0;
    for (int64_t i = 0; i < n_; ++i) {
        if (element_[i] < 0) continue;
        etot += atom_dEdd(model, i);
        const int nn_ = static_cast<int>(noff_[i + 1] - noff_[i]);
        for (int j = 0; j < nn_; ++j) {
            const double* g = &s.dEdd[3 * j];
            const int t = tj_[noff_[i] + j];
            for (int a = 0; a < 3; ++a) {
                forces[3 * i + a] += g[a];
                forces[3 * static_cast<int64_t>(t) + a] -= g[a];
            }
        }
    }
    return etot;
}

double TrainingStructure::force_component(const Model& model, int64_t k, int a) const {
    check_component(k, a);
    Scratch& s = scratch();
    // F_ka as energy_forces accumulates it, from the atoms that touch it (k and the centres
    // with k as a neighbour), in the same ascending order and with the same operations, so
    // the value equals energy_forces' bit for bit.
    double f = 0.0;
    auto add = [&](int64_t i) {
        if (element_[i] < 0) return;
        atom_dEdd(model, i);
        for (int64_t m = noff_[i]; m < noff_[i + 1]; ++m) {
            const double g = s.dEdd[3 * (m - noff_[i]) + a];
            if (i == k) f += g;
            if (tj_[m] == k) f -= g;
        }
    };
    bool done_k = false;
    for (int64_t m = roff_[k]; m < roff_[k + 1]; ++m) {
        const int64_t i = rsrc_[m];
        if (!done_k && k < i) { add(k); done_k = true; }
        add(i);
    }
    if (!done_k) add(k);
    return f;
}

void TrainingStructure::check_component(int64_t k, int a) const {
    if (k < 0 || k >= n_ || a < 0 || a > 2)
        throw std::invalid_argument("force component (" + std::to_string(k) + ", " +
                                    std::to_string(a) + ") out of range for " +
                                    std::to_string(n_) + " atoms");
}

double TrainingStructure::energy_gradient(const Model& model, double scale, double* dEdw) const {
    Scratch& s = scratch();
    const double inv_ce = 1.0 / model.conv_energy();
    double etot = 0.0;
    for (int64_t i = 0; i < n_; ++i) {
        const int e = element_[i];
        if (e < 0) continue;
        const double nn =
            model.network(e).gradient(&x_[goff_[i]], scale * inv_ce, dEdw + woff_[e], s.nws);
        etot += nn * inv_ce + model.mean_energy() + model.atom_energy(e);
    }
    return etot;
}

AtomEnvironment TrainingStructure::environment(int64_t i) const {
    AtomEnvironment env;
    env.n = static_cast<int>(noff_[i + 1] - noff_[i]);
    env.d = d_.data() + 3 * noff_[i];
    env.r = r_.data() + noff_[i];
    env.element = ej_.data() + noff_[i];
    return env;
}

const double* TrainingStructure::jacobian(const Model& model, int64_t i,
                                          std::vector<double>& buf) const {
    if (cache_jac_) return jac_.data() + joff_[i];
    Scratch& s = scratch();
    const int e = element_[i];
    const AtomEnvironment env = environment(i);
    buf.resize(joff_[i + 1] - joff_[i]);
    s.G.resize(nsf_[i]);
    model.descriptor(e).jacobian(env, s.G.data(), buf.data(), s.dws);
    return buf.data();
}

double TrainingStructure::atom_force_term(const Model& model, int64_t i, const double* c,
                                          double scale, double* dw,
                                          std::vector<double>& jbuf) const {
    const int e = element_[i];
    const int nsf = nsf_[i];
    const int nn_ = static_cast<int>(noff_[i + 1] - noff_[i]);
    if (nn_ == 0) return 0.0;
    Scratch& s = scratch();
    // u_j = c_t(j) - c_i
    const double* ci = c + 3 * i;
    s.dEdd.resize(3 * static_cast<size_t>(nn_));
    bool any = false;
    for (int j = 0; j < nn_; ++j) {
        const double* ct = c + 3 * static_cast<int64_t>(tj_[noff_[i] + j]);
        for (int a = 0; a < 3; ++a) {
            const double u = ct[a] - ci[a];
            s.dEdd[3 * j + a] = u;
            any = any || (u != 0.0);
        }
    }
    if (!any) return 0.0;
    const double* J = jacobian(model, i, jbuf);
    const std::vector<double>& slope = model.scaling_slope(e);
    const double inv_ce = 1.0 / model.conv_energy();
    s.v.resize(nsf);
    const double* u = s.dEdd.data();
    for (int q = 0; q < nsf; ++q) {
        const double* Jq = J + static_cast<size_t>(q) * nn_ * 3;
        double acc = 0.0;
        for (int m = 0; m < 3 * nn_; ++m) acc += Jq[m] * u[m];
        s.v[q] = acc * slope[q] * inv_ce;
    }
    // S = sum c.F gets -s_i from this atom.
    const double si = model.network(e).input_directional_gradient(&x_[goff_[i]], s.v.data(),
                                                                  -scale, dw + woff_[e], s.nws);
    return -si;
}

double TrainingStructure::force_gradient(const Model& model, const double* c, double scale,
                                         double* dw) const {
    Scratch& s = scratch();
    double total = 0.0;
    for (int64_t i = 0; i < n_; ++i) {
        if (element_[i] < 0) continue;
        total += atom_force_term(model, i, c, scale, dw, s.jac);
    }
    return total;
}

double TrainingStructure::force_component_gradient(const Model& model, int64_t k, int a,
                                                   double scale, double* dw) const {
    check_component(k, a);
    Scratch& s = scratch();
    std::vector<double> c(3 * n_, 0.0);
    c[3 * k + a] = 1.0;
    double total = 0.0;
    // Atoms with k among their neighbours, and k itself, in ascending order.
    bool done_k = false;
    for (int64_t m = roff_[k]; m < roff_[k + 1]; ++m) {
        const int64_t i = rsrc_[m];
        if (!done_k && k < i) {
            if (element_[k] >= 0) total += atom_force_term(model, k, c.data(), scale, dw, s.jac);
            done_k = true;
        }
        total += atom_force_term(model, i, c.data(), scale, dw, s.jac);
    }
    if (!done_k && element_[k] >= 0) total += atom_force_term(model, k, c.data(), scale, dw, s.jac);
    return total;
}

}  // namespace pyfragnn
