/* ----------------------------------------------------------------------
   pair_style fragnn: LAMMPS glue for pyfragnn::Model (see pair_fragnn.h).

   compute() hands the full neighbour list to the kernel as a CSR list in potential
   units, calls Model::compute once per step, and scatters forces, energies and
   virials back with the cflength/cfenergy conversion:
     d_pot = d_lmp * cflength,  E_lmp = E_pot / cfenergy,
     F_lmp = F_pot * cflength / cfenergy,  W_lmp = W_pot / cfenergy.
   Forces on ghost atoms are reverse-communicated by LAMMPS (newton pair on).

   On the steps where a compute fragnn or fragnn/atom is due (Compute::matchstep; every step
   with average yes), the kernel's Committee evaluates every member on the same list: the MD forces
   go to atom->f as above, each member's forces to kmember, whose ghost parts this style
   reverse-communicates itself before it forms the per-atom force deviation of owned atoms.
   On other steps only the MD member runs, through Model::compute.
------------------------------------------------------------------------- */

#include "pair_fragnn.h"

#include "atom.h"
#include "comm.h"
#include "compute.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "modify.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include "committee.h"    // pyfragnn kernel
#include "model.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <exception>
#include <sys/stat.h>

using namespace LAMMPS_NS;

namespace {
// eV per kcal/mol (1 eV = 23.060547830619026 kcal/mol, CODATA 2018 via N_A e / 4184 J).
constexpr double EV_PER_KCALMOL = 1.0 / 23.060547830619026;
// warnings each rank records per step for showew output (all are counted)
constexpr int64_t MAX_RECORDED_WARNINGS = 100;

std::string join(const std::vector<std::string> &v, const char *sep = " ")
{
  std::string s;
  for (const auto &x : v) s += (s.empty() ? "" : sep) + x;
  return s;
}

bool path_exists(const std::string &p)
{
  struct stat st;
  return !p.empty() && stat(p.c_str(), &st) == 0;
}

std::string parent_dir(const std::string &p)
{
  const size_t slash = p.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : p.substr(0, slash);
}

std::string join_path(const std::string &dir, const std::string &name)
{
  return (dir.empty() || dir.back() == '/') ? dir + name : dir + "/" + name;
}

// Absolute directory of the file this code was loaded from (fragnnplugin.so), "" if unknown.
std::string plugin_dir()
{
  Dl_info info;
  if (dladdr(reinterpret_cast<void *>(&plugin_dir), &info) == 0 || !info.dli_fname ||
      !*info.dli_fname)
    return "";
  std::string file = info.dli_fname;
  if (char *real = realpath(file.c_str(), nullptr)) {
    file = real;
    free(real);
  }
  return parent_dir(file);
}

// Folders of shipped potentials, as pyfragnn.potential.shipped_dirs(): the plugin is installed
// as pyfragnn/lammps/fragnnplugin.so, the potentials as pyfragnn/potentials/NAME.fragnn; in a
// source checkout (plugin in pyfragnn/lammps/ or build/lammps_plugin/) also <repo>/potentials.
std::vector<std::string> shipped_dirs()
{
  std::vector<std::string> dirs;
  const std::string here = plugin_dir();
  if (here.empty()) return dirs;
  const std::string up = parent_dir(here), root = parent_dir(up);
  dirs.push_back(join_path(up, "potentials"));
  const std::string repo = join_path(root, "potentials");
  if (repo != dirs[0] && path_exists(join_path(root, "setup.py")) &&
      path_exists(join_path(root, "cython_ext/kernel")))
    dirs.push_back(repo);
  return dirs;
}

/* Resolve pair_style fragnn's <potential> argument as pyfragnn's Potential.load does: the path
   as given if it exists; else (for a relative name) NAME and NAME.fragnn in each directory of
   $FRAGNN_POTENTIALS (colon-separated), then in the shipped folders. Returns the path found,
   or "" with `err` naming every location searched. */
std::string find_potential(const std::string &arg, std::string &err)
{
  err.clear();
  if (path_exists(arg)) return arg;
  std::vector<std::string> searched{arg};
  if (!arg.empty() && arg[0] != '/') {
    std::vector<std::string> dirs;
    if (const char *env = getenv("FRAGNN_POTENTIALS")) {
      std::string list = env;
      size_t start = 0;
      while (start <= list.size()) {
        size_t end = list.find(':', start);
        if (end == std::string::npos) end = list.size();
        if (end > start) dirs.push_back(list.substr(start, end - start));
        start = end + 1;
      }
    }
    for (const auto &d : shipped_dirs()) dirs.push_back(d);
    for (const auto &d : dirs)
      for (const auto &name : {arg, arg + ".fragnn"}) {
        const std::string p = join_path(d, name);
        if (path_exists(p)) return p;
        searched.push_back(p);
      }
  }
  err = "no such file or directory, nor a potential of that name in $FRAGNN_POTENTIALS or the "
        "shipped potentials; searched: " + join(searched, ", ");
  return "";
}

// rank 0's string on every rank
void bcast_string(std::string &s, MPI_Comm comm)
{
  int len = (int) s.size();
  MPI_Bcast(&len, 1, MPI_INT, 0, comm);
  s.resize(len);
  if (len > 0) MPI_Bcast(&s[0], len, MPI_CHAR, 0, comm);
}
}    // namespace

