/* -*- c++ -*- ----------------------------------------------------------
   pair_style fragnn: pyfragnn's Behler-Parrinello HDNNP as a LAMMPS pair style.

   Thin LAMMPS glue around pyfragnn::Model (cython_ext/kernel/model.h), the same
   kernel the Python package uses. This header does not include kernel headers.

   Syntax:
     pair_style fragnn POT1 [POT2 ...] [cflength x] [cfenergy y] [average yes|no]
                                       [showew yes|no] [ewlines N] [showewsum N]
                                       [maxew N] [resetew yes|no]
     pair_coeff * * El1 El2 ... (one element symbol or NULL per atom type)

   POTn         every argument before the first keyword is a potential: an n2p2 directory
                (input.nn, scaling.data, weights.NNN.data) or native file, or the name of a
                potential: NAME or NAME.fragnn in the directories of $FRAGNN_POTENTIALS
                (colon-separated), then in the shipped potentials (../potentials/ from the
                plugin's own directory). Two or more form a committee: all members need the
                same elements, cutoff and units; MD runs on POT1 (or on the mean with
                average yes); on the steps where `compute fragnn/atom` or `compute fragnn`
                is due (and on all steps with average yes) every member's forces are
                computed on the same neighbour list (members with identical symmetry
                functions share their evaluation) for the committee force deviation.
   cflength     LAMMPS length -> potential length (multiply), as n2p2's pair_style hdnnp.
   cfenergy     potential energy -> LAMMPS energy (divide), as n2p2's pair_style hdnnp.
                Unset factors follow from the model's length_unit()/energy_unit()
                (Å, eV per potential unit) for units metal and real; other unit
                styles must give both.
   average      MD on the mean of the committee's energies and forces. Default no.
   showew       list extrapolation warnings (atom id, SF index, value, range); at most 100
                per rank and step, and ewlines in all. Default yes (as n2p2).
   ewlines      most warnings listed in one run (-1: no limit). Default 1000.
   showewsum    every N steps one summary line of the warnings since the last one (if
                any); 0 = off. Default 1000 with showew yes, 0 with showew no.
   maxew        stop the run once the extrapolation-warning count summed over all ranks
                (cumulative, or this step's with resetew yes) exceeds N. Default 0 (as
                n2p2): the first warning stops the run; -1 never stops. With a committee,
                the warnings of the member(s) the MD runs on count.
   resetew      count warnings per step instead of cumulatively. Default no.

   Extrapolation-warning counts for thermo output: `compute ew all pair fragnn`,
   c_ew[1] = warnings on this step, c_ew[2] = cumulative (since last reset); both summed
   over ranks. Pair::extract("ew_step"/"ew_total") gives this rank's values. Per-atom
   committee deviation and extrapolation counts: compute_fragnn.h.
------------------------------------------------------------------------- */

#ifdef PAIR_CLASS
// clang-format off
PairStyle(fragnn,PairFragNN);
// clang-format on
#else

#ifndef LMP_PAIR_FRAGNN_H
#define LMP_PAIR_FRAGNN_H

#include "pair.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace pyfragnn {
class Model;
class Committee;
struct ExtrapolationWarning;
}    // namespace pyfragnn

namespace LAMMPS_NS {

class PairFragNN : public Pair {
 public:
  PairFragNN(class LAMMPS *);
  ~PairFragNN() override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  double memory_usage() override;
  void *extract(const char *, int &) override;
  void finish() override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;

  // --- committee statistics for compute fragnn/atom and compute fragnn ---------------------
  int n_members() const { return (int) models.size(); }
  // Every member is evaluated (and these statistics kept) on the steps where a compute
  // fragnn or fragnn/atom is scheduled (Compute::matchstep), and on every step with
  // average yes; otherwise only member 1 runs, through Model::compute.
  // Timestep of the last compute() that filled atom_deviation/atom_extrapolations, or -1.
  bigint atom_stats_step;
  std::vector<double> atom_deviation;         // [nlocal] committee force deviation (LAMMPS units)
  std::vector<int32_t> atom_extrapolations;   // [nall] extrapolating SFs (members together)

 protected:
  std::vector<std::unique_ptr<pyfragnn::Model>> models;    // committee members
  pyfragnn::Model *model;          // models[0]
  std::unique_ptr<pyfragnn::Committee> committee;
  std::vector<std::string> potential_args;    // as given in pair_style
  std::vector<std::string> potential_paths;   // the files or directories they resolved to
  std::string potential_arg;       // potential_args[0]
  std::string potential_path;      // potential_paths[0]
  bool average;                    // MD on the committee mean
  std::vector<class Compute *> stat_computes;    // compute fragnn, fragnn/atom (init_style)
  double cflength, cfenergy;      // as given, or 0 if not given
  double cfl, cfe;                // effective factors used in compute()
  double cutoff_pot;              // model cutoff in potential length units
  double cutoff_lmp;              // cutoff in LAMMPS length units
  bool showew, resetew;
  int64_t maxew;
  int64_t ewlines;                // most warnings listed per run (-1: all)
  int64_t ew_listed;              // listed so far in this run (rank 0)
  bigint showewsum;               // summary every N steps (0: off)
  bigint sum_first, sum_last;     // steps covered by the current summary window
  double sum_warnings, sum_steps_with, sum_max_step;    // window statistics (global)
  double ew_step, ew_total;       // this rank's warnings: this step, cumulative
  double ew_global_total;         // sum over ranks (cumulative unless resetew)
  std::vector<int> type2elem;     // [ntypes+1] model element index, -1 = NULL
  std::vector<std::string> type2sym;    // [ntypes+1] symbols from pair_coeff

  // per-step buffers, grown as needed
  static constexpr int CHUNK = 256;   // centres per kernel call (bounds list memory)
  std::vector<int> kelem;         // [nall] element per LAMMPS atom, -1 = NULL type
  std::vector<int32_t> centres;   // centre atoms of the current chunk
  std::vector<int64_t> offsets;   // chunk CSR neighbour list
  std::vector<int32_t> nbindex;
  std::vector<double> nbd;
  std::vector<double> kenergy, kforce, kvatom;
  std::vector<double> kmember;    // [M][3 nall] forces of each member (committee path)

  virtual void allocate();
  void map_elements(const std::vector<std::string> &);
  void resolve_units();
  void stop_on_kernel_error(const std::string &);
  void report_warnings(const std::vector<pyfragnn::ExtrapolationWarning> &,
                       const std::vector<int> &, int64_t);
  void print_summary();
  void load_potentials(int, char **);
};

}    // namespace LAMMPS_NS

#endif
#endif
