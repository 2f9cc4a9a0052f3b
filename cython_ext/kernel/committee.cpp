#include "committee.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <stdexcept>

namespace pyfragnn {

namespace {

bool same_descriptors(const Model& a, const Model& b) {
    if (a.elements() != b.elements()) return false;
    for (int e = 0; e < a.n_elements(); ++e) {
        const auto& pa = a.descriptor(e).params();
        const auto& pb = b.descriptor(e).params();
        if (pa.size() != pb.size()) return false;
        for (size_t s = 0; s < pa.size(); ++s)
            if (format_symmetry_function(pa[s], a.elements()) !=
                    format_symmetry_function(pb[s], b.elements()) ||
                pa[s].cutoff_type != pb[s].cutoff_type ||
                pa[s].cutoff_alpha != pb[s].cutoff_alpha)
                return false;
    }
    return true;
}

std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : " ") + x;
    return s;
}

std::string num(double v) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.10g", v);
    return buf;
}

}  // namespace

std::string Committee::incompatibility(const Model& a, const Model& b) {
    if (a.elements() != b.elements())
        return "elements differ (" + join(a.elements()) + " vs " + join(b.elements()) + ")";
    if (std::fabs(a.cutoff() - b.cutoff()) > 1e-12 * std::max(a.cutoff(), b.cutoff()))
        return "cutoffs differ (" + num(a.cutoff()) + " vs " + num(b.cutoff()) +
               " in potential units)";
    if (a.length_unit() != b.length_unit() || a.energy_unit() != b.energy_unit())
        return "units differ (length unit " + num(a.length_unit()) + " vs " +
               num(b.length_unit()) + " Å, energy unit " + num(a.energy_unit()) + " vs " +
               num(b.energy_unit()) + " eV)";
    return "";
}

Committee::Committee(std::vector<const Model*> members, std::vector<double> md_weights)
    : members_(std::move(members)), w_(std::move(md_weights)) {
    if (members_.empty()) throw std::invalid_argument("a committee needs at least one member");
    if (w_.size() != members_.size())
        throw std::invalid_argument("a committee needs one MD weight per member");
    for (size_t m = 1; m < members_.size(); ++m) {
        const std::string why = incompatibility(*members_[0], *members_[m]);
        if (!why.empty())
            throw std::invalid_argument("committee member " + std::to_string(m + 1) +
                                        " does not match member 1: " + why);
    }
    source_.resize(members_.size());
    for (size_t m = 0; m < members_.size(); ++m) {
        source_[m] = static_cast<int>(m);
        for (size_t k = 0; k < m; ++k)
            if (source_[k] == static_cast<int>(k) && same_descriptors(*members_[k], *members_[m])) {
                source_[m] = static_cast<int>(k);
                break;
            }
    }
}

int Committee::n_descriptor_sets() const {
    int n = 0;
    for (int m = 0; m < size(); ++m) n += source_[m] == m;
    return n;
}