/* ---------------------------------------------------------------------- */

PairFragNN::PairFragNN(LAMMPS *lmp) : Pair(lmp)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  unit_convert_flag = 0;
  reinitflag = 0;
  no_virial_fdotr_compute = 1;    // the kernel returns the virial
  centroidstressflag = CENTROID_NOTAVAIL;

  model = nullptr;
  average = false;
  atom_stats_step = -1;
  cflength = cfenergy = 0.0;
  cfl = cfe = 1.0;
  cutoff_pot = cutoff_lmp = 0.0;
  showew = true;
  resetew = false;
  maxew = 0;
  ewlines = 1000;
  ew_listed = 0;
  showewsum = 1000;
  sum_first = sum_last = -1;
  sum_warnings = sum_steps_with = sum_max_step = 0.0;
  ew_step = ew_total = ew_global_total = 0.0;

  nextra = 2;
  pvector = new double[nextra];
  pvector[0] = pvector[1] = 0.0;
}

/* ---------------------------------------------------------------------- */

PairFragNN::~PairFragNN()
{
  if (copymode) return;
  delete[] pvector;
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

/* ---------------------------------------------------------------------- */

void PairFragNN::allocate()
{
  allocated = 1;
  const int n = atom->ntypes;
  memory->create(setflag, n + 1, n + 1, "pair:setflag");
  for (int i = 1; i <= n; i++)
    for (int j = i; j <= n; j++) setflag[i][j] = 0;
  memory->create(cutsq, n + 1, n + 1, "pair:cutsq");
}

/* ----------------------------------------------------------------------
   pair_style fragnn POT1 [POT2 ...] [cflength x] [cfenergy y] [average yes|no]
                     [showew yes|no] [ewlines N] [showewsum N] [maxew N] [resetew yes|no]
------------------------------------------------------------------------- */

namespace {
const char *const KEYWORDS[] = {"cflength", "cfenergy", "average", "showew", "ewlines",
                                "showewsum", "maxew", "resetew"};
const char *const KEYWORD_LIST =
    "cflength, cfenergy, average, showew, ewlines, showewsum, maxew or resetew";
bool is_keyword(const char *a)
{
  for (const char *k : KEYWORDS)
    if (strcmp(a, k) == 0) return true;
  return false;
}
}    // namespace

void PairFragNN::settings(int narg, char **arg)
{
  if (narg < 1)
    error->all(FLERR, "Illegal pair_style fragnn command: expected pair_style fragnn POT1 "
                      "[POT2 ...] [keyword value ...] (keywords {})", KEYWORD_LIST);
  if (is_keyword(arg[0]))
    error->all(FLERR, "pair_style fragnn: the first argument must be a potential, got keyword "
                      "'{}'", arg[0]);

  int npot = 1;
  while (npot < narg && !is_keyword(arg[npot])) npot++;

  cflength = cfenergy = 0.0;
  showew = true;
  resetew = false;
  maxew = 0;
  ewlines = 1000;
  showewsum = -1;    // default below: 1000 with showew yes, 0 (off) with showew no
  average = false;

  int iarg = npot;
  while (iarg < narg) {
    const std::string key = arg[iarg];
    if (!is_keyword(arg[iarg]))
      error->all(FLERR, "pair_style fragnn: unknown keyword '{}' (expected {})", key,
                 KEYWORD_LIST);
    if (iarg + 2 > narg) error->all(FLERR, "pair_style fragnn: keyword '{}' needs a value", key);
    const char *val = arg[iarg + 1];
    if (key == "cflength" || key == "cfenergy") {
      const double v = utils::numeric(FLERR, val, false, lmp);
      if (!(v > 0.0) || !std::isfinite(v))
        error->all(FLERR, "pair_style fragnn: {} must be a positive number, got '{}'", key, val);
      (key == "cflength" ? cflength : cfenergy) = v;
    } else if (key == "showew") {
      showew = utils::logical(FLERR, val, false, lmp) != 0;
    } else if (key == "resetew") {
      resetew = utils::logical(FLERR, val, false, lmp) != 0;
    } else if (key == "average") {
      average = utils::logical(FLERR, val, false, lmp) != 0;
    } else if (key == "maxew") {
      maxew = utils::bnumeric(FLERR, val, false, lmp);
    } else if (key == "ewlines") {
      ewlines = utils::bnumeric(FLERR, val, false, lmp);
      if (ewlines < -1) error->all(FLERR, "pair_style fragnn: ewlines must be >= -1, got {}", val);
    } else if (key == "showewsum") {
      showewsum = utils::bnumeric(FLERR, val, false, lmp);
      if (showewsum < 0) error->all(FLERR, "pair_style fragnn: showewsum must be >= 0, got {}", val);
    }
    iarg += 2;
  }

  if (showewsum < 0) showewsum = showew ? 1000 : 0;

  load_potentials(npot, arg);
  model = models[0].get();
  potential_arg = potential_args[0];
  potential_path = potential_paths[0];
  cutoff_pot = model->cutoff();

  // same elements, cutoff and units for every member: checked identically on every rank
  for (int m = 1; m < npot; m++) {
    const std::string why = pyfragnn::Committee::incompatibility(*model, *models[m]);
    if (!why.empty())
      error->all(FLERR, "pair_style fragnn: committee member {} '{}' ({}) does not match member "
                        "1 '{}' ({}): {}", m + 1, potential_args[m], potential_paths[m],
                 potential_arg, potential_path, why);
  }
  committee.reset();
  if (npot > 1) {
    std::vector<const pyfragnn::Model *> ptrs;
    for (auto &m : models) ptrs.push_back(m.get());
    std::vector<double> w(npot, 0.0);
    if (average) w.assign(npot, 1.0 / npot);
    else w[0] = 1.0;
    committee = std::make_unique<pyfragnn::Committee>(ptrs, w);
  }
  comm_reverse = 3 * npot;

  // a repeated pair_style keeps earlier pair_coeff symbols: re-resolve them
  if (!type2sym.empty()) map_elements(type2sym);
}

/* ----------------------------------------------------------------------
   Rank 0 resolves the names and loads first, then broadcasts the error or the resolved paths,
   so that every rank stops together with the same message or loads the same (small) files.
------------------------------------------------------------------------- */

void PairFragNN::load_potentials(int npot, char **arg)
{
  potential_args.assign(arg, arg + npot);
  potential_paths.assign(npot, "");
  models.clear();
  model = nullptr;
  std::string err;
  if (comm->me == 0) {
    for (int m = 0; m < npot && err.empty(); m++) {
      const std::string &a = potential_args[m];
      std::string why;
      potential_paths[m] = find_potential(a, why);
      const std::string who = npot > 1 ? fmt::format(" (committee member {})", m + 1) : "";
      if (!why.empty()) {
        // after the first potential, a word that is no potential may be a misspelt keyword
        if (m > 0 && a.find('/') == std::string::npos)
          err = fmt::format("unknown keyword '{}' (expected {}), and no potential of that "
                            "name{}: {}", a, KEYWORD_LIST, who, why);
        else
          err = fmt::format("cannot load potential '{}'{}: {}", a, who, why);
        break;
      }
      try {
        models.push_back(
            std::make_unique<pyfragnn::Model>(pyfragnn::Model::load(potential_paths[m])));
      } catch (std::exception &e) {
        std::string what = e.what();
        if (what.empty()) what = "unknown error";
        err = fmt::format("cannot load potential '{}'{}: {}", a, who, what);
      }
    }
  }
  bcast_string(err, world);
  if (!err.empty()) {
    models.clear();
    error->all(FLERR, "pair_style fragnn: {}", err);
  }
  for (int m = 0; m < npot; m++) bcast_string(potential_paths[m], world);
  if (comm->me != 0) {
    for (int m = 0; m < npot; m++) {
      try {
        models.push_back(
            std::make_unique<pyfragnn::Model>(pyfragnn::Model::load(potential_paths[m])));
      } catch (std::exception &e) {
        error->one(FLERR, "pair_style fragnn: cannot load potential '{}': {}",
                   potential_paths[m], e.what());
      }
    }
  }
}

/* ----------------------------------------------------------------------
   pair_coeff * * El1 El2 ... (one symbol or NULL per atom type)
------------------------------------------------------------------------- */

void PairFragNN::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg < 2 || strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "pair_coeff for pair_style fragnn must be: pair_coeff * * El1 ... El{} "
                      "(one element symbol or NULL per atom type)", ntypes);
  if (narg != 2 + ntypes)
    error->all(FLERR, "pair_coeff fragnn: {} atom types need {} element symbols, got {}", ntypes,
               ntypes, narg - 2);

  std::vector<std::string> syms(ntypes + 1);
  for (int i = 1; i <= ntypes; i++) syms[i] = arg[i + 1];
  map_elements(syms);
}

