// Cell-list neighbour search for periodic, open and mixed boundaries, triclinic cells and
// cells shorter than the cutoff (an atom then meets several images of itself and others).
#include <algorithm>
#include <array>
#include <cmath>
#include <exception>
#include <stdexcept>
#include <string>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "model.h"

namespace pyfragnn {

namespace {

using Vec = std::array<double, 3>;

// Atoms per block of the threaded search (a few thousand list entries: enough work per block
// to hide the scheduling, small enough to balance the threads).
constexpr int64_t kBlockAtoms = 64;

Vec cross(const Vec& a, const Vec& b) {
    return {a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]};
}
double dot(const Vec& a, const Vec& b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }
double norm(const Vec& a) { return std::sqrt(dot(a, a)); }

}  // namespace

CellList::CellList(const double* positions, int64_t n, const double* cell, const bool* pbc,
                   double rc, double min_distance)
    : n_(n), rc2_(rc * rc), min2_(min_distance * min_distance) {
    if (!(rc > 0.0) || !std::isfinite(rc)) throw std::invalid_argument("cutoff must be positive");
    for (int64_t i = 0; i < 3 * n; ++i)
        if (!std::isfinite(positions[i]))
            throw std::invalid_argument("atom " + std::to_string(i / 3) +
                                        " has a non-finite position");
    // Basis: periodic axes use the cell vectors; other axes get a vector orthogonal to the
    // rest so that fractional coordinates are well defined.
    std::array<Vec, 3> b;
    for (int a = 0; a < 3; ++a) b[a] = {cell[3 * a], cell[3 * a + 1], cell[3 * a + 2]};
    for (int a = 0; a < 3; ++a)
        if (pbc[a] && !(std::isfinite(b[a][0]) && std::isfinite(b[a][1]) && std::isfinite(b[a][2])))
            throw std::invalid_argument("periodic axis " + std::to_string(a) +
                                        " has a non-finite cell vector");
    for (int a = 0; a < 3; ++a)
        if (pbc[a] && !(norm(b[a]) > 0.0))
            throw std::invalid_argument("periodic axis " + std::to_string(a) +
                                        " has a zero cell vector");
    for (int a = 0; a < 3; ++a) {
        if (pbc[a]) continue;
        const Vec& u = b[(a + 1) % 3];
        const Vec& v = b[(a + 2) % 3];
        const bool pu = pbc[(a + 1) % 3], pv = pbc[(a + 2) % 3];
        Vec c = cross(u, v);
        if (pu && pv && norm(c) > 0.0) { b[a] = c; }
        else if (pu || pv) {
            const Vec& p = pu ? u : v;
            // any unit vector orthogonal to p (and to the other open axis, fixed later)
            Vec t = std::fabs(p[0]) < 0.9 * norm(p) ? Vec{1, 0, 0} : Vec{0, 1, 0};
            Vec o = cross(p, t);
            b[a] = o;
        } else {
            b[a] = {0, 0, 0};
            b[a][a] = 1.0;
        }
        const double l = norm(b[a]);
        for (double& x : b[a]) x /= l;
    }
    // Make open axes orthogonal to each other and to periodic axes (Gram-Schmidt on open ones).
    for (int a = 0; a < 3; ++a) {
        if (pbc[a]) continue;
        for (int c = 0; c < 3; ++c) {
            if (c == a) continue;
            if (!pbc[c] && c > a) continue;
            const Vec& q = b[c];
            const double qq = dot(q, q);
            const double f = dot(b[a], q) / qq;
            for (int k = 0; k < 3; ++k) b[a][k] -= f * q[k];
        }
        const double l = norm(b[a]);
        if (!(l > 1e-12)) {  // degenerate: pick the cross product of the other two
            b[a] = cross(b[(a + 1) % 3], b[(a + 2) % 3]);
        }
        const double l2 = norm(b[a]);
        for (double& x : b[a]) x /= l2;
    }
    const Vec c12 = cross(b[1], b[2]), c20 = cross(b[2], b[0]), c01 = cross(b[0], b[1]);
    const double vol = dot(b[0], c12);
    if (!(std::fabs(vol) > 1e-12))
        throw std::invalid_argument("the periodic cell vectors are linearly dependent");
    // Reciprocal rows: s_a = dot(rec[a], r)
    const std::array<Vec, 3> rec = {Vec{c12[0] / vol, c12[1] / vol, c12[2] / vol},
                                    Vec{c20[0] / vol, c20[1] / vol, c20[2] / vol},
                                    Vec{c01[0] / vol, c01[1] / vol, c01[2] / vol}};
    // Perpendicular width of one unit of fractional coordinate along a: 1/|rec_a|.
    std::array<double, 3> width;
    for (int a = 0; a < 3; ++a) width[a] = 1.0 / norm(rec[a]);

    // Fractional coordinates (wrapped on periodic axes) and image shift of each atom.
    std::vector<double> s(3 * n);
    std::vector<double> wrapped(3 * n);
    std::array<double, 3> lo{0, 0, 0}, hi{1, 1, 1};
    for (int a = 0; a < 3; ++a)
        if (!pbc[a]) { lo[a] = 1e300; hi[a] = -1e300; }
    for (int64_t i = 0; i < n; ++i) {
        const Vec r = {positions[3 * i], positions[3 * i + 1], positions[3 * i + 2]};
        Vec f;
        for (int a = 0; a < 3; ++a) {
            f[a] = dot(rec[a], r);
            if (pbc[a]) {
                f[a] -= std::floor(f[a]);
                if (f[a] >= 1.0) f[a] = 0.0;
            } else {
                lo[a] = std::min(lo[a], f[a]);
                hi[a] = std::max(hi[a], f[a]);
            }
            s[3 * i + a] = f[a];
        }
        for (int k = 0; k < 3; ++k)
            wrapped[3 * i + k] = s[3 * i] * b[0][k] + s[3 * i + 1] * b[1][k] + s[3 * i + 2] * b[2][k];
    }
    // Bins: at least rc wide (perpendicular), at least one per axis.
    std::array<int, 3> nb;
    std::array<double, 3> binw;  // fractional width of a bin
    std::array<int, 3> reach;    // bins to search on each side
    for (int a = 0; a < 3; ++a) {
        const double extent = n > 0 ? (hi[a] - lo[a]) * width[a] : 0.0;
        const double ext = pbc[a] ? width[a] : std::max(extent, 0.0);
        // Bins of about rc/2 visit ~3.7x the cutoff sphere's volume (rc bins: ~6.4x).
        nb[a] = std::max(1, std::min(static_cast<int>(2.0 * ext / rc), 1 << 10));
        const double span = pbc[a] ? 1.0 : std::max(hi[a] - lo[a], 1e-300);
        binw[a] = span / nb[a];
        const double phys = binw[a] * width[a];
        const double need = std::ceil(rc / phys);  // may be huge for flat open axes
        reach[a] = static_cast<int>(std::min(need, pbc[a] ? 1e7 : nb[a] - 1.0));
    }
    // Memory is bounded by the atoms, not by the volume: at most kBinsPerAtom bins per atom
    // (a sparse structure in a large box gets coarser bins; the search reach follows).
    {
        constexpr int64_t kBinsPerAtom = 4, kMinBins = 64;
        const int64_t cap = kMinBins + kBinsPerAtom * n;
        while (static_cast<int64_t>(nb[0]) * nb[1] * nb[2] > cap) {
            const int a = static_cast<int>(std::max_element(nb.begin(), nb.end()) - nb.begin());
            nb[a] = (nb[a] + 1) / 2;
        }
        for (int a = 0; a < 3; ++a) {
            const double span = pbc[a] ? 1.0 : std::max(hi[a] - lo[a], 1e-300);
            binw[a] = span / nb[a];
            const double need = std::ceil(rc / (binw[a] * width[a]));
            reach[a] = static_cast<int>(std::min(need, pbc[a] ? 1e7 : nb[a] - 1.0));
        }
    }
    // Guard against absurd image counts in degenerate periodic cells.
    {
        double nimg = 1.0;
        for (int a = 0; a < 3; ++a) nimg *= 2.0 * reach[a] + 1.0;
        if (nimg > 1e7)
            throw std::invalid_argument("the cell is too thin for cutoff " + std::to_string(rc) +
                                        " (more than 1e7 bin images would be searched)");
    }
    const int64_t nbins = static_cast<int64_t>(nb[0]) * nb[1] * nb[2];
    std::vector<int64_t> bin_start(nbins + 1, 0);
    std::vector<int64_t> bin_of(n);
    for (int64_t i = 0; i < n; ++i) {
        std::array<int, 3> c;
        for (int a = 0; a < 3; ++a) {
            const double f = pbc[a] ? s[3 * i + a] : s[3 * i + a] - lo[a];
            c[a] = std::min(nb[a] - 1, std::max(0, static_cast<int>(f / binw[a])));
        }
        bin_of[i] = (static_cast<int64_t>(c[0]) * nb[1] + c[1]) * nb[2] + c[2];
        ++bin_start[bin_of[i] + 1];
    }
    for (int64_t k = 0; k < nbins; ++k) bin_start[k + 1] += bin_start[k];
    std::vector<int64_t> fill(bin_start.begin(), bin_start.end() - 1), atoms(n);
    for (int64_t i = 0; i < n; ++i) atoms[fill[bin_of[i]]++] = i;

    // Positions in bin order, so that the search over a bin reads them contiguously.
    std::vector<double> binned(3 * n);
    for (int64_t q = 0; q < n; ++q)
        for (int k = 0; k < 3; ++k) binned[3 * q + k] = wrapped[3 * atoms[q] + k];

    for (int a = 0; a < 3; ++a) pbc_[a] = pbc[a];
    b_ = b; nb_ = nb; reach_ = reach;
    wrapped_ = std::move(wrapped); binned_ = std::move(binned);
    bin_start_ = std::move(bin_start); bin_of_ = std::move(bin_of); atoms_ = std::move(atoms);
}

