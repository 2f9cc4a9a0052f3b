// Atom-centred symmetry functions (ACSF) of one central atom: values and derivatives.
//
// Plain C++17, no Python/LAMMPS/MPI headers. Lengths are in the potential's length unit,
// angles in input.nn are in degrees. Formulas follow n2p2 v2.3.0 (see docs and
// ../shared/reference/n2p2-formats.md); this is an independent implementation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "compact_function.h"
#include "cutoff_function.h"

namespace pyfragnn {

/// Neighbourhood of one central atom i.
/// All arrays have n entries; d[3*j..3*j+2] = r_j - r_i (potential length units),
/// r[j] = |d_j| > 0, element[j] = element index (0-based, atomic-number order).
/// Neighbours may lie beyond the cutoff of a given function; each function applies its own
/// strict r < rc test.
struct AtomEnvironment {
    int n = 0;
    const double* d = nullptr;
    const double* r = nullptr;
    const int* element = nullptr;
};

/// Parameters of one symmetry function, as read from an input.nn line.
struct SymmetryFunctionParams {
    int type = 0;             ///< 2, 3, 9, 12, 13, 20, 21, 22
    int ec = -1;              ///< central element index
    int e1 = -1, e2 = -1;     ///< neighbour element indices (e1 <= e2); -1 where unused
    double eta = 0.0;         ///< Gaussian width, 1/length^2 (types 2, 3, 9, 12, 13)
    double rs = 0.0;          ///< Gaussian shift, length (types 2, 3, 9, 12, 13)
    double rc = 0.0;          ///< cutoff radius, length
    double lambda = 0.0;      ///< +1 or -1 (types 3, 9, 13)
    double zeta = 0.0;        ///< angular exponent (types 3, 9, 13)
    double rl = 0.0;          ///< compact functions: left radial bound (types 20-22)
    double theta_l = 0.0;     ///< compact angular: left angle bound, degrees (types 21, 22)
    double theta_r = 0.0;     ///< compact angular: right angle bound, degrees
    std::string subtype;      ///< compact core: "p2", "p2a", "e", ... (types 20-22)
    int cutoff_type = 1;      ///< n2p2 cutoff enum 0-8 (types 2,3,9,12,13)
    double cutoff_alpha = 0.0;///< inner cutoff fraction
    int line = 0;             ///< 1-based line in input.nn (0 if not from a file), for messages
};

/// Parse the tokens after `symfunction_short` (tokens[0] = central element symbol).
/// `elements` are the potential's symbols in atomic-number order. Throws std::invalid_argument
/// naming `source` and `line` on any problem (unknown type, element, count or number format).
SymmetryFunctionParams parse_symmetry_function(const std::vector<std::string>& tokens,
                                               const std::vector<std::string>& elements,
                                               int cutoff_type, double cutoff_alpha,
                                               const std::string& source, int line);

/// The tokens of an input.nn `symfunction_short` line for p (without the keyword), numbers
/// printed with 17 significant digits so that parsing them back gives identical doubles.
std::string format_symmetry_function(const SymmetryFunctionParams& p,
                                     const std::vector<std::string>& elements);

/// n2p2's sort order of symmetry functions of one element (defines NN input and scaling.data order).
bool symmetry_function_less(const SymmetryFunctionParams& a, const SymmetryFunctionParams& b);

/// Scratch memory for one thread; reused between atoms, grows as needed.
struct DescriptorWorkspace {
    std::vector<double> buf;
    std::vector<int> ibuf;
    std::vector<double> cbuf;   // contract(): per-vector accumulators and block scratch
};

/// All symmetry functions of one central element, in n2p2 sorted order.
class Descriptor {
public:
    /// sfs must be sorted with symmetry_function_less and all have ec == central element.
    /// atomic_numbers[e] = Z of element e (for weighted types 12, 13).
    Descriptor(std::vector<SymmetryFunctionParams> sfs, std::vector<int> atomic_numbers);
    Descriptor() = default;

    int size() const { return static_cast<int>(sfs_.size()); }
    double cutoff() const;                        ///< largest rc of this element's functions
    const std::vector<SymmetryFunctionParams>& params() const { return sfs_; }

    /// Raw (unscaled) values G[0..size()-1] of the central atom described by env.
    void compute(const AtomEnvironment& env, double* G, DescriptorWorkspace& ws) const;