/* ---------------------------------------------------------------------- */

void PairFragNN::map_elements(const std::vector<std::string> &syms)
{
  const int ntypes = (int) syms.size() - 1;
  type2sym = syms;
  type2elem.assign(ntypes + 1, -1);
  for (int i = 1; i <= ntypes; i++) {
    if (syms[i] == "NULL") continue;
    const int e = model->element_index(syms[i]);
    if (e < 0)
      error->all(FLERR, "pair_coeff fragnn: element '{}' (atom type {}) is not in potential '{}' "
                        "(elements: {})", syms[i], i, potential_path, join(model->elements()));
    type2elem[i] = e;
  }

  int count = 0;
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) {
      setflag[i][j] = (type2elem[i] >= 0 && type2elem[j] >= 0) ? 1 : 0;
      count += setflag[i][j];
    }
  if (count == 0) error->all(FLERR, "pair_coeff fragnn: every atom type is mapped to NULL");
}

/* ----------------------------------------------------------------------
   conversion factors from the unit style (unless given explicitly)
------------------------------------------------------------------------- */

void PairFragNN::resolve_units()
{
  const std::string units = update->unit_style;
  double lmp_len_in_A = 0.0, lmp_energy_in_eV = 0.0;
  if (units == "metal") {
    lmp_len_in_A = 1.0;
    lmp_energy_in_eV = 1.0;
  } else if (units == "real") {
    lmp_len_in_A = 1.0;
    lmp_energy_in_eV = EV_PER_KCALMOL;
  } else if (cflength == 0.0 || cfenergy == 0.0) {
    error->all(FLERR, "pair_style fragnn: units '{}' need explicit cflength and cfenergy "
                      "(only metal and real units are converted automatically)", units);
  }
  // x_pot = x_lmp * cfl;  E_lmp = E_pot / cfe
  cfl = cflength > 0.0 ? cflength : lmp_len_in_A / model->length_unit();
  cfe = cfenergy > 0.0 ? cfenergy : lmp_energy_in_eV / model->energy_unit();
  cutoff_lmp = cutoff_pot / cfl;
}