// Appended in the order of the bin loops: the list's order, which the kernel's sums follow.
// The bins of a row along the third axis that share an image shift are contiguous in bin
// order, so each such run is one loop over its atoms, without branches on the distance test
// (every candidate is written, the kept ones advance the output).
/// Bin index c of a periodic axis wrapped into [0, nb), s = floor(c / nb) its image shift; the
/// division (the search's largest cost when done in floating point for every bin row) only for
/// the bins outside the cell.
inline void wrap_bin(int& c, int& s, int nb) {
    if (c >= 0 && c < nb) return;
    s = c >= 0 ? c / nb : -((nb - 1 - c) / nb);
    c -= s * nb;
}

template <class F>
void CellList::for_each_run(int64_t i, F&& f) const {
    const auto& b = b_; const auto& nb = nb_; const auto& reach = reach_; const auto& pbc = pbc_;
    const int64_t bi = bin_of_[i];
    const int ci[3] = {static_cast<int>(bi / (static_cast<int64_t>(nb[1]) * nb[2])),
                       static_cast<int>((bi / nb[2]) % nb[1]), static_cast<int>(bi % nb[2])};
    for (int o0 = -reach[0]; o0 <= reach[0]; ++o0) {
        int c0 = ci[0] + o0, s0 = 0;
        if (pbc[0]) wrap_bin(c0, s0, nb[0]);
        else if (c0 < 0 || c0 >= nb[0]) continue;
        for (int o1 = -reach[1]; o1 <= reach[1]; ++o1) {
            int c1 = ci[1] + o1, s1 = 0;
            if (pbc[1]) wrap_bin(c1, s1, nb[1]);
            else if (c1 < 0 || c1 >= nb[1]) continue;
            for (int o2 = -reach[2]; o2 <= reach[2];) {
                int c2 = ci[2] + o2, s2 = 0;
                if (pbc[2]) wrap_bin(c2, s2, nb[2]);
                else if (c2 < 0) { o2 = -ci[2]; continue; }
                else if (c2 >= nb[2]) break;
                const int run = std::min(reach[2] - o2 + 1, nb[2] - c2);  // bins with shift s2
                o2 += run;
                const Vec shift = {s0 * b[0][0] + s1 * b[1][0] + s2 * b[2][0],
                                   s0 * b[0][1] + s1 * b[1][1] + s2 * b[2][1],
                                   s0 * b[0][2] + s1 * b[1][2] + s2 * b[2][2]};
                const bool own_cell = s0 == 0 && s1 == 0 && s2 == 0;  // i itself is no neighbour
                const int64_t bj = (static_cast<int64_t>(c0) * nb[1] + c1) * nb[2] + c2;
                f(bin_start_[bj], bin_start_[bj + run], shift, own_cell);
            }
        }
    }
}

