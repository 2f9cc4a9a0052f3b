"""Committee pair_style fragnn (several potentials in one pair style), compute fragnn/atom and
compute fragnn against pyfragnn.active_learning's committee measures, across MPI
decompositions; the warning summary; committee misuse ending in a LAMMPS error.

Committee: the n2p2 Cu2S potential (triclinic 144-atom cell, rattled so that it is not a
training structure) and copies written to a temporary directory: B with perturbed weights and
narrowed scaling ranges (so that atoms extrapolate), C with perturbed weights and one symmetry
function changed (a second symmetry-function set, evaluated separately).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from test_lammps_plugin import (N2P2, System, plugin, printed, read_dump, rel_err,  # noqa: F401
                                run_lmp, systems, write_data, _cluster, _misuse, TIMEOUT)

pytestmark = pytest.mark.mpi


def _perturbed(src: Path, dst: Path, seed: int, scale: float = 0.05, narrow: float = 0.0,
               edit_sf: bool = False, rc: float | None = None) -> Path:
    """A copy of the n2p2 potential src in dst (n2p2 files) with weights w (1 + scale N(0,1)),
    scaling ranges narrowed by `narrow` of their width on each side, optionally one radial
    symmetry function's eta changed and every cutoff set to rc."""
    from pyfragnn import Potential

    p = Potential.load(str(src))
    rng = np.random.default_rng(seed)
    for e in range(len(p.elements)):
        w = np.asarray(p.core.get_parameters(e))
        p.core.set_parameters(e, w * (1.0 + scale * rng.normal(size=w.shape)))
    dst.mkdir(parents=True, exist_ok=True)
    p.save_n2p2(str(dst))
    if narrow:
        lines = []
        for ln in (dst / "scaling.data").read_text().splitlines():
            t = ln.split()
            if t and not ln.startswith("#"):
                lo, hi = float(t[2]), float(t[3])
                t[2], t[3] = repr(lo + narrow * (hi - lo)), repr(hi - narrow * (hi - lo))
                ln = " ".join(t)
            lines.append(ln)
        (dst / "scaling.data").write_text("\n".join(lines) + "\n")
    if edit_sf or rc is not None:
        lines, done = [], False
        for ln in (dst / "input.nn").read_text().splitlines():
            t = ln.split()
            if t[:1] == ["symfunction_short"]:
                if edit_sf and not done and t[2] == "2":
                    t[4] = repr(float(t[4]) * 1.1)
                    done = True
                if rc is not None:
                    t[6 if t[2] == "2" else 8] = repr(rc)
                ln = " ".join(t)
            lines.append(ln)
        (dst / "input.nn").write_text("\n".join(lines) + "\n")
    return dst


@pytest.fixture(scope="module")
def committee(systems, tmp_path_factory):
    """(system with rattled positions, [A, B, C] potential directories)."""
    pytest.importorskip("pyfragnn._core", reason="pyfragnn's compiled core is not built")
    tmp = tmp_path_factory.mktemp("committee")
    s = systems("cu2s")
    a = s.pot
    b = _perturbed(a, tmp / "B", seed=1, narrow=0.001)
    c = _perturbed(a, tmp / "C", seed=2, edit_sf=True)
    rng = np.random.default_rng(5)
    s2 = System.__new__(System)
    s2.__dict__.update(s.__dict__)
    s2.pos = s.pos + rng.normal(0.0, 0.08, s.pos.shape)
    s2.data = tmp / "rattled.data"
    write_data(s2.data, s.cell, s2.pos, s.types, len(s.elements))
    return s2, [a, b, c]


def _atoms(s):
    from ase import Atoms
    return Atoms(s.symbols, positions=s.pos, cell=s.cell, pbc=True)