    /// Contract dE/dG into derivatives with respect to the neighbour vectors:
    /// dEdd[3*j+a] = sum_s dEdG[s] * dG_s/d(d_j[a]), j < env.n (overwritten, not accumulated).
    /// Must not store dG/dd for all functions; cost a small multiple of compute().
    /// May reuse what compute() left in ws for the same env (call compute first).
    void contract(const AtomEnvironment& env, const double* dEdG, double* dEdd,
                  DescriptorWorkspace& ws) const;
    /// The same for nv weight vectors at once (committee members sharing these functions):
    /// dEdG[v*size() + s] -> dEdd[v*3*env.n + 3*j + a]. The vectors share one pass over the
    /// neighbour pairs and triplets and their geometry; each result is what contract() gives
    /// for that vector alone.
    void contract(const AtomEnvironment& env, int nv, const double* dEdG, double* dEdd,
                  DescriptorWorkspace& ws) const;

    /// Values and the full Jacobian dGdd[(s*env.n + j)*3 + a] = dG_s/d(d_j[a]) (for training
    /// and tests; memory size()*n*3).
    void jacobian(const AtomEnvironment& env, double* G, double* dGdd,
                  DescriptorWorkspace& ws) const;

private:
    template <int NV>
    void contract_nv(const AtomEnvironment& env, const double* dEdG, double* dEdd,
                     DescriptorWorkspace& ws) const;

    // compute() and contract_nv() in sections (defined in the .cpp, always inlined into each
    // multiversioned clone: PYFRAGNN_PART in hot.h). The structs (also in the .cpp) hold the
    // per-call state that the sections share.
    struct Frame;                    // compute(): environment, G, workspace offsets, pointers
    struct AngularArrays;            // compute(): one angular group's lists and arrays
    struct ContractFrame;            // contract_nv(): environment, dE/dG, dE/dd, workspace
    struct AngularContraction;       // contract_nv(): one angular group's arrays and scratch
    struct TripletBlock;             // contract_nv(): one block of an angular group's triplets
    inline void compute_neighbour_lists(Frame& fr) const;
    inline void compute_layout(Frame& fr) const;
    inline void compute_soa(Frame& fr) const;
    inline void compute_radial(Frame& fr) const;
    inline void compute_angular(Frame& fr, int gi) const;
    inline void angular_neighbours(Frame& fr, const AngularArrays& ag) const;
    inline int angular_select(Frame& fr, const AngularArrays& ag) const;
    inline void angular_block_products(Frame& fr, const AngularArrays& ag, int t0, int nb,
                                       double* F, double* tg, double* wjk) const;
    inline void angular_blocks(Frame& fr, const AngularArrays& ag, int count) const;
    inline void compute_moment_set(Frame& fr, int si) const;
    inline void compute_moment_products(Frame& fr) const;
    inline void compute_compact_radial(Frame& fr) const;
    inline void compute_compact_angular(Frame& fr) const;
    inline double* set_moments(const ContractFrame& fr, int si) const;
    template <int NV>
    inline void contract_workspace(ContractFrame& fr, DescriptorWorkspace& ws) const;
    inline void contract_radial(ContractFrame& fr, const double* dEdG, double* along_u) const;
    template <int NV>
    inline void contract_angular(ContractFrame& fr, int gi) const;
    inline TripletBlock contract_block_inputs(ContractFrame& fr, const AngularContraction& ac,
                                              int t0, int nb) const;
    inline void contract_block_powers(const AngularContraction& ac,
                                      const TripletBlock& blk) const;
    template <int NV>
    inline void contract_block_terms(const AngularContraction& ac, const TripletBlock& blk) const;
    template <int NV, int D>
    inline void contract_block_terms_poly(const AngularContraction& ac,
                                          const TripletBlock& blk) const;
    template <int NV>
    inline void contract_block_poly(const AngularContraction& ac, const TripletBlock& blk) const;
    template <int NV>
    inline void contract_poly_coefficients(const AngularContraction& ac) const;
    template <int NV>
    inline void contract_block_scatter(ContractFrame& fr, const AngularContraction& ac,
                                       const TripletBlock& blk) const;
    void contract_moments(ContractFrame& fr, const double* dEdG, double* dEdd,
                          double* along_u) const;
    inline void contract_moment_products(ContractFrame& fr, const double* dEdG) const;
    inline void contract_moment_sets(ContractFrame& fr, double* dEdd, double* along_u) const;
    inline void contract_compact_radial(ContractFrame& fr, const double* dEdG,
                                        double* dEdd) const;
    inline void contract_compact_angular(ContractFrame& fr, const double* dEdG,
                                         double* dEdd) const;

    std::vector<SymmetryFunctionParams> sfs_;
    std::vector<int> z_;