void CellList::search(int64_t i, std::vector<int32_t>& idx, std::vector<double>& dv) const {
    const size_t base = idx.size();
    const size_t kept = search_into(i, idx, dv, base);
    idx.resize(base + kept);
    dv.resize(3 * (base + kept));
}

size_t CellList::search_into(int64_t i, std::vector<int32_t>& idx, std::vector<double>& dv,
                             size_t base) const {
    // One branch-free loop per run of bins writing through pointers; the vectors grow only
    // when a run could pass their end (growing them per run, ~25 runs of ~2 atoms per atom in
    // IRMOF-1, cost more than the distance tests).
    const double* ri = &wrapped_[3 * i];
    size_t kept = 0;
    bool close = false;
    for_each_run(i, [&](int64_t q0, int64_t q1, const Vec& shift, bool own_cell) {
        const size_t need = base + kept + static_cast<size_t>(q1 - q0);
        if (need > idx.size()) {  // room for twice this row so far (not the whole vector)
            idx.resize(base + 2 * (need - base) + 64);
            dv.resize(3 * idx.size());
        }
        int32_t* io = idx.data() + base;
        double* dout = dv.data() + 3 * base;
        const double* rj = &binned_[3 * q0];
        for (int64_t q = q0; q < q1; ++q, rj += 3) {
            const double dx = rj[0] + shift[0] - ri[0];
            const double dy = rj[1] + shift[1] - ri[1];
            const double dz = rj[2] + shift[2] - ri[2];
            const double r2 = dx * dx + dy * dy + dz * dz;
            const int64_t j = atoms_[q];
            io[kept] = static_cast<int32_t>(j);
            dout[3 * kept] = dx;
            dout[3 * kept + 1] = dy;
            dout[3 * kept + 2] = dz;
            const bool keep = (r2 < rc2_) & !(own_cell & (j == i));
            close |= keep & (r2 < min2_);
            kept += keep;
        }
    });
    if (close)
        for (size_t k = base; k < base + kept; ++k) {
            const double* d = &dv[3 * k];
            const double r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
            if (!(r2 < min2_)) continue;
            const int64_t j = idx[k];
            throw std::invalid_argument(
                "atoms " + std::to_string(i) + " and " + std::to_string(j) +
                (j == i ? " (its periodic image)" : "") +
                " are at the same position (distance " +
                std::to_string(std::sqrt(r2)) + ")");
        }
    return kept;
}