/* ---------------------------------------------------------------------- */

void PairFragNN::init_style()
{
  if (!model) error->all(FLERR, "pair_style fragnn: no potential loaded");
  if (force->newton_pair == 0) error->all(FLERR, "Pair style fragnn requires newton pair on");
  if (type2elem.empty()) error->all(FLERR, "pair_style fragnn: pair_coeff * * El1 ... is missing");
  if ((int) type2elem.size() != atom->ntypes + 1)
    error->all(FLERR, "pair_coeff fragnn: {} atom types need {} element symbols, got {}",
               atom->ntypes, atom->ntypes, (int) type2elem.size() - 1);

  resolve_units();
  neighbor->add_request(this, NeighConst::REQ_FULL);

  if (comm->me == 0)
    utils::logmesg(lmp,
                   "pair fragnn: potential {}{}: elements {}, cutoff {:.10g} (potential units) = "
                   "{:.10g} (LAMMPS units), cflength {:.10g}, cfenergy {:.10g}\n",
                   potential_arg,
                   potential_arg == potential_path ? "" : " (" + potential_path + ")",
                   join(model->elements()), cutoff_pot, cutoff_lmp, cfl, cfe);
  if (comm->me == 0 && committee) {
    std::string msg = fmt::format("pair fragnn: committee of {} potentials, MD on {}; {} "
                                  "symmetry-function set(s)\n", n_members(),
                                  average ? "their mean" : "member 1",
                                  committee->n_descriptor_sets());
    for (int m = 0; m < n_members(); m++)
      msg += fmt::format("  member {}: {}{}{}\n", m + 1, potential_args[m],
                         potential_args[m] == potential_paths[m]
                             ? "" : " (" + potential_paths[m] + ")",
                         committee->descriptor_source(m) == m
                             ? "" : fmt::format(", symmetry functions shared with member {}",
                                                committee->descriptor_source(m) + 1));
    utils::logmesg(lmp, msg);
  }
  stat_computes = modify->get_compute_by_style("^fragnn");
  ew_listed = 0;
  sum_first = sum_last = -1;
  sum_warnings = sum_steps_with = sum_max_step = 0.0;
}

