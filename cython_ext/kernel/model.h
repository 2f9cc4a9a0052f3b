// A second-generation HDNNP: per-element symmetry functions, scaling and atomic networks,
// read from and written to n2p2's files or pyfragnn's single-file format.
//
// Plain C++17, no Python/LAMMPS/MPI headers. The model works in the potential's own units
// (length_unit() Å and energy_unit() eV per potential unit); front ends convert.
#pragma once

#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "atomic_network.h"
#include "symmetry_function.h"

namespace pyfragnn {

enum class ScalingType { NONE = 0, SCALE = 1, CENTER = 2, SCALECENTER = 3, SIGMA = 4 };

/// One symmetry-function value outside the range seen in training.
struct ExtrapolationWarning {
    int64_t atom;     ///< index of the central atom (as passed to compute)
    int element;      ///< element index
    int sf;           ///< 0-based index of the function in sorted order
    double value;     ///< raw value
    double gmin, gmax;///< range from scaling data
};

/// Full neighbour list in CSR form, as built by build_neighbor_list() or by LAMMPS.
/// Neighbours of centre i are entries offsets[i] .. offsets[i+1]-1; entry n has the force
/// target index[n] (an index into element/forces arrays, may equal i for a periodic image)
/// and the vector d[3n..3n+2] = r_j - r_i in potential length units.
/// Centres may be any subset of the atoms: centre k is atom centre[k], or first + k when
/// centre is null (so that a caller can evaluate a large system in chunks and keep only one
/// chunk's list in memory).
struct NeighborListView {
    int64_t n_centres = 0;
    int64_t first = 0;                  // atom index of centre 0 (when centre == nullptr)
    const int32_t* centre = nullptr;    // [n_centres] atom index of each centre, optional
    const int64_t* offsets = nullptr;   // [n_centres + 1]
    const int32_t* index = nullptr;     // [offsets[n_centres]]
    const double* d = nullptr;          // [3 * offsets[n_centres]]
};

/// Neighbours of centre row ``c`` (atom ``i``) of ``nl`` closer than sqrt(rc2) that have an
/// element (element[t] >= 0): their number n is returned, their vectors written to ``d``
/// [3 n], distances to ``r`` [n], element indices to ``ej`` [n], atom indices to ``tj`` [n].
/// The vectors only grow (entries past n are stale), so that the per-centre calls do not
/// zero-fill what a previous, shorter row left. Throws std::invalid_argument for an index out of
/// [0, n_total), an element index >= ne, a non-finite or zero distance.
/// The one gather of Model::compute and Committee::compute.
int gather_neighbours(const NeighborListView& nl, int64_t c, int64_t i, const int* element,
                      int64_t n_total, int ne, double rc2, std::vector<double>& d,
                      std::vector<double>& r, std::vector<int>& ej, std::vector<int>& tj);

/// The extrapolation test: g outside [lo - eps, hi + eps] (NaN is not outside). Bitwise or,
/// so that count_outside's loop stays branch-free.
inline bool outside(double g, double lo, double hi, double eps) {
    return (g < lo - eps) | (g > hi + eps);
}

/// Number of s < n with outside(G[s], lo[s], hi[s], eps) (branch-free, vectorised).
int64_t count_outside(int n, const double* G, const double* lo, const double* hi, double eps);

/// v's data with room for at least n elements (v grows, never shrinks: a resize to a smaller
/// size and back would zero-fill the difference on every call).
template <class T>
inline T* room(std::vector<T>& v, std::size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
}

/// What compute() writes; any pointer may be null to skip that output.
/// Forces and virials are *accumulated* (+=), energies are overwritten.
struct ComputeOutput {
    double* energies = nullptr;   ///< [n_total] atomic energies incl. offsets (potential energy
                                  ///< unit), written at the centres' atom indices only
    double* forces = nullptr;     ///< [n_total*3] (energy/length)
    double* virial = nullptr;     ///< [6] xx yy zz xy xz yz (LAMMPS order), W = -sum d (x) dE/dd
    double* atom_virial = nullptr;///< [n_total*6], contribution d (x) F assigned to force target
    std::vector<ExtrapolationWarning>* warnings = nullptr;
    int64_t max_warnings = -1;    ///< stop recording after this many (-1: no limit); count still kept
    int64_t n_warnings = 0;       ///< out: count of extrapolating (atom, sf) pairs (accumulated +=)
};

class CellList;

class Model {
public:
    /// Read n2p2 files. input_nn: path of input.nn; scaling: path of scaling.data;
    /// weights_format: path whose last "%03d" stands for Z, zero-padded to three digits, e.g.
    /// "dir/weights.%03d.data" (substituted as text, not by printf: other '%' stay as they are).
    /// Throws std::invalid_argument / std::runtime_error naming file and line.
    static Model read_n2p2(const std::string& input_nn, const std::string& scaling,
                           const std::string& weights_format);
    /// Read the native single-file format.
    static Model read_native(const std::string& path);
    /// Load from a path: a directory with input.nn (n2p2) or a native file.
    static Model load(const std::string& path);

