"""Regression tests of issue 15 (items 1-8): bad paths and files end in clear errors naming
the file, line or key; never a crash, a hang, silently wrong numbers or code execution."""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import N2P2, package_env, read_n2p2_structure, require_shared

WATER = N2P2 / "H2O_RPBE-D3"


def run_python(code: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter (a crash must not take pytest down)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd,
                          env=package_env(OPENBLAS_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def water_pot(tmp_path):
    dst = tmp_path / "pot"
    shutil.copytree(require_shared(WATER / "pot"), dst)
    return dst


def load(path, **kw):
    from pyfragnn import Potential

    return Potential.load(path, **kw)


def water_cluster():
    pos, sym, _ = read_n2p2_structure(require_shared(N2P2 / "H2O_RPBE-D3_cluster12" /
                                                     "input.data"))
    return pos, sym


# --------------------------------------------------------------------------- 1: paths

@pytest.mark.parametrize("name", ["%s%n%s", "pct%d", "a%03d%%x"])
def test_percent_in_potential_path(tmp_path, name):
    """Potential.load, save_n2p2 and save of a directory whose name holds printf
    directives (a user path used as a format crashed with %s/%n, opened pct1/ for pct%d)."""
    d = tmp_path / name
    shutil.copytree(require_shared(WATER / "pot"), d)
    r = run_python(f"""
        import numpy as np
        from pyfragnn import Potential
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from conftest import read_n2p2_structure
        pos, sym, _ = read_n2p2_structure({str(N2P2 / "H2O_RPBE-D3_cluster12" / "input.data")!r})
        ref = Potential.load({str(WATER / "pot")!r}).compute(pos, sym)["energy"]
        pot = Potential.load({str(d)!r})
        assert pot.compute(pos, sym)["energy"] == ref
        out = {str(tmp_path / ("out" + name))!r}
        pot.save_n2p2(out)
        assert Potential.load(out).compute(pos, sym)["energy"] == ref
        pot.save(out + "/x%s.fragnn")
        assert Potential.load(out + "/x%s.fragnn").compute(pos, sym)["energy"] == ref
        print("OK")
        """, tmp_path)
    assert r.returncode == 0 and "OK" in r.stdout, (r.returncode, r.stderr[-2000:])
    assert not (tmp_path / "pct1").exists()


def test_percent_in_path_lammps(tmp_path):
    """pair_style fragnn with a potential directory named %s%n (LAMMPS died with -11)."""
    tl = pytest.importorskip("test_lammps_plugin")
    try:
        import pyfragnn.lammps as pl
        plug = pl.plugin_path()
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f"LAMMPS plugin not available: {exc}")
    if shutil.which("lmp") is None or shutil.which("mpirun") is None:
        pytest.skip("lmp/mpirun not on PATH")
    pot = tmp_path / "p%s%n"
    shutil.copytree(require_shared(N2P2 / "Cu2S_PBE" / "pot"), pot)
    s = tl.System("cu2s", tmp_path)
    script = (s.header() + f"pair_style fragnn {pot} showew no maxew -1\npair_coeff * * S Cu\n"
              "run 0\nprint \"PE $(pe:%.17g)\"\n")
    r = tl.run_lmp(script, tmp_path, 1, str(Path(plug).parent), check=False)
    assert r.returncode == 0, r.stdout[-3000:]
    pe = float(r.stdout.split("PE ")[-1].split()[0])
    pos, sym, lat = read_n2p2_structure(N2P2 / "Cu2S_PBE" / "input.data")
    ref = load(N2P2 / "Cu2S_PBE" / "pot").compute(pos, sym, lat, [True] * 3)["energy"]
    assert pe == pytest.approx(ref, rel=1e-10)


def test_empty_scaling_data_is_a_lammps_error(tmp_path):
    """pair_style fragnn with an empty scaling.data: a LAMMPS error naming the file (it ran
    with scaling off, 710 eV off for the water box)."""
    tl = pytest.importorskip("test_lammps_plugin")
    try:
        import pyfragnn.lammps as pl
        plug = pl.plugin_path()
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f"LAMMPS plugin not available: {exc}")
    if shutil.which("lmp") is None or shutil.which("mpirun") is None:
        pytest.skip("lmp/mpirun not on PATH")
    pot = tmp_path / "pot"
    shutil.copytree(require_shared(N2P2 / "Cu2S_PBE" / "pot"), pot)
    (pot / "scaling.data").write_text("")
    s = tl.System("cu2s", tmp_path)
    script = s.header() + f"pair_style fragnn {pot}\npair_coeff * * S Cu\nrun 0\n"
    r = tl.run_lmp(script, tmp_path, 2, str(Path(plug).parent), check=False, timeout=120)
    assert r.returncode != 0 and "ERROR" in r.stdout, r.stdout[-2000:]
    assert f"{pot}/scaling.data: no data lines" in r.stdout, r.stdout[-2000:]


