/* -*- c++ -*- ----------------------------------------------------------
   Committee statistics of pair_style fragnn as LAMMPS quantities.

     compute ID group fragnn/atom
       per-atom array, 2 columns, for owned atoms in the group (0 elsewhere):
         [1] committee force deviation: the largest difference of one Cartesian force
             component between any two members (force units of the run; 0 for a single
             potential), as pyfragnn.active_learning.force_deviation
         [2] number of symmetry-function values of the atom outside the training range,
             summed over the members, as pyfragnn.active_learning.extrapolating_atoms

     compute ID group fragnn [threshold x]
       global vector, 4 values over the atoms of the group (all ranks):
         [1] largest force deviation
         [2] number of atoms whose deviation exceeds x (default 1.0, force units)
         [3] number of extrapolating atoms (column 2 > 0)
         [4] number of extrapolating symmetry-function values (sum of column 2)

   Both read what pair fragnn stored during its force computation of the same timestep
   (each member's forces on ghost atoms are reverse-communicated there). They store their
   invocation steps (timeflag), and pair fragnn evaluates the whole committee only on those
   steps (and on every step with average yes); elsewhere only the MD member runs. Invoked on
   a step without statistics (not scheduled, or between runs) they stop with an error.
------------------------------------------------------------------------- */

#ifdef COMPUTE_CLASS
// clang-format off
ComputeStyle(fragnn/atom,ComputeFragNNAtom);
ComputeStyle(fragnn,ComputeFragNN);
// clang-format on
#else

#ifndef LMP_COMPUTE_FRAGNN_H
#define LMP_COMPUTE_FRAGNN_H

#include "compute.h"

namespace LAMMPS_NS {

class PairFragNN;

class ComputeFragNNAtom : public Compute {
 public:
  ComputeFragNNAtom(class LAMMPS *, int, char **);
  ~ComputeFragNNAtom() override;
  void init() override;
  void compute_peratom() override;
  double memory_usage() override;

 private:
  int nmax;
  double **stats;
  PairFragNN *pair;
};

class ComputeFragNN : public Compute {
 public:
  ComputeFragNN(class LAMMPS *, int, char **);
  ~ComputeFragNN() override;
  void init() override;
  void compute_vector() override;

 private:
  double threshold;
  PairFragNN *pair;
};

}    // namespace LAMMPS_NS

#endif
#endif