    void write_n2p2(const std::string& directory) const;   ///< input.nn, scaling.data, weights.NNN.data
    void write_native(const std::string& path) const;       ///< exact round trip (17 digits)

    int n_elements() const;
    const std::vector<std::string>& elements() const;       ///< symbols, atomic-number order
    const std::vector<int>& atomic_numbers() const;
    int element_index(const std::string& symbol) const;      ///< -1 if absent
    double cutoff() const;                                   ///< largest rc (potential length unit)
    double length_unit() const;                              ///< Å per potential length unit
    double energy_unit() const;                              ///< eV per potential energy unit
    void set_units(double length_unit, double energy_unit);

    /// Energies, forces, virials for the centres of a neighbour list.
    /// element[k] for every k < n_total (index targets and centres). Returns total energy
    /// (potential energy unit) of the centres. Throws std::invalid_argument on bad element
    /// indices or non-finite values.
    double compute(const NeighborListView& nl, const int* element, int64_t n_total,
                   ComputeOutput& out) const;
    /// The same with `threads` OpenMP threads (<= 0: omp_get_max_threads(), i.e.
    /// OMP_NUM_THREADS or all cores; without OpenMP always one). Centres are evaluated in
    /// parallel, their contributions added in centre order: results are identical for every
    /// thread count.
    double compute(const NeighborListView& nl, const int* element, int64_t n_total,
                   ComputeOutput& out, int threads) const;
    /// Every atom of a structure as a centre, each centre's neighbours searched in `cells`
    /// where it is evaluated (no stored list: nothing written and read back, and the search
    /// runs on the threads). Results bit-identical to compute() on build_neighbor_list's list;
    /// n_total = cells.size().
    double compute(const CellList& cells, const int* element, ComputeOutput& out,
                   int threads) const;

    // --- Access for trainers and bindings ---------------------------------------------
    /// Build from input.nn text (settings), scaling.data text ("" = no scaling data yet:
    /// identity scaling ranges) and per-element parameter vectors (empty = zeros).
    static Model from_text(const std::string& input_nn, const std::string& scaling,
                           const std::vector<std::vector<double>>& parameters,
                           const std::string& source = "<text>");
    std::string input_nn_text() const;            ///< settings as written by write_n2p2
    std::string scaling_text() const;             ///< scaling.data as written by write_n2p2

    const Descriptor& descriptor(int e) const;
    AtomicNetwork& network(int e);
    const AtomicNetwork& network(int e) const;
    ScalingType scaling_type() const;
    /// x = scaled symmetry functions of element e: x_s = slope_s * G_s + intercept_s.
    void scale(int e, const double* G, double* x) const;
    /// The per-atom step shared by compute() and the trainers: energy of an atom of element e
    /// (network, normalisation, mean and atomic offsets; potential energy unit) from its scaled
    /// symmetry functions x; with dEdG != nullptr also dE/dG with respect to the raw ones.
    double atomic_energy(int e, const double* x, double* dEdG, NetworkWorkspace& ws) const;
    const std::vector<double>& scaling_slope(int e) const;      ///< dx_s/dG_s
    /// Extrapolation test shared by compute() and the committee: calls on_out(s) for every
    /// symmetry function s of element e outside [gmin - eps, gmax + eps] (eps = 1000 machine
    /// epsilons); returns their number (0 without scaling data).
    template <class OnOut>
    int for_each_extrapolation(int e, const double* G, OnOut&& on_out) const {
        if (!has_scaling_data_) return 0;
        const double eps = 1000.0 * std::numeric_limits<double>::epsilon();
        const ElementData& ed = el_[e];
        const int ns = ed.descriptor.size();
        const double* lo = ed.gmin.data();
        const double* hi = ed.gmax.data();
        // A vectorised count first; the callback loop runs only for an atom that extrapolates.
        const int64_t out = count_outside(ns, G, lo, hi, eps);
        if (out == 0) return 0;
        for (int s = 0; s < ns; ++s)
            if (outside(G[s], lo[s], hi[s], eps)) on_out(s);
        return static_cast<int>(out);
    }
    /// Scaling statistics of element e, each [n_sf]; set_scaling also recomputes slopes.
    void set_scaling(int e, const std::vector<double>& gmin, const std::vector<double>& gmax,
                     const std::vector<double>& gmean, const std::vector<double>& gsigma);
    const std::vector<double>& gmin(int e) const;
    const std::vector<double>& gmax(int e) const;
    const std::vector<double>& gmean(int e) const;
    const std::vector<double>& gsigma(int e) const;
    /// Normalisation: E_i = NN_i / conv_energy + mean_energy + atom_energy[e] (n2p2 units).
    bool normalised() const;
    double mean_energy() const;
    double conv_energy() const;
    double conv_length() const;
    void set_normalisation(bool on, double mean_energy, double conv_energy, double conv_length);
    double atom_energy(int e) const;
    void set_atom_energy(int e, double value);