/* ---------------------------------------------------------------------- */

double PairFragNN::init_one(int i, int j)
{
  if (setflag[i][j] == 0) error->all(FLERR, "All pair coeffs are not set");
  return cutoff_lmp;
}

/* ---------------------------------------------------------------------- */

void PairFragNN::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);

  double **x = atom->x;
  double **f = atom->f;
  const int *type = atom->type;
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const int inum = list->inum;
  const int *ilist = list->ilist;
  const int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  const int nmem = n_members();
  // the committee path (every member's forces, per-atom extrapolation counts) on every step
  // with average yes, else on the steps where a fragnn compute will be invoked
  bool stats = committee && average;
  for (Compute *c : stat_computes) stats = stats || c->matchstep(update->ntimestep);
  std::unique_ptr<pyfragnn::Committee> single;
  if (stats && !committee)
    single = std::make_unique<pyfragnn::Committee>(std::vector<const pyfragnn::Model *>{model},
                                                   std::vector<double>{1.0});
  // null: the MD member alone through Model::compute
  const pyfragnn::Committee *comm_ptr = !stats ? nullptr : committee ? committee.get()
                                                                     : single.get();

  // Element of every owned and ghost atom (-1 for types mapped to NULL).
  kelem.resize(nall);
  for (int i = 0; i < nall; i++) kelem[i] = type2elem[type[i]];
  kforce.assign(3 * (size_t) nall, 0.0);
  if (vflag_atom) kvatom.assign(6 * (size_t) nall, 0.0);
  if (eflag_atom) kenergy.assign(nall, 0.0);
  if (stats) {
    kmember.assign(3 * (size_t) nall * nmem, 0.0);
    atom_extrapolations.assign(nall, 0);
  }
  double kvir[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  std::vector<pyfragnn::ExtrapolationWarning> warnings;
  std::vector<int> warning_member;
  const bool listing = showew && (ewlines < 0 || ew_listed < ewlines);

  pyfragnn::CommitteeOutput kout;
  pyfragnn::ComputeOutput &out = kout.md;
  out.energies = eflag_atom ? kenergy.data() : nullptr;
  out.forces = kforce.data();
  out.virial = vflag_global ? kvir : nullptr;
  out.atom_virial = vflag_atom ? kvatom.data() : nullptr;
  out.warnings = &warnings;
  out.max_warnings = listing ? MAX_RECORDED_WARNINGS : 0;
  if (stats) {
    kout.warning_member = &warning_member;
    kout.member_forces = kmember.data();
    kout.extrapolations = atom_extrapolations.data();
  }

  // Centres are processed in chunks so that only one chunk's neighbour vectors are held
  // (memory per atom stays far below what keeping the whole list would take).
  const double rc2 = cutoff_pot * cutoff_pot;
  const double s = cfl;
  double etot = 0.0;
  std::string kernel_error;
  for (int ii0 = 0; ii0 < inum; ii0 += CHUNK) {
    const int ii1 = std::min(inum, ii0 + CHUNK);
    centres.clear();
    offsets.assign(1, 0);
    // Room for every listed neighbour (skin included), written through pointers; offsets say
    // how many are used (push_back per neighbour cost ~4 % of a water step).
    size_t bound = 0;
    for (int ii = ii0; ii < ii1; ii++) bound += numneigh[ilist[ii]];
    if (nbindex.size() < bound) nbindex.resize(bound);
    if (nbd.size() < 3 * bound) nbd.resize(3 * bound);
    int *nbi = nbindex.data();
    double *nbx = nbd.data();
    int64_t count = 0;
    for (int ii = ii0; ii < ii1; ii++) {
      const int i = ilist[ii];
      if (kelem[i] < 0) continue;
      const double xi = x[i][0], yi = x[i][1], zi = x[i][2];
      const int *jlist = firstneigh[i];
      const int jnum = numneigh[i];
      // Branch-free compaction: every entry is written, the count advances for the kept
      // ones (the list's skin holds ~half of the neighbours, so a branch on r < rc was
      // mispredicted about every other time).
      for (int jj = 0; jj < jnum; jj++) {
        const int j = jlist[jj] & NEIGHMASK;
        const double dx = (x[j][0] - xi) * s;
        const double dy = (x[j][1] - yi) * s;
        const double dz = (x[j][2] - zi) * s;
        nbi[count] = j;
        nbx[3 * count] = dx;
        nbx[3 * count + 1] = dy;
        nbx[3 * count + 2] = dz;
        // !(>=): a non-finite distance is kept, for the kernel to report
        count += !(dx * dx + dy * dy + dz * dz >= rc2) & (kelem[j] >= 0);
      }
      centres.push_back(i);
      offsets.push_back(count);
    }
    if (centres.empty()) continue;
    pyfragnn::NeighborListView view;
    view.n_centres = (int64_t) centres.size();
    view.centre = centres.data();
    view.offsets = offsets.data();
    view.index = nbindex.data();
    view.d = nbd.data();
    try {
      if (comm_ptr)
        etot += comm_ptr->compute(view, kelem.data(), nall, kout);
      else
        etot += model->compute(view, kelem.data(), nall, out);
    } catch (std::exception &e) {
      kernel_error = e.what();
      break;
    }
  }
  stop_on_kernel_error(kernel_error);

  // scatter back with unit conversion
  const double econv = 1.0 / cfe;
  const double fconv = cfl / cfe;
  for (int k = 0; k < nall; k++) {
    double *fj = f[k];
    fj[0] += fconv * kforce[3 * k];
    fj[1] += fconv * kforce[3 * k + 1];
    fj[2] += fconv * kforce[3 * k + 2];
  }
  if (eflag_global) eng_vdwl += econv * etot;
  if (eflag_atom)
    for (int ii = 0; ii < inum; ii++) eatom[ilist[ii]] += econv * kenergy[ilist[ii]];
  if (vflag_global)
    for (int m = 0; m < 6; m++) virial[m] += econv * kvir[m];
  if (vflag_atom)
    for (int k = 0; k < nall; k++) {
      double *va = vatom[k];
      for (int m = 0; m < 6; m++) va[m] += econv * kvatom[6 * k + m];
    }

  // committee force deviation of owned atoms: the members' ghost forces first go to their owners
  if (stats) {
    if (nmem > 1) comm->reverse_comm(this);
    atom_deviation.assign(nlocal, 0.0);
    const size_t stride = 3 * (size_t) nall;
    for (int i = 0; i < nlocal && nmem > 1; i++) {
      double dev = 0.0;
      for (int a = 0; a < 3; a++) {
        double lo = fconv * kmember[3 * i + a], hi = lo;
        for (int m = 1; m < nmem; m++) {
          const double v = fconv * kmember[m * stride + 3 * i + a];
          lo = std::min(lo, v);
          hi = std::max(hi, v);
        }
        dev = std::max(dev, hi - lo);
      }
      atom_deviation[i] = dev;
    }
    atom_stats_step = update->ntimestep;
  }

  // extrapolation warnings
  ew_step = (double) out.n_warnings;
  ew_total = resetew ? ew_step : ew_total + ew_step;
  pvector[0] = ew_step;
  pvector[1] = ew_total;
  if (showew || maxew >= 0 || showewsum > 0) {
    double loc[2] = {ew_step, ew_total}, glob[2];
    MPI_Allreduce(loc, glob, 2, MPI_DOUBLE, MPI_SUM, world);
    ew_global_total = glob[1];
    if (listing && glob[0] > 0) report_warnings(warnings, warning_member, (int64_t) glob[0]);
    if (showewsum > 0) {
      const bigint step = update->ntimestep;
      if (sum_first < 0) sum_first = step;
      sum_last = step;
      sum_warnings += glob[0];
      if (glob[0] > 0) sum_steps_with += 1.0;
      sum_max_step = std::max(sum_max_step, glob[0]);
      if (step - sum_first + 1 >= showewsum) print_summary();
    }
    if (maxew >= 0 && glob[1] > (double) maxew)
      error->all(FLERR, "pair fragnn: too many extrapolation warnings: {} {} > maxew {} (step {})",
                 (int64_t) glob[1], resetew ? "on this step" : "in total", maxew,
                 update->ntimestep);
  }
}