STATS = """
pair_style fragnn {pots} showew no maxew -1 {extra}
pair_coeff * * {elements}
compute ca all fragnn/atom
compute cg all fragnn threshold {threshold}
compute pv all pressure NULL virial
compute ew all pair fragnn
dump d all custom 1 stats.dump id fx fy fz c_ca[1] c_ca[2]
dump_modify d sort id format float %.17g
thermo_style custom step pe c_cg[1] c_cg[2] c_cg[3] c_cg[4]
run 0
print "RESULT $(pe:%.17g) $(c_cg[1]:%.17g) $(c_cg[2]:%.17g) $(c_cg[3]:%.17g) $(c_cg[4]:%.17g)"
print "EW $(c_ew[1]:%.17g)"
print "VIRIAL $(c_pv[1]:%.17g) $(c_pv[2]:%.17g) $(c_pv[3]:%.17g) $(c_pv[4]:%.17g) $(c_pv[5]:%.17g) $(c_pv[6]:%.17g)"
"""


def _run_stats(s, pots, cwd: Path, np_: int, plugin_path: str, extra: str = "",
               threshold: float = 0.05) -> dict:
    cwd.mkdir(parents=True, exist_ok=True)
    script = s.header() + STATS.format(pots=" ".join(map(str, pots)), extra=extra,
                                       elements=" ".join(s.elements), threshold=threshold)
    r = run_lmp(script, cwd, np_, str(Path(plugin_path).parent))
    d = read_dump(cwd / "stats.dump")
    res = printed(r.stdout, "RESULT")
    return {"energy": res[0], "global": res[1:], "ew": printed(r.stdout, "EW")[0], "virial": np.array(printed(r.stdout, "VIRIAL")),
            "forces": np.column_stack([d["fx"], d["fy"], d["fz"]]),
            "deviation": d["c_ca[1]"], "extrapolations": d["c_ca[2]"], "log": r.stdout}