double Committee::compute(const NeighborListView& nl, const int* element, int64_t n_total,
                          CommitteeOutput& out) const {
    const Model& m0 = *members_[0];
    const int ne = m0.n_elements();
    const int M = size();
    auto centre = [&nl](int64_t c) -> int64_t { return nl.centre ? nl.centre[c] : nl.first + c; };
    for (int m = 0; m < M; ++m) members_[m]->check_centres(nl, element, n_total);
    ComputeOutput& md = out.md;
    const bool md_grad = md.forces || md.virial || md.atom_virial;
    const bool need_grad = md_grad || out.member_forces;

    DescriptorWorkspace dws;
    NetworkWorkspace nws;
    std::vector<double> d, r, G, x, dEdG, dEdd;
    std::vector<int> ej, tj, set;
    double etot = 0.0;
    for (int64_t c = 0; c < nl.n_centres; ++c) {
        const int64_t i = centre(c);
        const int e = element[i];
        if (e < 0) {
            if (md.energies) md.energies[i] = 0.0;
            continue;
        }
        // Neighbours inside the largest cutoff of this element's functions over the members
        // (each function applies its own r < rc test).
        double rc = 0.0;
        for (int m = 0; m < M; ++m) rc = std::max(rc, members_[m]->descriptor(e).cutoff());
        const double rc2 = rc * rc;
        AtomEnvironment env;
        env.n = gather_neighbours(nl, c, i, element, n_total, ne, rc2, d, r, ej, tj);
        env.d = d.data();
        env.r = r.data();
        env.element = ej.data();
        double ei_md = 0.0;
        for (int src = 0; src < M; ++src) {
            if (source_[src] != src) continue;
            // Symmetry functions once per descriptor set; the workspace then holds what
            // contract() reuses for every member of the set.
            const Descriptor& desc = members_[src]->descriptor(e);
            const int nsf = desc.size();
            room(G, nsf); room(x, nsf);
            desc.compute(env, G.data(), dws);
            // Members of this set: extrapolation, network, dE/dG; then their contractions.
            set.clear();
            for (int m = src; m < M; ++m)
                if (source_[m] == src) set.push_back(m);
            const int nv = static_cast<int>(set.size());
            room(dEdG, static_cast<size_t>(nv) * nsf);
            for (int v = 0; v < nv; ++v) {
                const int m = set[v];
                const Model& mod = *members_[m];
                const double w = w_[m];
                const std::vector<double>& gmin = mod.gmin(e);
                const std::vector<double>& gmax = mod.gmax(e);
                const int32_t n_ex = mod.for_each_extrapolation(e, G.data(), [&](int s) {
                    if (w == 0.0) return;   // warnings: the members the MD runs on
                    ++md.n_warnings;
                    if (md.warnings && (md.max_warnings < 0 ||
                                        static_cast<int64_t>(md.warnings->size()) <
                                            md.max_warnings)) {
                        md.warnings->push_back({i, e, s, G[s], gmin[s], gmax[s]});
                        if (out.warning_member) out.warning_member->push_back(m);
                    }
                });
                if (out.extrapolations) out.extrapolations[i] += n_ex;
                mod.scale(e, G.data(), x.data());
                // The per-atom step of Model::compute and the trainers: energy and dE/dG.
                double* g = &dEdG[static_cast<size_t>(v) * nsf];
                const double ei = mod.atomic_energy(e, x.data(), need_grad ? g : nullptr, nws);
                if (!std::isfinite(ei))
                    throw std::runtime_error("non-finite energy for atom " + std::to_string(i) +
                                             " (element " + m0.elements()[e] + ", member " +
                                             std::to_string(m + 1) + ")");
                if (w != 0.0) ei_md += w == 1.0 ? ei : w * ei;
            }
            if (!need_grad || env.n == 0) continue;
            // The members' contractions in one pass over the workspace of this set's compute().
            const size_t nd = 3 * static_cast<size_t>(env.n);
            room(dEdd, nv * nd);
            desc.contract(env, nv, dEdG.data(), dEdd.data(), dws);
            for (int v = 0; v < nv; ++v) {
                const int m = set[v];
                const double w = w_[m];
                double* gm = &dEdd[v * nd];
                if (out.member_forces) {
                    double* f = out.member_forces + 3 * static_cast<size_t>(n_total) * m;
                    for (int j = 0; j < env.n; ++j) {
                        const double* g = gm + 3 * j;
                        double* fi = f + 3 * i;
                        double* ft = f + 3 * static_cast<int64_t>(tj[j]);
                        for (int a = 0; a < 3; ++a) { fi[a] += g[a]; ft[a] -= g[a]; }
                    }
                }
                if (!md_grad || w == 0.0) continue;
                if (w != 1.0)
                    for (size_t q = 0; q < nd; ++q) gm[q] *= w;
                for (int j = 0; j < env.n; ++j) {
                    const double* g = gm + 3 * j;
                    const double* v3 = &d[3 * j];
                    const int t = tj[j];
                    if (md.forces) {
                        double* fi = md.forces + 3 * i;
                        double* ft = md.forces + 3 * static_cast<int64_t>(t);
                        for (int a = 0; a < 3; ++a) { fi[a] += g[a]; ft[a] -= g[a]; }
                    }
                    if (md.virial || md.atom_virial) {
                        const double wv[6] = {-v3[0] * g[0], -v3[1] * g[1], -v3[2] * g[2],
                                              -v3[0] * g[1], -v3[0] * g[2], -v3[1] * g[2]};
                        if (md.virial)
                            for (int a = 0; a < 6; ++a) md.virial[a] += wv[a];
                        if (md.atom_virial)
                            for (int a = 0; a < 6; ++a)
                                md.atom_virial[6 * static_cast<int64_t>(t) + a] += wv[a];
                    }
                }
            }
        }
        if (md.energies) md.energies[i] = ei_md;
        etot += ei_md;
    }
    return etot;
}

}  // namespace pyfragnn