    // Functions are evaluated in groups that share neighbour selection and cutoff, so that
    // per-neighbour and per-triplet quantities are computed once per group (see .cpp).
    struct RadialTerm { int sf; double eta, rs; };
    struct RadialGroup {             // types 2 (neighbour element e1) and 12 (all, weight Z_j)
        int e1;                      // -1: all elements (type 12)
        CutoffFunction fc;
        std::vector<RadialTerm> terms;
        bool fast_exp;               // all Gaussian exponents within exp_approx's range
        // Type 2 groups of elements e1..e_last with the same cutoff and Gaussians are one group
        // over the elements' joint list; sf[t * (e_last - e1 + 1) + e - e1]: term t's function
        // for element e (terms[t].sf is e1's).
        int e_last = -1;
        std::vector<int> sf;
    };
    struct Gaussian {                // exp(-eta (r - rs)^2) for r_ij, r_ik and r_jk
        double eta, rs;
        int base, power;             // r_jk factor = (factor of gauss[base])^power; power 0: exp
    };
    struct AngularPower { double lambda, zeta; int zeta_int; };  // zeta_int < 0: use pow
    struct AngularTerm { int sf, gauss, power; double norm; };    // norm = 2^(1-zeta)
    struct AngularGroup {            // types 3, 9 (elements {e1, e2}) and 13 (all, Z_j Z_k)
        int type, e1, e2;
        CutoffFunction fc;
        std::vector<Gaussian> gauss;
        std::vector<AngularPower> powers;
        std::vector<AngularTerm> terms;
        bool fast_exp;
        std::vector<int> by_gauss, gauss_start;  // terms of Gaussian q: by_gauss[gauss_start[q]..)
        std::vector<int> power_by_gauss;         // terms[by_gauss[a]].power
        // contract(): when every power has integer zeta in [1, kPolyMaxZeta] and |lambda| <= 1,
        // (1 + lambda cos)^zeta is never clipped and is a polynomial of degree <= poly_degree
        // in cos; poly_coef [by_gauss term a][poly_degree + 1]: its coefficients. 0: not so.
        int poly_degree = 0;
        std::vector<double> poly_coef;
    };
    struct CompactRadialTerm { int sf, e1; double rl, rc; CompactFunction radial; };
    struct CompactAngularTerm { int sf; CompactFunction angular; };  // argument: theta (rad)
    struct CompactAngularGroup {     // types 21, 22 sharing e1, e2 and the radial part
        int type, e1, e2;
        double rl, rc;
        CompactFunction radial;
        std::vector<CompactAngularTerm> terms;
    };
    // Wide angular functions (type 9) with integer zeta <= kMomentMaxZeta, as Cartesian moments
    // (see .cpp): per set of neighbours sharing element, cutoff and Gaussian, the moments
    // M_a = sum_j A_j u_j^a (A_j = fc(r_ij) exp(-eta (r_ij - rs)^2), monomials u^a of degree
    // <= degree); per pair of sets S_m = sum_{|a|=m} m!/a! M1_a M2_a; per function
    // G = sum_m coef[m] S_m - diag * sum_j A_j^2 (diag only when both sets are the same).
    struct MomentSet { int e1; CutoffFunction fc; double eta, rs; int degree; bool fast_exp; };
    struct MomentTerm { int sf; std::vector<double> coef; double diag; };
    struct MomentPair {
        int s1, s2, degree;
        std::vector<MomentTerm> terms;
    };
    std::vector<MomentSet> msets_;
    std::vector<MomentPair> mpairs_;
    // Sets of one degree in groups of up to four, one set per vector lane, so that the pair sums
    // (S_m and contract()'s dE/dM) of four pairs are vector operations: a product (g1, g2, d)
    // multiplies group g1's lane l with group g2's lane (l + d) mod 4 for the pair `pair[l]`
    // (-1: no pair in that lane) up to `degree`.
    struct MomentGroup { int first, count, degree; };
    // A product's functions in slots of four, one function per lane (lane l: a function of
    // pair[l], in the pair's term order; unused lanes sf -1, coefficients and diag 0):
    // coef [slot][q <= degree][4], diag and sf [slot][4]; dset[l]: the set of a same-set pair
    // in lane l (its sum_j A_j^2 enters through diag), else -1.
    struct MomentProduct {
        int g1, g2, d, degree;
        int pair[4];
        int nslot = 0;
        int dset[4] = {-1, -1, -1, -1};
        std::vector<int> sf;         // [nslot][4], -1: no function in that lane
        std::vector<int> sf0;        // sf with -1 as 0 (branch-free loads of dE/dG)
        std::vector<long long> live; // [nslot][4]: all ones where sf >= 0, else 0
        std::vector<double> coef, diag;
    };
    std::vector<MomentGroup> mgroups_;
    std::vector<int> mset_group_, mset_lane_;
    std::vector<MomentProduct> mproducts_;
    std::vector<RadialGroup> radial_;
    std::vector<AngularGroup> angular_;
    std::vector<CompactRadialTerm> compact_radial_;
    std::vector<CompactAngularGroup> compact_angular_;
    int n_elements_ = 0;             // neighbour element indices must be < n_elements_
    double cutoff_ = 0.0;
};

}  // namespace pyfragnn