@pytest.fixture(scope="module")
def stats_runs(plugin, committee, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stats")
    cache = {}

    def get(key, np_):
        if (key, np_) not in cache:
            s, pots = committee
            chosen = {"ABC": pots, "A": pots[:1], "AB": pots[:2]}[key.split("-")[0]]
            extra = "average yes" if key.endswith("-avg") else ""
            cache[key, np_] = _run_stats(s, chosen, tmp / f"{key}_np{np_}", np_, plugin, extra)
        return cache[key, np_]
    return get


@pytest.fixture(scope="module")
def python_reference(committee):
    from pyfragnn.active_learning import (committee_forces, extrapolating_atoms,
                                          force_deviation)
    from pyfragnn import Potential
    s, pots = committee
    members = [Potential.load(str(p)) for p in pots]
    atoms = _atoms(s)
    f = committee_forces(atoms, members)
    return {"forces": f, "deviation": force_deviation(f),
            "extrapolations": extrapolating_atoms(atoms, members),
            "energies": [m.compute(s.pos, s.symbols, s.cell, (True,) * 3)["energy"]
                         for m in members]}


@pytest.mark.parametrize("np_", [1, 2, 4])
def test_committee_statistics_match_python(stats_runs, python_reference, np_):
    """compute fragnn/atom of a three-member committee (two symmetry-function sets) on a
    triclinic periodic cell equals pyfragnn.active_learning.force_deviation (1e-10 eV/Å) and
    extrapolating_atoms (exactly), on 1, 2 and 4 ranks; compute fragnn's global values equal
    the same reductions of the Python arrays."""
    lmp = stats_runs("ABC", np_)
    ref = python_reference
    dev, ext = ref["deviation"], ref["extrapolations"]
    assert dev.max() > 0.05 and ext.sum() > 0 and (ext == 0).any()   # a real test
    assert np.max(np.abs(lmp["deviation"] - dev)) <= 1e-10 * max(1.0, dev.max())
    assert np.array_equal(lmp["extrapolations"], ext)
    g = lmp["global"]
    assert abs(g[0] - dev.max()) <= 1e-10 * max(1.0, dev.max())
    assert g[1] == int((dev > 0.05).sum())
    assert g[2] == int((ext > 0).sum())
    assert g[3] == int(ext.sum())
    assert "committee of 3 potentials, MD on member 1; 2 symmetry-function set(s)" in lmp["log"]
    assert "symmetry functions shared with member 1" in lmp["log"]


@pytest.mark.parametrize("np_", [1, 2])
def test_md_member_unchanged(stats_runs, np_):
    """The committee's MD forces, energy and virial are those of the first member alone
    (1e-12 relative), with the single-model code path."""
    single = stats_runs("A", np_)
    comm = stats_runs("ABC", np_)
    assert abs(comm["energy"] - single["energy"]) <= 1e-12 * abs(single["energy"])
    assert rel_err(comm["forces"], single["forces"]) <= 1e-12
    assert rel_err(comm["virial"], single["virial"]) <= 1e-12
    # a single potential with compute fragnn/atom: deviation 0, extrapolations of A alone
    assert not single["deviation"].any()
    # warnings (showew/maxew) are those of the MD member: B's extrapolations do not count
    assert comm["ew"] == single["ew"] == single["extrapolations"].sum()
    assert comm["extrapolations"].sum() > comm["ew"]


def test_single_member_matches_python(stats_runs, python_reference, committee):
    """One potential: forces equal the Potential's (1e-10); compute fragnn/atom gives its
    extrapolation counts."""
    from pyfragnn import Potential
    from pyfragnn.active_learning import extrapolating_atoms
    s, pots = committee
    lmp = stats_runs("A", 2)
    assert rel_err(lmp["forces"], python_reference["forces"][0]) <= 1e-10
    ref = extrapolating_atoms(_atoms(s), [Potential.load(str(pots[0]))])
    assert np.array_equal(lmp["extrapolations"], ref)


@pytest.mark.parametrize("np_", [1, 2])
def test_average_is_member_mean(stats_runs, python_reference, np_):
    """average yes: energy and forces are the mean of the members' (1e-10 relative); the
    deviation is unchanged."""
    lmp = stats_runs("AB-avg", np_)
    f = python_reference["forces"][:2].mean(axis=0)
    e = np.mean(python_reference["energies"][:2])
    assert abs(lmp["energy"] - e) <= 1e-10 * abs(e)
    assert rel_err(lmp["forces"], f) <= 1e-10
    ref = python_reference["forces"][:2]
    dev = (ref.max(0) - ref.min(0)).max(1)
    assert np.max(np.abs(lmp["deviation"] - dev)) <= 1e-10 * max(1.0, dev.max())


HALT = """
pair_style fragnn {pots} showew no maxew -1
pair_coeff * * {elements}
compute cg all fragnn threshold {threshold}
variable dmax equal c_cg[1]
velocity all create 300.0 4928459 loop all
fix nve all nve
fix stop all halt 5 v_dmax > {threshold} error continue
timestep 0.001
thermo_style custom step pe c_cg[1] c_cg[3]
thermo {thermo}
run 200
print "STOPPED $(step)"
"""


@pytest.mark.parametrize("thermo", [5, 7])
def test_fix_halt_on_deviation(plugin, committee, python_reference, tmp_path, thermo):
    """A variable of compute fragnn drives fix halt: with a threshold below the deviation of the
    start structure the run stops at the first check (step 5), on 2 ranks, also when thermo
    output does not fall on that step (fix halt schedules the compute itself)."""
    s, pots = committee
    f = python_reference["forces"][:2]
    thr = 0.5 * (f.max(0) - f.min(0)).max()
    script = s.header() + HALT.format(pots=" ".join(map(str, pots[:2])),
                                      elements=" ".join(s.elements), threshold=thr,
                                      thermo=thermo)
    r = run_lmp(script, tmp_path, 2, str(Path(plugin).parent))
    assert "Fix halt condition" in r.stdout
    assert printed(r.stdout, "STOPPED")[0] == 5


# --------------------------------------------------------------------------- warnings summary

SUMMARY = """units metal
atom_style atomic
boundary s s s
read_data {data}
mass 1 1.00794
mass 2 15.9994
pair_style fragnn {pot} cflength 1.8897261328 cfenergy 0.0367493254 maxew -1 {ew}
pair_coeff * * H O
compute ew all pair fragnn
velocity all create 100.0 4928459 loop all
fix nve all nve
timestep 0.0002
thermo_style custom step pe c_ew[1] c_ew[2]
thermo 100
run 25
print "EW $(c_ew[2]:%.17g)"
"""


def test_warning_summary(plugin, tmp_path):
    """showew lists at most ewlines warnings per run, then says so; showewsum N prints one
    line per N steps with the count of the window; the counts add up to the total; showew no
    prints neither by default."""
    data, _, _ = _cluster(tmp_path)
    pot = N2P2 / "H2O_RPBE-D3" / "pot"
    r = run_lmp(SUMMARY.format(data=data, pot=pot, ew="ewlines 7 showewsum 10"), tmp_path, 2,
                str(Path(plugin).parent))
    total = printed(r.stdout, "EW")[0]
    listed = [ln for ln in r.stdout.splitlines() if "fragnn EW" in ln]
    assert len(listed) == 7
    assert "7 warnings listed (ewlines 7); further ones are only counted and summarised " \
        "every 10 steps" in r.stdout
    sums = re.findall(r"pair fragnn: steps (\d+)-(\d+): (\d+) extrapolation warnings on (\d+) "
                      r"of (\d+) steps", r.stdout)
    assert [(int(a), int(b)) for a, b, *_ in sums] == [(0, 9), (10, 19), (20, 25)]
    assert sum(int(x[2]) for x in sums) == total > 0

    # default: at most 1000 listed lines; summary every 1000 steps -> one line for this run
    r = run_lmp(SUMMARY.format(data=data, pot=pot, ew=""), tmp_path, 1,
                str(Path(plugin).parent))
    assert len([ln for ln in r.stdout.splitlines() if "fragnn EW" in ln]) <= 1000
    assert len(re.findall(r"pair fragnn: steps \d+-\d+:", r.stdout)) == 1

    # showew no: silent (no list, no summary unless showewsum is given), still counted
    r = run_lmp(SUMMARY.format(data=data, pot=pot, ew="showew no"), tmp_path, 2,
                str(Path(plugin).parent))
    assert "fragnn EW" not in r.stdout and "pair fragnn: steps" not in r.stdout
    assert printed(r.stdout, "EW")[0] == total


# --------------------------------------------------------------------------- misuse

def test_misuse_member_elements(plugin, committee, tmp_path):
    """A member with other elements stops on 2 ranks, naming both files."""
    s, pots = committee
    water = N2P2 / "H2O_RPBE-D3" / "pot"
    r = _misuse(plugin, tmp_path, s.header() + f"pair_style fragnn {pots[0]} {water}\n",
                "does not match member 1")
    msg = next(ln for ln in r.stdout.splitlines() if "does not match" in ln)
    assert str(water) in msg and str(pots[0]) in msg and "elements differ" in msg


def test_misuse_member_cutoff(plugin, committee, tmp_path):
    """A member with another cutoff stops on 2 ranks, naming both files and both cutoffs."""
    s, pots = committee
    other = _perturbed(pots[0], tmp_path / "rc55", seed=3, rc=5.5)
    r = _misuse(plugin, tmp_path, s.header() + f"pair_style fragnn {pots[0]} {other}\n",
                "cutoffs differ (6 vs 5.5")
    msg = next(ln for ln in r.stdout.splitlines() if "does not match" in ln)
    assert str(other) in msg and str(pots[0]) in msg


def test_misuse_member_unreadable(plugin, committee, tmp_path):
    """A garbled second member stops on 2 ranks with the kernel's message for that file."""
    s, pots = committee
    bad = _perturbed(pots[0], tmp_path / "bad", seed=4)
    w = bad / "weights.029.data"
    w.write_text("\n".join(w.read_text().splitlines()[:40]) + "\nnot-a-number\n")
    r = _misuse(plugin, tmp_path, s.header() + f"pair_style fragnn {pots[0]} {bad}\n",
                f"cannot load potential '{bad}' (committee member 2)")
    assert "weights.029.data" in r.stdout


def test_misuse_member_missing(plugin, committee, tmp_path):
    s, pots = committee
    _misuse(plugin, tmp_path, s.header() + f"pair_style fragnn {pots[0]} /no/such/pot\n",
            "cannot load potential '/no/such/pot' (committee member 2)")



MD = """
pair_style fragnn {pots} showew no maxew -1
pair_coeff * * {elements}
compute ca all fragnn/atom
compute cg all fragnn
velocity all create 300.0 4928459 loop all
fix nve all nve
timestep 0.001
thermo_style custom step pe c_cg[1] c_cg[3]
thermo_modify format float %.17g
thermo 10
dump d all custom 10 md.dump id x y z c_ca[1] c_ca[2]
dump_modify d sort id format float %.17g
run 30
"""


def read_frames(path: Path) -> list[dict]:
    frames, lines = [], path.read_text().splitlines()
    for k, ln in enumerate(lines):
        if ln.startswith("ITEM: ATOMS"):
            cols = ln.split()[2:]
            n = int(lines[k - 5])
            arr = np.array([[float(v) for v in x.split()] for x in lines[k + 1:k + 1 + n]])
            frames.append({c: arr[:, i] for i, c in enumerate(cols)})
    return frames


def test_md_sampled_statistics(plugin, committee, tmp_path):
    """During MD on 2 ranks the committee is evaluated on the output steps only (thermo and
    dump every 10 steps): the dumped deviation and extrapolation counts of each frame equal
    the Python ones for the dumped positions (1e-10); thermo's c_cg[1] is the frame's largest
    deviation; the trajectory is that of member 1 alone (1e-9 Å after 30 steps)."""
    from pyfragnn import Potential
    from pyfragnn.active_learning import (committee_forces, extrapolating_atoms,
                                          force_deviation)
    s, pots = committee
    members = [Potential.load(str(p)) for p in pots]
    res = {}
    for name, chosen in (("single", pots[:1]), ("committee", pots)):
        cwd = tmp_path / name
        cwd.mkdir()
        script = s.header() + MD.format(pots=" ".join(map(str, chosen)),
                                         elements=" ".join(s.elements))
        r = run_lmp(script, cwd, 2, str(Path(plugin).parent))
        from test_lammps_plugin import thermo_table
        res[name] = (read_frames(cwd / "md.dump"), thermo_table(r.stdout))
    frames, thermo = res["committee"]
    assert len(frames) == 4
    for k, fr in enumerate(frames):
        pos = np.column_stack([fr["x"], fr["y"], fr["z"]])
        other = res["single"][0][k]
        # the committee path's MD forces agree with Model::compute's to rounding (1e-12)
        assert np.max(np.abs(pos - np.column_stack([other["x"], other["y"], other["z"]]))) \
            <= 1e-9
        from ase import Atoms
        atoms = Atoms(s.symbols, positions=pos, cell=s.cell, pbc=True)
        dev = force_deviation(committee_forces(atoms, members))
        ext = extrapolating_atoms(atoms, members)
        assert np.max(np.abs(fr["c_ca[1]"] - dev)) <= 1e-10 * max(1.0, dev.max())
        assert np.array_equal(fr["c_ca[2]"], ext)
        assert abs(thermo["c_cg[1]"][k] - dev.max()) <= 1e-10 * max(1.0, dev.max())
        assert thermo["c_cg[3]"][k] == (ext > 0).sum()


def test_misuse_compute_without_pair(plugin, committee, tmp_path):
    """compute fragnn/atom needs pair_style fragnn (2 ranks, error->all)."""
    s, _ = committee
    script = s.header() + ("pair_style lj/cut 3.0\npair_coeff * * 0.01 2.0\n"
                           "compute al all fragnn/atom\nthermo_style custom step pe\nrun 0\n")
    _misuse(plugin, tmp_path, script, "compute fragnn/atom requires pair_style fragnn")


def test_misuse_keyword_first(plugin, committee, tmp_path):
    s, _ = committee
    _misuse(plugin, tmp_path, s.header() + "pair_style fragnn average yes\n",
            "the first argument must be a potential, got keyword 'average'")


def test_average_counts_all_members_warnings(stats_runs):
    """With average yes the MD runs on every member, so every member's warnings count."""
    avg = stats_runs("AB-avg", 2)
    assert avg["ew"] == avg["extrapolations"].sum() > 0
