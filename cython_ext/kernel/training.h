// Weight derivatives of energies and forces for trainers (EKF, Adam).
//
// Plain C++17, only the public kernel headers. A TrainingStructure holds one structure's
// neighbour environments (filtered to each element's cutoff exactly as Model::compute does),
// the raw symmetry functions G, the scaled inputs x and, optionally, the descriptor Jacobians
// dG_s/dd_j of every atom. With cached Jacobians a force derivative costs one Pearlmutter
// R-operator pass per affected atom; without, the Jacobians of the affected atoms are recomputed.
//
// Weight vector w = concatenation of all elements' network parameters in element order, each
// in n2p2's weights.NNN.data layout (Model::network(e).parameters()).
//
// Energies and forces are in the potential's units, as Model::compute:
//   E = sum_i NN_i(x_i) / conv_energy + mean_energy + atom_energy[e_i],
//   F_k = -dE/dr_k.
// For a projection c (n_atoms*3) of the forces, S = sum_ka c_ka F_ka, and
//   dS/dw = -sum_i R{dE_i/dx . v_i}/dw  with  v_i,s = slope_s / conv_energy *
//           sum_j dG_i,s/dd_j . (c_target(j) - c_i),
// so one R-operator pass per atom gives the derivative of any linear combination of forces
// (a single component, or the force part of a loss).
#pragma once

#include <cstdint>
#include <vector>

#include "model.h"

namespace pyfragnn {

/// Offsets of each element's block in the global weight vector ([n_elements + 1]).
std::vector<int64_t> weight_offsets(const Model& model);
/// Copy the global weight vector into / out of the model's networks.
void get_weights(const Model& model, double* w);
void set_weights(Model& model, const double* w);

/// Kalman-filter covariance kernels on a block of rows of a row-major matrix A [rows x n].
/// Results for a row do not depend on how many rows are passed (fixed summation order), nor on
/// the instruction set (no FMAs; kalman.cpp), so a filter split by rows over MPI ranks gives
/// bit-identical numbers to the serial one.
/// y[i] = sum_j A[i][j] h[j].
void kf_rows_times_vector(const double* A, int64_t rows, int64_t n, const double* h, double* y);
/// A[i][j] = s * (A[i][j] - sum_{k<m} Uloc[i][k] UT[k][j]), k in ascending order;
/// Uloc [rows x m] (this block's rows of U), UT [m x n] (U transposed).
void kf_rows_downdate(double* A, int64_t rows, int64_t n, const double* Uloc, const double* UT,
                      int64_t m, double s);
/// The same on rows [r0, r0 + rows) of a symmetric n x n matrix, A holding those rows, of whose
/// diagonal block only the lower triangle is read and written (row i: columns [0, i] and
/// [r0 + rows, n)): half the work in serial (r0 = 0, rows = n). Where the full matrix is
/// bit-symmetric, results equal the full-row kernels' bit for bit, for any r0 and row count.
void kf_block_times_vector(const double* A, int64_t r0, int64_t rows, int64_t n, const double* h,
                           double* y);
void kf_block_downdate(double* A, int64_t r0, int64_t rows, int64_t n, const double* Uloc,
                       const double* UT, int64_t m, double s);

class TrainingStructure {
public:
    /// positions [n][3], cell [3][3] (rows), pbc [3], all in potential length units;
    /// element [n] element indices (-1: atom ignored, as in Model::compute).
    /// Builds the neighbour list with the model's cutoff and computes G for every atom.
    /// Jacobians are cached only if cache_jacobians is true.
    TrainingStructure(const Model& model, const double* positions, int64_t n, const double* cell,
                      const bool* pbc, const int* element, bool cache_jacobians);

    int64_t n_atoms() const { return n_; }
    int64_t n_weights() const { return n_weights_; }
    const std::vector<int>& elements() const { return element_; }
    /// Raw symmetry functions of atom i ([n_sf(e_i)]); null for ignored atoms.
    const double* G(int64_t i) const { return element_[i] < 0 ? nullptr : &G_[goff_[i]]; }
    int n_sf(int64_t i) const { return nsf_[i]; }

    /// Recompute scaled inputs x from G with the model's current scaling (call after
    /// Model::set_scaling). Done automatically in the constructor.
    void rescale(const Model& model);

    bool jacobians_cached() const { return cache_jac_; }
    /// Bytes the Jacobian cache takes (or would take).
    int64_t jacobian_bytes() const { return jac_size_ * 8; }
    /// Bytes of everything else held (neighbour data, G, x).
    int64_t base_bytes() const;
    /// Drop or build the Jacobian cache.
    void set_cache_jacobians(const Model& model, bool on);

    /// Total energy (potential units); if atom_energies != nullptr, per-atom energies.
    double energy(const Model& model, double* atom_energies = nullptr) const;
    /// Energy and forces (forces [n*3] overwritten). Uses cached Jacobians if present,
    /// else Descriptor::contract as Model::compute does.
    double energy_forces(const Model& model, double* forces) const;

    /// dwe += scale * dE/dw; returns E.
    double energy_gradient(const Model& model, double scale, double* dEdw) const;

    /// For the projection c [n*3] of the forces: dw += scale * d(sum c.F)/dw; returns sum c.F.
    double force_gradient(const Model& model, const double* c, double scale, double* dw) const;

    /// One force component F[k][a] alone (equal to energy_forces' bit for bit), at the cost
    /// of the atoms that touch atom k: the trainer's threshold trials need only the error.
    double force_component(const Model& model, int64_t k, int a) const;

    /// One component F[k][a]: dw += scale * dF_ka/dw; returns F_ka.
    double force_component_gradient(const Model& model, int64_t k, int a, double scale,
                                    double* dw) const;

private:
    // Neighbourhood of atom i as stored by the constructor.
    AtomEnvironment environment(int64_t i) const;
    // Atomic energy of atom i; scratch dEdd [3 * neighbours] = its dE/dd_j (energy_forces).
    double atom_dEdd(const Model& model, int64_t i) const;
    void check_component(int64_t k, int a) const;
    // Jacobian of atom i into buf (computed or cached); returns pointer.
    const double* jacobian(const Model& model, int64_t i, std::vector<double>& buf) const;
    // One R-op pass for atom i with neighbour displacement u_j = c_t(j) - c_i (3 per j).
    double atom_force_term(const Model& model, int64_t i, const double* c, double scale,
                           double* dw, std::vector<double>& jbuf) const;

    int64_t n_ = 0;
    int64_t n_weights_ = 0;
    bool cache_jac_ = false;
    std::vector<int64_t> woff_;
    std::vector<int> element_;
    // Neighbours inside each centre's element cutoff (CSR over atoms).
    std::vector<int64_t> noff_;
    std::vector<double> d_, r_;
    std::vector<int> ej_, tj_;
    // Reverse map: for atom k, the atoms i != k that have k as a neighbour (CSR).
    std::vector<int64_t> roff_;
    std::vector<int> rsrc_;
    // Per-atom symmetry functions.
    std::vector<int> nsf_;
    std::vector<int64_t> goff_, joff_;
    std::vector<double> G_, x_, jac_;
    int64_t jac_size_ = 0;
};

}  // namespace pyfragnn