NeighborList build_neighbor_list(const double* positions, int64_t n, const double* cell,
                                 const bool* pbc, double rc, double min_distance, int threads) {
    const CellList cells(positions, n, cell, pbc, rc, min_distance);
    NeighborList nl;
    nl.offsets.resize(n + 1);
    nl.offsets[0] = 0;
#ifdef _OPENMP
    if (threads <= 0) threads = omp_get_max_threads();
#else
    threads = 1;
#endif
    if (threads <= 1 || n < 2 * kBlockAtoms) {
        nl.index.reserve(static_cast<size_t>(n) * 64);
        nl.d.reserve(static_cast<size_t>(n) * 192);
        for (int64_t i = 0; i < n; ++i) {
            cells.search(i, nl.index, nl.d);
            nl.offsets[i + 1] = static_cast<int64_t>(nl.index.size());
        }
        return nl;
    }
    // Threaded: blocks of atoms searched in parallel into their own lists, then copied into
    // place in atom order (the list is the serial one, entry for entry). An error is the one
    // the serial loop would raise: that of the lowest failing atom.
    const int64_t nblocks = (n + kBlockAtoms - 1) / kBlockAtoms;
    std::vector<std::vector<int32_t>> bidx(nblocks);
    std::vector<std::vector<double>> bd(nblocks);
    std::exception_ptr error;
    int64_t error_atom = n;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
        const int64_t i0 = blk * kBlockAtoms, i1 = std::min(n, i0 + kBlockAtoms);
        std::vector<int32_t>& idx = bidx[blk];
        std::vector<double>& dv = bd[blk];
        idx.reserve(static_cast<size_t>(i1 - i0) * 64);
        dv.reserve(static_cast<size_t>(i1 - i0) * 192);
        int64_t i = i0;
        try {
            for (; i < i1; ++i) {
                cells.search(i, idx, dv);
                nl.offsets[i + 1] = static_cast<int64_t>(idx.size());  // within the block
            }
        } catch (...) {
#pragma omp critical(pyfragnn_neighbor_error)
            if (i < error_atom) { error_atom = i; error = std::current_exception(); }
        }
    }
    if (error) std::rethrow_exception(error);
    std::vector<int64_t> block_start(nblocks + 1, 0);
    for (int64_t blk = 0; blk < nblocks; ++blk)
        block_start[blk + 1] = block_start[blk] + static_cast<int64_t>(bidx[blk].size());
    nl.index.resize(static_cast<size_t>(block_start[nblocks]));
    nl.d.resize(3 * static_cast<size_t>(block_start[nblocks]));
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
        const int64_t i0 = blk * kBlockAtoms, i1 = std::min(n, i0 + kBlockAtoms);
        for (int64_t i = i0; i < i1; ++i) nl.offsets[i + 1] += block_start[blk];
        std::copy(bidx[blk].begin(), bidx[blk].end(), nl.index.begin() + block_start[blk]);
        std::copy(bd[blk].begin(), bd[blk].end(), nl.d.begin() + 3 * block_start[blk]);
        std::vector<int32_t>().swap(bidx[blk]);
        std::vector<double>().swap(bd[blk]);
    }
    return nl;
}

}  // namespace pyfragnn