# --------------------------------------------------------------------------- 3: silently wrong

def test_empty_scaling_data_is_an_error(water_pot):
    (water_pot / "scaling.data").write_text("# nothing here\n\n")
    with pytest.raises(ValueError, match=r"scaling.data: no data lines.*input.nn.*scaling"):
        load(water_pot)


@pytest.mark.parametrize("key,value,match", [
    ("mean_energy", "1e307", r"input.nn line \d+: mean_energy 1e307 is out of range"),
    ("conv_energy", "1e-300", r"input.nn line \d+: conv_energy 1e-300 is out of range"),
    ("conv_length", "1e300", r"input.nn line \d+: conv_length 1e300 is out of range"),
])
def test_out_of_range_settings(water_pot, key, value, match):
    text = (water_pot / "input.nn").read_text().splitlines()
    text = [f"{key} {value}" if ln.split()[:1] == [key] else ln for ln in text]
    (water_pot / "input.nn").write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match=match):
        load(water_pot)


def test_atom_energy_and_units_out_of_range(water_pot):
    nn = water_pot / "input.nn"
    base = nn.read_text()
    nn.write_text(base + "atom_energy H 1e200\n")
    with pytest.raises(ValueError, match=r"input.nn line \d+: atom_energy 1e200 is out of range"):
        load(water_pot)
    nn.write_text("# pyfragnn units length_unit 1e-300 energy_unit 1\n" + base)
    with pytest.raises(ValueError, match=r"input.nn line 1: length_unit 1e-300 is out of range"):
        load(water_pot)
    nn.write_text(base)
    with pytest.raises(ValueError, match=r"length_unit 1e-300 is out of range"):
        load(water_pot, length_unit=1e-300)
    with pytest.raises(ValueError, match=r"energy_unit inf is out of range"):
        load(water_pot, energy_unit=float("inf"))


def test_overflowing_weights_are_an_error_not_inf(water_pot):
    """Output biases of 1.7e308 give finite atomic energies whose sum overflows: an error,
    not E = inf."""
    for f in ("weights.001.data", "weights.008.data"):
        w = water_pot / f
        lines = w.read_text().splitlines()
        lines[-1] = " ".join(["1.7e308"] + lines[-1].split()[1:])  # the output bias
        w.write_text("\n".join(lines) + "\n")
    pos, sym, lat = read_n2p2_structure(WATER / "input.data")
    with pytest.raises(ValueError, match="total energy is not finite"):
        load(water_pot).compute(pos, sym, lat, [True] * 3)


# --------------------------------------------------------------------------- 6: memory

