// A committee of HDNNPs evaluated on one neighbour list: the forces of every member (for the
// committee force deviation of active learning), the per-atom count of extrapolating symmetry
// functions, and the energy/forces/virials of the "MD model" (one member, or a weighted sum
// such as the mean).
//
// Members whose symmetry-function sets are identical (same functions, cutoffs and elements)
// share the neighbour gathering and the symmetry-function evaluation of each atom (the
// Descriptor of the first of them); scaling and networks are per member, and the members'
// contractions dE/dG -> dE/dd share one pass over the neighbour pairs and triplets
// (Descriptor::contract with several vectors). The physics are Descriptor::compute/contract and AtomicNetwork::evaluate, as in
// Model::compute; a single member with weight 1 gives Model::compute's numbers bit for bit.
//
// Plain C++17, no Python/LAMMPS/MPI headers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model.h"

namespace pyfragnn {

/// What Committee::compute writes; any pointer may be null to skip that output.
struct CommitteeOutput {
    /// The MD model, sum_m weight_m * member m: energies (overwritten), forces, virial and
    /// atom_virial (accumulated), as Model::compute. md.n_warnings counts the warnings of the
    /// members with a non-zero MD weight (+=), md.warnings / md.max_warnings record them
    /// (capped), as Model::compute does for the MD model alone.
    ComputeOutput md;
    /// Member of each warning recorded in md.warnings (same length), optional.
    std::vector<int>* warning_member = nullptr;
    /// [n_members][n_total * 3] forces of each member (energy/length), accumulated (+=).
    double* member_forces = nullptr;
    /// [n_total] symmetry-function values outside the training range per centre atom,
    /// summed over the members (accumulated +=, written at centres only).
    int32_t* extrapolations = nullptr;
};

class Committee {
public:
    /// members: the potentials (not owned; must outlive the committee). md_weights: one per
    /// member, the MD model is sum_m w_m * member m (e.g. {1, 0, ...} or {1/M, ...}).
    /// Throws std::invalid_argument when members are not compatible (see incompatibility()).
    Committee(std::vector<const Model*> members, std::vector<double> md_weights);

    /// "" if b can join a committee with a, else the reason (elements, cutoff or units differ).
    static std::string incompatibility(const Model& a, const Model& b);

    int size() const { return static_cast<int>(members_.size()); }
    /// Index of the member whose symmetry functions member m uses (m itself or an earlier one).
    int descriptor_source(int m) const { return source_[m]; }
    int n_descriptor_sets() const;

    /// As Model::compute for the MD model, plus the committee outputs. Returns the MD model's
    /// total energy of the centres. Throws std::invalid_argument on bad element indices or
    /// coincident atoms, std::runtime_error on a non-finite energy.
    double compute(const NeighborListView& nl, const int* element, int64_t n_total,
                   CommitteeOutput& out) const;

private:
    std::vector<const Model*> members_;
    std::vector<double> w_;
    std::vector<int> source_;
};

}  // namespace pyfragnn