/* ----------------------------------------------------------------------
   member forces on ghost atoms -> their owners (kernel units; comm_reverse = 3 M)
------------------------------------------------------------------------- */

int PairFragNN::pack_reverse_comm(int n, int first, double *buf)
{
  const int nmem = n_members();
  const size_t stride = 3 * (size_t) (atom->nlocal + atom->nghost);
  int k = 0;
  for (int i = first; i < first + n; i++)
    for (int m = 0; m < nmem; m++)
      for (int a = 0; a < 3; a++) buf[k++] = kmember[m * stride + 3 * i + a];
  return k;
}

void PairFragNN::unpack_reverse_comm(int n, int *list, double *buf)
{
  const int nmem = n_members();
  const size_t stride = 3 * (size_t) (atom->nlocal + atom->nghost);
  int k = 0;
  for (int i = 0; i < n; i++) {
    const int j = list[i];
    for (int m = 0; m < nmem; m++)
      for (int a = 0; a < 3; a++) kmember[m * stride + 3 * j + a] += buf[k++];
  }
}

/* ----------------------------------------------------------------------
   showewsum: one line for the steps since the last summary, if they had warnings
------------------------------------------------------------------------- */

void PairFragNN::print_summary()
{
  if (comm->me == 0 && sum_warnings > 0)
    utils::logmesg(lmp,
                   "pair fragnn: steps {}-{}: {} extrapolation warnings{} on {} of {} steps "
                   "(at most {} on one step); {} in total\n",
                   sum_first, sum_last, (int64_t) sum_warnings,
                   average && n_members() > 1 ? " (all members)" : "", (int64_t) sum_steps_with,
                   sum_last - sum_first + 1, (int64_t) sum_max_step, (int64_t) ew_global_total);
  sum_first = sum_last = -1;
  sum_warnings = sum_steps_with = sum_max_step = 0.0;
}

