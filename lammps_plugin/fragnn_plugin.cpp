/* ----------------------------------------------------------------------
   Plugin registration of pair_style fragnn, compute fragnn/atom and compute fragnn for
   LAMMPS's PLUGIN package.

   LAMMPS dlopen()s this file (`plugin load <path>`, or automatically for every
   *plugin.so in the directories of LAMMPS_PLUGIN_PATH) and calls lammpsplugin_init().
   The struct below mirrors the layout that src/PLUGIN/lammpsplugin.h of LAMMPS
   (stable_22Jul2025) defines; that header is not shipped with the PyPI wheel.
------------------------------------------------------------------------- */

#include "compute_fragnn.h"
#include "lammps.h"
#include "pair_fragnn.h"

#ifndef FRAGNN_LAMMPS_VERSION
#define FRAGNN_LAMMPS_VERSION nullptr
#endif
#ifndef FRAGNN_PLUGIN_INFO
#define FRAGNN_PLUGIN_INFO "pair style fragnn (pyfragnn HDNNP) plugin"
#endif

extern "C" {
typedef void *(fragnn_lammpsplugin_factory1)(void *);
typedef void *(fragnn_lammpsplugin_factory2)(void *, int, char **);

typedef struct {
  const char *version;    // LAMMPS version string the plugin was built for (or null)
  const char *style;      // "pair", "compute"
  const char *name;       // style name
  const char *info;
  const char *author;
  union {
    fragnn_lammpsplugin_factory1 *v1;    // pair styles use v1: void *(LAMMPS *)
    fragnn_lammpsplugin_factory2 *v2;    // computes and fixes: void *(LAMMPS *, int, char **)
  } creator;
  void *handle;    // DSO handle, for reference counting by LAMMPS
} fragnn_lammpsplugin_t;

typedef void (*fragnn_lammpsplugin_regfunc)(fragnn_lammpsplugin_t *, void *);
}

using namespace LAMMPS_NS;

static void *fragnn_creator(void *lmp)
{
  return (void *) new PairFragNN((LAMMPS *) lmp);
}

static void *fragnn_atom_compute_creator(void *lmp, int argc, char **argv)
{
  return (void *) new ComputeFragNNAtom((LAMMPS *) lmp, argc, argv);
}

static void *fragnn_compute_creator(void *lmp, int argc, char **argv)
{
  return (void *) new ComputeFragNN((LAMMPS *) lmp, argc, argv);
}

extern "C" __attribute__((visibility("default"))) void lammpsplugin_init(void *lmp, void *handle,
                                                                          void *regfunc)
{
  fragnn_lammpsplugin_t plugin;
  plugin.version = FRAGNN_LAMMPS_VERSION;
  plugin.style = "pair";
  plugin.name = "fragnn";
  plugin.info = FRAGNN_PLUGIN_INFO;
  plugin.author = "pyfragnn developers";
  plugin.creator.v1 = &fragnn_creator;
  plugin.handle = handle;
  auto reg = (fragnn_lammpsplugin_regfunc) regfunc;
  reg(&plugin, lmp);

  plugin.style = "compute";
  plugin.name = "fragnn/atom";
  plugin.info = "compute fragnn/atom: committee force deviation and extrapolation per atom";
  plugin.creator.v2 = &fragnn_atom_compute_creator;
  reg(&plugin, lmp);

  plugin.name = "fragnn";
  plugin.info = "compute fragnn: committee deviation and extrapolation statistics";
  plugin.creator.v2 = &fragnn_compute_creator;
  reg(&plugin, lmp);
}
