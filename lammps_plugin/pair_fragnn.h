/* -*- c++ -*- ----------------------------------------------------------
   pair_style fragnn: pyfragnn's Behler-Parrinello HDNNP as a LAMMPS pair style.

   Thin LAMMPS glue around pyfragnn::Model (cython_ext/kernel/model.h), the same
   kernel the Python package uses. This header does not include kernel headers.

   Syntax:
     pair_style fragnn <potential> [cflength x] [cfenergy y] [showew yes|no]
                                   [maxew N] [resetew yes|no]
     pair_coeff * * El1 El2 ... (one element symbol or NULL per atom type)

   <potential>  n2p2 directory (input.nn, scaling.data, weights.NNN.data) or native file,
                or the name of a potential: NAME or NAME.fragnn in the directories of
                $FRAGNN_POTENTIALS (colon-separated), then in the shipped potentials
                (../potentials/ from the plugin's own directory).
   cflength     LAMMPS length -> potential length (multiply), as n2p2's pair_style hdnnp.
   cfenergy     potential energy -> LAMMPS energy (divide), as n2p2's pair_style hdnnp.
                Unset factors follow from the model's length_unit()/energy_unit()
                (Å, eV per potential unit) for units metal and real; other unit
                styles must give both.
   showew       print every extrapolation warning (atom id, SF index, value, range).
                Default yes (as n2p2).
   maxew        stop the run once the extrapolation-warning count summed over all ranks
                (cumulative, or this step's with resetew yes) exceeds N. Default 0 (as
                n2p2): the first warning stops the run; -1 never stops.
   resetew      count warnings per step instead of cumulatively. Default no.

   Extrapolation-warning counts for thermo output: `compute ew all pair fragnn`,
   c_ew[1] = warnings on this step, c_ew[2] = cumulative (since last reset); both summed
   over ranks. Pair::extract("ew_step"/"ew_total") gives this rank's values.
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

 protected:
  std::unique_ptr<pyfragnn::Model> model;
  std::string potential_arg;       // as given in pair_style
  std::string potential_path;      // the file or directory it resolved to
  double cflength, cfenergy;      // as given, or 0 if not given
  double cfl, cfe;                // effective factors used in compute()
  double cutoff_pot;              // model cutoff in potential length units
  double cutoff_lmp;              // cutoff in LAMMPS length units
  bool showew, resetew;
  int64_t maxew;
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

  virtual void allocate();
  void map_elements(const std::vector<std::string> &);
  void resolve_units();
  void stop_on_kernel_error(const std::string &);
  void report_warnings(const std::vector<pyfragnn::ExtrapolationWarning> &, int64_t);
};

}    // namespace LAMMPS_NS

#endif
#endif