void PairFragNN::finish()
{
  if (showewsum > 0 && sum_first >= 0) print_summary();
}

/* ----------------------------------------------------------------------
   a kernel error on any rank (e.g. two atoms at one place) stops all ranks together, with the
   message of the lowest failing rank printed by rank 0 (error->one from a single rank can lose
   its message when MPI aborts the job)
------------------------------------------------------------------------- */

void PairFragNN::stop_on_kernel_error(const std::string &msg)
{
  const int me = comm->me;
  int mine = msg.empty() ? comm->nprocs : me, first = 0;
  MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, world);
  if (first == comm->nprocs) return;
  int len = (me == first) ? (int) msg.size() : 0;
  MPI_Bcast(&len, 1, MPI_INT, first, world);
  std::string text(me == first ? msg : std::string(len, ' '));
  MPI_Bcast(&text[0], len, MPI_CHAR, first, world);
  error->all(FLERR, "pair fragnn: {} (rank {})", text, first);
}

/* ----------------------------------------------------------------------
   gather the recorded warnings on rank 0 and print them
------------------------------------------------------------------------- */

void PairFragNN::report_warnings(const std::vector<pyfragnn::ExtrapolationWarning> &w,
                                 const std::vector<int> &member, int64_t nglobal)
{
  constexpr int NV = 7;    // tag, element, sf, value, gmin, gmax, member
  std::vector<double> mine;
  mine.reserve(NV * w.size());
  for (const auto &x : w) {
    const int i = (x.atom >= 0 && x.atom < atom->nlocal + atom->nghost) ? (int) x.atom : -1;
    mine.push_back(i >= 0 ? (double) atom->tag[i] : -1.0);
    mine.push_back((double) x.element);
    mine.push_back((double) x.sf);
    mine.push_back(x.value);
    mine.push_back(x.gmin);
    mine.push_back(x.gmax);
    const size_t r = &x - w.data();
    mine.push_back(r < member.size() ? (double) member[r] : 0.0);
  }
  const int nme = (int) mine.size();
  const int nprocs = comm->nprocs;
  std::vector<int> counts(nprocs), displs(nprocs);
  // every rank learns how many are listed, so that ew_listed stays the same on all ranks
  MPI_Allgather(&nme, 1, MPI_INT, counts.data(), 1, MPI_INT, world);
  int tot = 0;
  for (int p = 0; p < nprocs; p++) {
    displs[p] = tot;
    tot += counts[p];
  }
  std::vector<double> all;
  if (comm->me == 0) all.resize(tot > 0 ? tot : 1);
  MPI_Gatherv(mine.data(), nme, MPI_DOUBLE, all.data(), counts.data(), displs.data(), MPI_DOUBLE,
              0, world);
  const size_t nrec = (size_t) tot / NV;
  const int64_t room = ewlines < 0 ? (int64_t) nrec : std::max<int64_t>(0, ewlines - ew_listed);
  const size_t nshow = std::min<size_t>(nrec, (size_t) room);
  ew_listed += (int64_t) nshow;
  if (comm->me != 0) return;

  const auto &names = model->elements();
  std::string msg = fmt::format("pair fragnn: {} extrapolation warnings on step {}\n", nglobal,
                                update->ntimestep);
  for (size_t r = 0; r < nshow; r++) {
    const double *v = &all[NV * r];
    const int e = (int) v[1];
    // SF index 1-based, as in pyfragnn.Potential's warnings
    msg += fmt::format("  fragnn EW step {} atom {} element {} SF {} value {:.8g} "
                       "range [{:.8g}, {:.8g}]{}\n",
                       update->ntimestep, (int64_t) v[0],
                       (e >= 0 && e < (int) names.size()) ? names[e] : std::to_string(e),
                       (int) v[2] + 1, v[3], v[4], v[5],
                       average && n_members() > 1 ? fmt::format(" member {}", (int) v[6] + 1) : "");
  }
  if ((int64_t) nshow < nglobal)
    msg += fmt::format("  ({} more not listed)\n", nglobal - (int64_t) nshow);
  if (ewlines >= 0 && ew_listed >= ewlines)
    msg += fmt::format("pair fragnn: {} warnings listed (ewlines {}); further ones are only "
                       "counted{} (compute fragnn/atom shows where)\n", ew_listed, ewlines,
                       showewsum > 0 ? fmt::format(" and summarised every {} steps", showewsum)
                                     : "");
  utils::logmesg(lmp, msg);
}