    /// Throws std::invalid_argument for a centre outside [0, n_total), an element index out of
    /// range, or an atom of an element this potential has no scaling data for (n2p2 INF rows).
    void check_centres(const NeighborListView& nl, const int* element, int64_t n_total) const;

private:
    struct ElementData {
        std::string symbol;
        int z = 0;
        double atom_energy = 0.0;
        Descriptor descriptor;
        AtomicNetwork network;
        std::vector<double> gmin, gmax, gmean, gsigma;
        std::vector<double> slope, shift;   // x = smin_eff + slope * (G - shift)
        double smin_eff = 0.0;
        bool scaling_absent = false;  // INF rows in scaling.data: element absent from the data
    };
    void update_scaling(int e);
    void check_element(int e) const;
    struct CentreScratch;  // per-thread scratch of centre_pass (model.cpp)
    /// Energy ei of centre c and, with need_grad, dE/dd of its kept neighbours in s.dEdd
    /// (vectors s.d, force targets s.tj). False (nothing computed) for atoms without element.
    bool centre_pass(const NeighborListView& nl, int64_t c, const int* element, int64_t n_total,
                     bool need_grad, CentreScratch& s, double& ei, int64_t& n_warnings,
                     std::vector<ExtrapolationWarning>* warnings, int64_t max_warnings) const;
    /// The one loop behind every compute(): the centres of `centres` (n_centres, centre/first),
    /// each centre's neighbour row from rows(c, view, scratch) (a stored list or a cell
    /// search), serial or on `threads` with contributions added in centre order.
    template <class Rows>
    double drive(const NeighborListView& centres, const Rows& rows, const int* element,
                 int64_t n_total, ComputeOutput& out, int threads) const;

    std::vector<ElementData> el_;
    std::vector<std::string> symbols_;
    std::vector<int> z_;
    ScalingType scaling_ = ScalingType::NONE;
    double smin_ = 0.0, smax_ = 1.0;
    bool normalised_ = false;
    double mean_energy_ = 0.0, conv_energy_ = 1.0, conv_length_ = 1.0;
    double length_unit_ = 1.0, energy_unit_ = 1.0;
    double cutoff_ = 0.0;
    int cutoff_type_ = 1;
    double cutoff_alpha_ = 0.0;
    bool has_scaling_data_ = false;
    std::string scaling_source_;            // where the scaling data came from (for errors)
    std::vector<std::string> extra_lines_;  // input.nn lines not used for prediction (kept)
};

/// The cell lists behind build_neighbor_list: positions binned once, then the neighbours of any
/// atom on demand (its row of the full list, entry for entry), so that a driver can search
/// each centre where it evaluates it instead of writing and reading back the whole list.
/// Same arguments and errors as build_neighbor_list (a too-close pair when searching).
class CellList {
public:
    CellList(const double* positions, int64_t n, const double* cell, const bool* pbc,
             double rc, double min_distance = 1e-8);
    int64_t size() const { return n_; }
    /// Appends atom i's neighbours (force targets, vectors r_j - r_i) to index and d.
    void search(int64_t i, std::vector<int32_t>& index, std::vector<double>& d) const;
    /// The same row written from entry `at` on (index[at..], d[3 at..]), the vectors grown
    /// when needed and never shrunk; returns the number of neighbours. For a caller that
    /// reuses its vectors row after row (no resize, no zero fill in the steady state).
    size_t search_into(int64_t i, std::vector<int32_t>& index, std::vector<double>& d,
                       size_t at) const;

private:
    /// f(q0, q1, shift, own_cell) for each run of bins searched for atom i, in list order:
    /// binned atoms q0 <= q < q1 with image shift `shift` (own_cell: no shift).
    template <class F>
    void for_each_run(int64_t i, F&& f) const;

    int64_t n_;
    double rc2_, min2_;
    std::array<bool, 3> pbc_;
    std::array<std::array<double, 3>, 3> b_;   // basis: cell vectors, unit vectors on open axes
    std::array<int, 3> nb_, reach_;            // bins per axis, bins searched on each side
    std::vector<double> wrapped_, binned_;     // positions wrapped into the cell; in bin order
    std::vector<int64_t> bin_start_, bin_of_, atoms_;  // CSR bins -> atoms, atom -> bin
};

/// Build a full neighbour list within cutoff rc for positions [n][3] (any length unit),
/// cell [3][3] (rows = cell vectors; ignored along non-periodic axes), pbc [3].
/// Periodic images of every atom (including an atom's own images, in cells shorter than rc)
/// are listed; triclinic cells supported. Throws std::invalid_argument on non-finite
/// positions or on two atoms closer than min_distance (naming both atoms).
/// threads: OpenMP threads for the search (<= 0: omp_get_max_threads()); the list is the same
/// for every thread count, entry for entry.
struct NeighborList {
    std::vector<int64_t> offsets;
    std::vector<int32_t> index;
    std::vector<double> d;
    NeighborListView view() const;
};
NeighborList build_neighbor_list(const double* positions, int64_t n, const double* cell,
                                 const bool* pbc, double rc, double min_distance = 1e-8,
                                 int threads = 1);

}  // namespace pyfragnn