def _peak_rss_run(code: str, tmp_path: Path) -> tuple[float, float]:
    """Peak memory growth (MB) and time (s) of code in a fresh interpreter."""
    head = ("import resource, time\nimport numpy as np\n"
            "from pyfragnn._core import neighbor_list\n"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "t0 = time.perf_counter()\n")
    tail = ("\ndt = time.perf_counter() - t0\n"
            "grow = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base\n"
            "print('RESULT', grow / 1024.0, dt)\n")
    r = run_python(head + code + tail, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    mb, dt = (float(x) for x in r.stdout.split("RESULT")[1].split())
    return mb, dt


@pytest.mark.parametrize("case", ["box1500", "box3000", "far_atom"])
def test_neighbour_search_memory_bounded_by_atoms(tmp_path, case):
    """6 atoms in a 1500 Å box took 1.7 GB; 3000 Å or one atom 1e5 Å away: bad_alloc."""
    code = {
        "box1500": "pos = np.random.default_rng(0).uniform(0, 1500, (6, 3))\n"
                   "off, idx, d = neighbor_list(pos, np.eye(3) * 1500.0, [True] * 3, 6.0)",
        "box3000": "pos = np.random.default_rng(0).uniform(0, 3000, (6, 3))\n"
                   "off, idx, d = neighbor_list(pos, np.eye(3) * 3000.0, [True] * 3, 6.0)",
        "far_atom": "pos = np.random.default_rng(0).uniform(0, 10, (50, 3))\n"
                    "pos[7] = [1e5, -1e5, 1e5]\n"
                    "off, idx, d = neighbor_list(pos, np.zeros((3, 3)), [False] * 3, 6.0)\n"
                    "assert off[8] == off[7]",
    }[case]
    mb, dt = _peak_rss_run(code, tmp_path)
    assert mb < 50 and dt < 1.0, (mb, dt)


def test_neighbour_list_unchanged_by_coarse_bins():
    """A sparse structure (coarse bins) has exactly the pairs of brute force."""
    from pyfragnn._core import neighbor_list

    rng = np.random.default_rng(3)
    pos = np.concatenate([rng.uniform(0, 8, (40, 3)), rng.uniform(900, 905, (10, 3))])
    cell = np.diag([1000.0, 1000.0, 1000.0])
    off, idx, d = neighbor_list(pos, cell, [True] * 3, 5.0)
    got = sorted((i, int(j), round(float(np.linalg.norm(v)), 9)) for i in range(len(pos))
                 for j, v in zip(idx[off[i]:off[i + 1]], d[off[i]:off[i + 1]]))
    want = []
    for i in range(len(pos)):
        for j in range(len(pos)):
            v = pos[j] - pos[i]
            v -= 1000.0 * np.round(v / 1000.0)
            r = float(np.linalg.norm(v))
            if i != j and r < 5.0:
                want.append((i, j, round(r, 9)))
    assert got == sorted(want)


def test_huge_network_checked_before_allocating(water_pot, tmp_path):
    """global_nodes_short 20000 20000: the weight count is checked before any allocation."""
    nn = water_pot / "input.nn"
    nn.write_text("\n".join("global_nodes_short 20000 20000" if ln.startswith("global_nodes_short")
                            else ln for ln in nn.read_text().splitlines()) + "\n")
    r = run_python(f"""
        import resource
        from pyfragnn import Potential
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            Potential.load({str(water_pot)!r})
        except ValueError as exc:
            print("ERR", exc)
        print("GROW", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
        """, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert re_search(r"ERR .*input.nn line \d+: the network of element H would have "
                     r"\d+ weights and biases, more than the limit", r.stdout), r.stdout
    assert float(r.stdout.split("GROW")[1]) < 100


def re_search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None


# --------------------------------------------------------------------------- 7: messages

def test_non_utf8_potential_files_name_file_and_line(water_pot):
    nn = water_pot / "input.nn"
    data = nn.read_bytes().splitlines(keepends=True)
    data[5] = b"# caf\xe9 \xff\n"
    nn.write_bytes(b"".join(data))
    with pytest.raises(ValueError, match=r"input.nn line 6: not a text file \(byte 0xE9"):
        load(water_pot)
    shutil.copy(WATER / "pot" / "input.nn", nn)
    w = water_pot / "weights.008.data"
    lines = w.read_bytes().splitlines(keepends=True)
    k = next(i for i, ln in enumerate(lines) if not ln.startswith(b"#"))
    lines[k] = b"0.1\xff2 a 1 0 1 1 1\n"
    w.write_bytes(b"".join(lines))
    with pytest.raises(ValueError, match=rf"weights.008.data line {k + 1}: cannot parse "
                                         r"'0.1\\xFF2'"):
        load(water_pot)
    # overlong and surrogate forms are not UTF-8 either (as Python decodes)
    for junk in (b"\xe0\x95\xa9", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"):
        lines[k] = b"0.1" + junk + b" a 1 0 1 1 1\n"
        w.write_bytes(b"".join(lines))
        with pytest.raises(ValueError, match=rf"weights.008.data line {k + 1}: cannot parse"):
            load(water_pot)


def test_gmin_greater_than_gmax_message(water_pot):
    sc = water_pot / "scaling.data"
    lines = sc.read_text().splitlines()
    k = next(i for i, ln in enumerate(lines) if ln.strip() and not ln.startswith("#"))
    t = lines[k].split()
    t[2], t[3] = t[3], t[2]
    lines[k] = " ".join(t)
    sc.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"scaling.data: element H symmetry function 1: "
                                         r"Gmin .* > Gmax"):
        load(water_pot)


def test_nan_cell_message():
    from pyfragnn import Potential  # noqa: F401
    from pyfragnn._core import neighbor_list

    cell = np.eye(3) * 10.0
    cell[1, 1] = np.nan
    with pytest.raises(ValueError, match="periodic axis 1 has a non-finite cell vector"):
        neighbor_list(np.zeros((1, 3)), cell, [True] * 3, 5.0)


def test_extxyz_bad_frame_index_and_line(tmp_path):
    from ase.build import molecule
    from ase.io import write

    from pyfragnn.dataset import DatasetError, read_extxyz

    frames = []
    for k in range(7):
        at = molecule("H2O")
        at.positions += 0.01 * k
        at.info["energy"] = -1.0 * k
        frames.append(at)
    path = tmp_path / "d.extxyz"
    write(path, frames, format="extxyz")
    lines = path.read_text().splitlines(keepends=True)
    # frame 5 (1-based) is lines 21-25 (count, comment, 3 atoms): drop its last atom line
    assert lines[20].strip() == "3"
    del lines[24]
    path.write_text("".join(lines))
    with pytest.raises(DatasetError, match=r"d.extxyz: record 5 \(line 21\)"):
        read_extxyz(str(path))


def test_extxyz_and_input_data_not_utf8(tmp_path):
    from pyfragnn.dataset import DatasetError, read_dataset

    p = tmp_path / "x.extxyz"
    p.write_bytes(b"1\nProperties=species:S:1:pos:R:3 energy=1.0\nH 0 0 0\n1\nc\xffomment\nH 0 0 0\n")
    with pytest.raises(DatasetError, match=r"x.extxyz: line 5: not a text file \(byte 0xFF"):
        read_dataset(str(p))
    q = tmp_path / "input.data"
    q.write_bytes(b"begin\ncomment \xfe\n")
    with pytest.raises(DatasetError, match=r"input.data: line 2: not a text file"):
        read_dataset(str(q))


def test_unknown_element_in_input_data(tmp_path):
    from pyfragnn.dataset import DatasetError, read_dataset

    q = tmp_path / "input.data"
    q.write_text("begin\natom 0 0 0 H 0 0 0 0 0\natom 1 0 0 Qx 0 0 0 0 0\nenergy 1\nend\n")
    with pytest.raises(DatasetError, match=r"input.data: record 1 \(line 3\): unknown element "
                                           r"'Qx'"):
        read_dataset(str(q))


# --------------------------------------------------------------------------- 8: n2p2 INF rows

def _absent_element_potential(tmp_path: Path, marker: str) -> Path:
    """The water potential with a third element (N) whose scaling rows are n2p2's marks
    of an element absent from the data."""
    src = load(WATER / "pot")
    d = tmp_path / f"pot_{marker}"
    d.mkdir()
    lines = (WATER / "pot" / "input.nn").read_text().splitlines()
    edit = {"number_of_elements": "number_of_elements 3", "elements": "elements H O N"}
    nn = "\n".join(edit.get(ln.split()[0], ln) if ln.split() else ln for ln in lines)
    nn += "\nsymfunction_short N 2 H 0.001 0.0 12.00\nsymfunction_short N 2 O 0.001 0.0 12.00\n"
    (d / "input.nn").write_text(nn)
    rows = [ln for ln in (WATER / "pot" / "scaling.data").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    n_h = len(src.core.symmetry_function_lines(0))
    rows_h = rows[:n_h]
    rows_o = [" ".join(["3"] + ln.split()[1:]) for ln in rows[n_h:]]  # O: element 2 -> 3
    if marker == "inf":
        vals = "INF -INF NAN NAN"
    else:
        vals = "1.797693134862316E+308 -1.797693134862316E+308 0.0 0.0"
    rows_n = [f"2 {k + 1} {vals}" for k in range(2)]
    (d / "scaling.data").write_text("\n".join(rows_h + rows_n + rows_o) + "\n")
    for f in ("weights.001.data", "weights.008.data"):
        shutil.copy(WATER / "pot" / f, d / f)
    n_w = (2 + 1) * 25 + (25 + 1) * 25 + (25 + 1) * 1  # 2-25-25-1
    (d / "weights.007.data").write_text("\n".join(["0.01"] * n_w) + "\n")
    return d


@pytest.mark.parametrize("marker", ["inf", "dblmax"])
def test_n2p2_scaling_rows_of_absent_element(tmp_path, marker):
    """n2p2's nnp-scaling writes INF / 1.797E+308 rows for an element absent from its data:
    such a potential loads and gives the two-element results; an atom of that element is an
    error naming the file and element."""
    d = _absent_element_potential(tmp_path, marker)
    pot = load(d)
    pos, sym = water_cluster()
    ref = load(WATER / "pot").compute(pos, sym)
    res = pot.compute(pos, sym)
    assert res["energy"] == ref["energy"]
    np.testing.assert_array_equal(res["forces"], ref["forces"])
    with pytest.raises(ValueError, match=r"atom 0 is N, but .*scaling.data has no scaling data "
                                         r"for N"):
        pot.compute(pos, ["N"] + sym[1:])
    # it round-trips through both formats
    pot.save(tmp_path / "x.fragnn")
    assert load(tmp_path / "x.fragnn").compute(pos, sym)["energy"] == ref["energy"]
    pot.save_n2p2(tmp_path / "again")
    assert load(tmp_path / "again").compute(pos, sym)["energy"] == ref["energy"]


def test_n2p2_partly_infinite_scaling_is_an_error(water_pot):
    sc = water_pot / "scaling.data"
    lines = sc.read_text().splitlines()
    k = next(i for i, ln in enumerate(lines) if ln.strip() and not ln.startswith("#"))
    t = lines[k + 1].split()
    t[2] = "INF"
    lines[k + 1] = " ".join(t)
    sc.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"scaling.data line {k + 2}: element H: INF"):
        load(water_pot)


# --------------------------------------------------------------------------- 2, 4: checkpoints

def test_state_file_round_trip_is_exact(tmp_path):
    from pyfragnn.training.checkpoint import load_state, save_state

    rng = np.random.default_rng(5)
    gen = np.random.default_rng(9)
    st = {"w": rng.normal(size=17), "opt": {"q": 0.1 + 1e-17, "n": 3, "P": [rng.normal(size=(4, 4))]},
          "rng": gen.bit_generator.state, "history": [{"epoch": 0, "rmse": float("nan")}],
          "best": None, "flag": True, "name": "x"}
    save_state(str(tmp_path / "s.npz"), st)
    back = load_state(str(tmp_path / "s.npz"))
    np.testing.assert_array_equal(back["w"], st["w"])
    np.testing.assert_array_equal(back["opt"]["P"][0], st["opt"]["P"][0])
    assert back["opt"]["q"] == st["opt"]["q"] and back["opt"]["n"] == 3
    assert back["rng"] == st["rng"] and back["best"] is None and back["flag"] is True
    assert np.isnan(back["history"][0]["rmse"])
    g2 = np.random.default_rng(0)
    g2.bit_generator.state = back["rng"]
    assert g2.random() == gen.random()


def _tamper_array(path: Path) -> None:
    """Change one weight and rewrite a well-formed .npz (zip CRCs fine), keeping the old
    checksum: only the sha256 can tell."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k].copy() for k in z.files}
    arrays["a0"][3] += 1e77
    np.savez(path, **arrays)


@pytest.mark.parametrize("damage", ["empty", "truncated", "flipped_byte", "tampered",
                                    "foreign_npz", "pickle"])
def test_damaged_state_file_names_the_file(tmp_path, damage):
    from pyfragnn.training.checkpoint import CheckpointError, load_state, save_state

    path = tmp_path / "checkpoint.npz"
    save_state(str(path), {"w": np.arange(40.0), "opt": {"q": 1.0}})
    raw = path.read_bytes()
    marker = tmp_path / "pwned"
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flipped_byte":
        k = raw.index(np.arange(40.0)[5:6].tobytes())
        path.write_bytes(raw[:k] + bytes([raw[k] ^ 0x40]) + raw[k + 1:])
    elif damage == "tampered":
        _tamper_array(path)
    elif damage == "foreign_npz":
        np.savez(path, x=np.zeros(3))
    else:
        import pickle

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        path.write_bytes(pickle.dumps({"opt": Evil()}, protocol=4))
    match = {"empty": "empty", "truncated": "truncated or corrupt",
             "flipped_byte": "truncated or corrupt|checksum mismatch",
             "tampered": "checksum mismatch", "foreign_npz": "not a pyfragnn training state",
             "pickle": "is a pickle .* not loaded"}[damage]
    with pytest.raises(CheckpointError, match=f"{path}.*({match})|({match}).*{path}"):
        load_state(str(path))
    assert not marker.exists()


def _training():
    return pytest.importorskip("test_training")


def _damage(path: Path, how: str) -> None:
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        _tamper_array(path)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A finished 1-epoch training run (its checkpoint.npz is damaged by the tests)."""
    tt = _training()
    tmp = tmp_path_factory.mktemp("ckpt")
    d = tt._write_run(tmp, tt.emt_cells(24), "run", epochs=1)
    r = tt._cli(d)
    assert r.returncode == 0, r.stderr
    assert (d / "out" / "checkpoint.npz").exists()
    return d


@pytest.mark.parametrize("how", ["empty", "truncated", "tampered"])
def test_damaged_checkpoint_serial(first_run, tmp_path, how):
    """Resume from an empty/truncated/altered checkpoint: exit 2, the message names it."""
    tt = _training()
    d = tmp_path / "run"
    shutil.copytree(first_run, d)
    ckpt = d / "out" / "checkpoint.npz"
    _damage(ckpt, how)
    r = tt._cli(d, "--epochs", "2")
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert str(ckpt) in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not found")
@pytest.mark.parametrize("how", ["empty", "truncated"])
def test_damaged_checkpoint_mpi_every_rank_stops(first_run, tmp_path, how):
    """mpirun -np 2 with a damaged checkpoint: every rank stops (no rank left in a
    broadcast), exit 2, the message names the file."""
    tt = _training()
    d = tmp_path / "run"
    shutil.copytree(first_run, d)
    ckpt = d / "out" / "checkpoint.npz"
    _damage(ckpt, how)
    try:
        r = tt._cli(d, "--epochs", "2", mpi=2)
    except subprocess.TimeoutExpired:  # pragma: no cover - the bug this guards against
        pytest.fail("mpirun -np 2 hung on a damaged checkpoint")
    assert r.returncode == 2, (r.returncode, r.stdout[-1000:], r.stderr[-2000:])
    assert str(ckpt) in r.stderr, r.stderr[-2000:]


def test_old_pickle_checkpoint_refused(first_run, tmp_path):
    tt = _training()
    d = tmp_path / "run"
    shutil.copytree(first_run, d)
    (d / "out" / "checkpoint.npz").unlink()
    (d / "out" / "checkpoint.pkl").write_bytes(b"\x80\x04K\x01.")
    r = tt._cli(d, "--epochs", "2")
    assert r.returncode == 2 and "checkpoint.pkl is a pickle" in r.stderr, r.stderr[-2000:]
    cfg = json.loads((d / "train.json").read_text())
    cfg["training"]["kalman"] = {"init_state": str(d / "out" / "checkpoint.pkl")}
    cfg["training"]["resume"] = False
    (d / "train.json").write_text(json.dumps(cfg))
    r = tt._cli(d, "--epochs", "2")
    assert r.returncode == 2 and "init_state" in r.stderr and "pickle" in r.stderr, r.stderr


def test_no_pickle_loading_in_package():
    """Acceptance: nothing in pyfragnn/ loads a pickle."""
    import pyfragnn

    root = Path(pyfragnn.__file__).parent
    for f in root.rglob("*.py"):
        text = f.read_text()
        for bad in ("pickle.load", "import pickle", "allow_pickle=True", "from pickle"):
            assert bad not in text, f"{f}: {bad}"


# --------------------------------------------------------------------------- 5: config types

@pytest.mark.parametrize("section,key,value,match", [
    ("training", "resume", "false", "'training.resume' must be true or false"),
    ("data", "use_forces", "false", "'data.use_forces' must be true or false"),
    ("output", "plots", "no", "'output.plots' must be true or false"),
    ("data", "test_fraction", float("nan"), "'data.test_fraction' must be a finite number"),
    ("training", "epochs", float("inf"), "'training.epochs' must be a finite number"),
    ("training.kalman", "eta", "0.02", "'training.kalman.eta' must be a number"),
    ("model", "angular", {"eta": "0.02"}, "'model.angular.eta' must be a list"),
    ("model", "angular", {"eta": [0.02, "x"]}, "'model.angular.eta' must list finite numbers"),
    ("model", "radial", {"r_min": float("nan")}, "'model.radial.r_min' must be a finite"),
    ("model", "scaling", 3, "'model.scaling' must be a string"),
    ("model", "hidden", 10, "'model.hidden' must be a list"),
    ("model", "elements", ["H", 1], "'model.elements' must list element symbols"),
    ("data", "files", 5, "'data.files' must list at least one data file"),
])
def test_config_types_checked(section, key, value, match):
    from pyfragnn.training.config import ConfigError, normalise_config

    cfg = {"data": {"files": ["a.xyz"]}}
    top, _, sub = section.partition(".")
    table = cfg.setdefault(top, {})
    if sub:
        table = table.setdefault(sub, {})
    table[key] = value
    with pytest.raises(ConfigError, match=match):
        normalise_config(cfg)


def test_config_file_nan_and_bytes(tmp_path):
    from pyfragnn.training.config import ConfigError, load_config

    p = tmp_path / "c.toml"
    p.write_text('[data]\nfiles = ["d.extxyz"]\ntest_fraction = nan\n')
    with pytest.raises(ConfigError, match="'data.test_fraction' must be a finite number"):
        load_config(str(p))
    p.write_bytes(b'[data]\nfiles = ["d\xff.extxyz"]\n')
    with pytest.raises(ConfigError, match=f"{p}: cannot parse"):
        load_config(str(p))


# --------------------------------------------------------------------------- libraries

def test_blas_threads_sets_and_restores_every_blas():
    pytest.importorskip("scipy.linalg")  # its OpenBLAS too
    from threadpoolctl import threadpool_info

    from pyfragnn.training.optim import blas_threads

    def counts():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = counts()
    assert before
    with blas_threads(1):
        assert set(counts()) == {1}
    assert counts() == before
    with blas_threads(None):
        assert counts() == before


def test_import_maps_no_mpi_library(tmp_path):
    """import pyfragnn (and its Potential, FragNN, dataset and trainer modules) loads no
    libmpi: it would clash with another MPI's mpi4py in the same process."""
    r = run_python("""
        import pyfragnn
        from pyfragnn import Potential, FragNN
        import pyfragnn.dataset, pyfragnn.training.trainer, pyfragnn.training.cli
        maps = [ln.split()[-1] for ln in open("/proc/self/maps") if "libmpi" in ln]
        print("MAPPED", sorted(set(maps)))
        """, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "MAPPED []" in r.stdout, r.stdout


def test_benchmark_uses_installed_package_over_unbuilt_checkout(tmp_path):
    """`python benchmarks/bench_training.py` after `pip install .` used the unbuilt source
    tree ("cannot import name '_core'"): a checkout without a compiled core stays off
    sys.path."""
    src = tmp_path / "checkout"
    (src / "benchmarks").mkdir(parents=True)
    (src / "pyfragnn").mkdir()
    (src / "pyfragnn" / "__init__.py").write_text("raise SystemExit('UNBUILT TREE IMPORTED')\n")
    root = Path(__file__).resolve().parents[1]
    shutil.copy(root / "benchmarks" / "bench_training.py", src / "benchmarks")
    r = subprocess.run([sys.executable, str(src / "benchmarks" / "bench_training.py"),
                        "--bench-dir", str(tmp_path / "none"), "--limit", "1",
                        "--out", str(tmp_path / "out")],
                       cwd=tmp_path, env=package_env(), capture_output=True, text=True,
                       timeout=120)
    assert "UNBUILT TREE IMPORTED" not in r.stderr, r.stderr[-2000:]
    assert "_core" not in r.stderr, r.stderr[-2000:]
    assert str(tmp_path / "none") in r.stderr + r.stdout  # got as far as reading the data


@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun not found")
def test_mpi_error_on_one_rank_ends_the_run(first_run, tmp_path):
    """Any unexpected error on one rank (here: rank 0 cannot write its checkpoint, whose
    temporary path is a directory) ends all ranks instead of leaving them in a collective."""
    tt = _training()
    d = tmp_path / "run"
    shutil.copytree(first_run, d)
    (d / "out" / "checkpoint.npz").unlink()
    (d / "out" / "checkpoint.npz.tmp").mkdir()
    try:
        r = tt._cli(d, "--epochs", "1", mpi=2)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pytest.fail("mpirun -np 2 hung after an error on rank 0")
    assert r.returncode != 0, r.stdout[-1000:]
    assert "checkpoint.npz.tmp" in r.stderr, r.stderr[-2000:]