/* ---------------------------------------------------------------------- */

void *PairFragNN::extract(const char *str, int &dim)
{
  dim = 0;
  if (strcmp(str, "ew_step") == 0) return (void *) &ew_step;
  if (strcmp(str, "ew_total") == 0) return (void *) &ew_total;
  if (strcmp(str, "ew_global_total") == 0) return (void *) &ew_global_total;
  if (strcmp(str, "cflength") == 0) return (void *) &cfl;
  if (strcmp(str, "cfenergy") == 0) return (void *) &cfe;
  return nullptr;
}

/* ---------------------------------------------------------------------- */

double PairFragNN::memory_usage()
{
  double bytes = Pair::memory_usage();
  bytes += (double) kelem.capacity() * sizeof(int) + (double) centres.capacity() * sizeof(int32_t);
  bytes += (double) offsets.capacity() * sizeof(int64_t);
  bytes += (double) (kmember.capacity() + atom_deviation.capacity()) * sizeof(double);
  bytes += (double) atom_extrapolations.capacity() * sizeof(int32_t);
  bytes += (double) nbindex.capacity() * sizeof(int32_t);
  bytes += (double) (nbd.capacity() + kenergy.capacity() + kforce.capacity() + kvatom.capacity()) *
      sizeof(double);
  return bytes;
}
