/* ----------------------------------------------------------------------
   compute fragnn/atom and compute fragnn (see compute_fragnn.h)
------------------------------------------------------------------------- */

#include "compute_fragnn.h"

#include "atom.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "pair_fragnn.h"
#include "update.h"
#include "utils.h"

#include <algorithm>
#include <cstring>

using namespace LAMMPS_NS;

namespace {
PairFragNN *find_pair(LAMMPS *lmp, Error *error, Force *force, const char *who)
{
  auto *p = dynamic_cast<PairFragNN *>(force->pair_match("fragnn", 1));
  if (!p) error->all(FLERR, "compute {} requires pair_style fragnn", who);
  (void) lmp;
  return p;
}

void check_current(Error *error, PairFragNN *pair, Update *update, const char *who)
{
  if (pair->atom_stats_step != update->ntimestep)
    error->all(FLERR, "compute {}: pair fragnn has no committee statistics for step {}: they "
                      "are computed with the forces on the steps where thermo, dump or fix "
                      "output is due to invoke a fragnn compute, during a run", who,
               update->ntimestep);
}
}    // namespace

/* ---------------------------------------------------------------------- */

ComputeFragNNAtom::ComputeFragNNAtom(LAMMPS *lmp, int narg, char **arg) :
    Compute(lmp, narg, arg), nmax(0), stats(nullptr), pair(nullptr)
{
  if (narg != 3) error->all(FLERR, "Illegal compute fragnn/atom command: compute ID group fragnn/atom");
  peratom_flag = 1;
  size_peratom_cols = 2;
  timeflag = 1;    // pair fragnn evaluates the committee on the steps this compute is due
}

ComputeFragNNAtom::~ComputeFragNNAtom()
{
  memory->destroy(stats);
}

void ComputeFragNNAtom::init()
{
  pair = find_pair(lmp, error, force, "fragnn/atom");
}

void ComputeFragNNAtom::compute_peratom()
{
  invoked_peratom = update->ntimestep;
  check_current(error, pair, update, "fragnn/atom");
  const int nlocal = atom->nlocal;
  if (atom->nmax > nmax) {
    memory->destroy(stats);
    nmax = atom->nmax;
    memory->create(stats, nmax, 2, "fragnn/atom:stats");
    array_atom = stats;
  }
  const int *mask = atom->mask;
  const bool have_dev = (int) pair->atom_deviation.size() >= nlocal;
  for (int i = 0; i < nlocal; i++) {
    const bool in = mask[i] & groupbit;
    stats[i][0] = in && have_dev ? pair->atom_deviation[i] : 0.0;
    stats[i][1] = in && i < (int) pair->atom_extrapolations.size()
        ? (double) pair->atom_extrapolations[i] : 0.0;
  }
}

double ComputeFragNNAtom::memory_usage()
{
  return 2.0 * nmax * sizeof(double);
}

/* ---------------------------------------------------------------------- */

ComputeFragNN::ComputeFragNN(LAMMPS *lmp, int narg, char **arg) :
    Compute(lmp, narg, arg), threshold(1.0), pair(nullptr)
{
  int iarg = 3;
  while (iarg < narg) {
    if (strcmp(arg[iarg], "threshold") == 0) {
      if (iarg + 2 > narg) error->all(FLERR, "compute fragnn: threshold needs a value");
      threshold = utils::numeric(FLERR, arg[iarg + 1], false, lmp);
      if (threshold < 0.0) error->all(FLERR, "compute fragnn: threshold must be >= 0");
      iarg += 2;
    } else {
      error->all(FLERR, "compute fragnn: unknown keyword '{}' (expected threshold)", arg[iarg]);
    }
  }
  vector_flag = 1;
  size_vector = 4;
  timeflag = 1;    // pair fragnn evaluates the committee on the steps this compute is due
  extvector = 0;
  vector = new double[size_vector];
  std::fill(vector, vector + size_vector, 0.0);
}

ComputeFragNN::~ComputeFragNN()
{
  delete[] vector;
}

void ComputeFragNN::init()
{
  pair = find_pair(lmp, error, force, "fragnn");
}

void ComputeFragNN::compute_vector()
{
  invoked_vector = update->ntimestep;
  check_current(error, pair, update, "fragnn");
  const int nlocal = atom->nlocal;
  const int *mask = atom->mask;
  const bool have_dev = (int) pair->atom_deviation.size() >= nlocal;
  double dmax = 0.0, loc[3] = {0.0, 0.0, 0.0}, glob[3];
  for (int i = 0; i < nlocal; i++) {
    if (!(mask[i] & groupbit)) continue;
    const double dev = have_dev ? pair->atom_deviation[i] : 0.0;
    const int nex = i < (int) pair->atom_extrapolations.size() ? pair->atom_extrapolations[i] : 0;
    dmax = std::max(dmax, dev);
    if (dev > threshold) loc[0] += 1.0;
    if (nex > 0) loc[1] += 1.0;
    loc[2] += nex;
  }
  MPI_Allreduce(&dmax, &vector[0], 1, MPI_DOUBLE, MPI_MAX, world);
  MPI_Allreduce(loc, glob, 3, MPI_DOUBLE, MPI_SUM, world);
  vector[1] = glob[0];
  vector[2] = glob[1];
  vector[3] = glob[2];
}
