"""Worker of test_fuzz.py: mutate one input file per case and read (and evaluate) it.

    python fuzz_worker.py TARGET FIRST_SEED COUNT WORKDIR

For each case it prints ``START <seed>`` before and ``DONE <seed> <outcome>`` after
(flushed), so that the parent can attribute a crash or a hang to the case that started last.
Outcomes: ``ok`` (read, results finite), ``error <Type>: <message>`` (a clear exception),
``nonfinite <what>`` (accepted, but a non-finite number came out) and ``bad <Type>: <message>``
(an exception of a type that names no file or value, e.g. KeyError or UnicodeDecodeError).
A case is reproduced with ``python fuzz_worker.py TARGET SEED 1 DIR`` (the mutated file stays
in DIR).
"""
from __future__ import annotations

import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
N2P2 = HERE / "data" / "n2p2"
WATER = N2P2 / "H2O_RPBE-D3" / "pot"
CLUSTER = N2P2 / "H2O_RPBE-D3_cluster12" / "input.data"

#: Files that are mutated, per target (the potential is the n2p2 water potential).
POTENTIAL_FILES = {"input.nn": "input.nn", "scaling.data": "scaling.data",
                   "weights.001.data": "weights.001.data", "weights.008.data": "weights.008.data"}
TARGETS = list(POTENTIAL_FILES) + ["fragnn", "input.data", "extxyz"]

SPECIAL = [b"nan", b"NaN", b"inf", b"-inf", b"INF", b"1e308", b"-1e308", b"1.797E+308", b"0",
           b"-0", b"1e-320", b"99999999999999999999", b"-1", b"%s%n", b"\xff\xfe", b"",
           b"1e400", b"0x10", b"1,5", b"12.0.0", b"2147483648", b"-2147483649"]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three random edits: byte flips, number swaps, line deletion/duplication/swap,
    truncation, insertion of random bytes."""
    for _ in range(rng.randint(1, 3)):
        lines = data.split(b"\n")
        kind = rng.randrange(7)
        if kind == 0 and data:  # flip a byte
            k = rng.randrange(len(data))
            data = data[:k] + bytes([data[k] ^ (1 << rng.randrange(8))]) + data[k + 1:]
        elif kind == 1:  # replace a token by a special value
            i = rng.randrange(len(lines))
            toks = lines[i].split()
            if toks:
                toks[rng.randrange(len(toks))] = rng.choice(SPECIAL)
                lines[i] = b" ".join(toks)
            data = b"\n".join(lines)
        elif kind == 2:  # delete a line
            del lines[rng.randrange(len(lines))]
            data = b"\n".join(lines)
        elif kind == 3:  # duplicate a line
            i = rng.randrange(len(lines))
            lines.insert(i, lines[i])
            data = b"\n".join(lines)
        elif kind == 4:  # swap two lines
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            data = b"\n".join(lines)
        elif kind == 5:  # truncate
            data = data[:rng.randrange(len(data) + 1)]
        else:  # insert random bytes
            k = rng.randrange(len(data) + 1)
            data = data[:k] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))) + data[k:]
    return data


def extxyz_text() -> bytes:
    from io import StringIO

    from ase.build import molecule
    from ase.io import write

    frames = []
    for k, name in enumerate(["H2O", "CH4", "NH3"]):
        at = molecule(name)
        at.center(vacuum=3.0)
        at.pbc = k == 1
        at.info["energy"] = -1.0 - k
        at.arrays["forces"] = np.full((len(at), 3), 0.1 * k)
        frames.append(at)
    buf = StringIO()
    write(buf, frames, format="extxyz")
    return buf.getvalue().encode()


def prepare(target: str, seed: int, workdir: Path) -> Path:
    """Write the mutated input of one case; returns the path to read."""
    rng = random.Random(f"{target}:{seed}")
    case = workdir / f"{target}-{seed}"
    if case.exists():
        shutil.rmtree(case)
    case.mkdir(parents=True)
    if target in POTENTIAL_FILES:
        shutil.copytree(WATER, case / "pot")
        f = case / "pot" / POTENTIAL_FILES[target]
        f.write_bytes(mutate(f.read_bytes(), rng))
        return case / "pot"
    if target == "fragnn":
        from pyfragnn import Potential

        native = workdir / "water.fragnn"
        if not native.exists():
            Potential.load(WATER).save(native)
        f = case / "water.fragnn"
        f.write_bytes(mutate(native.read_bytes(), rng))
        return f
    if target == "input.data":
        f = case / "input.data"
        f.write_bytes(mutate(CLUSTER.read_bytes(), rng))
        return f
    f = case / "data.extxyz"
    f.write_bytes(mutate(extxyz_text(), rng))
    return f


def evaluate(target: str, path: Path) -> str:
    """Read the case; '' when everything that came out is finite, else what is not."""
    if target in POTENTIAL_FILES or target == "fragnn":
        from pyfragnn import Potential

        pot = Potential.load(path)
        pos, sym = cluster()
        res = pot.compute(pos, sym)
        bad = [k for k in ("energy", "energies", "forces", "virial")
               if not np.all(np.isfinite(res[k]))]
        return ", ".join(bad)
    from pyfragnn.dataset import read_dataset, validate

    structs = read_dataset(str(path))
    validate(structs)
    for s in structs:
        for what in ("positions", "cell", "energy", "forces"):
            v = getattr(s, what)
            if v is not None and not np.all(np.isfinite(v)):
                return f"{s.source} {what}"
    return ""


_CLUSTER = None


def cluster():
    global _CLUSTER
    if _CLUSTER is None:
        pos, sym = [], []
        for line in CLUSTER.read_text().splitlines():
            t = line.split()
            if t and t[0] == "atom":
                pos.append([float(x) for x in t[1:4]])
                sym.append(t[4])
        _CLUSTER = (np.array(pos), sym)
    return _CLUSTER


def main() -> int:
    target, first, count, workdir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    if target not in TARGETS:
        raise SystemExit(f"unknown target {target!r} (known: {TARGETS})")
    for seed in range(first, first + count):
        path = prepare(target, seed, workdir)
        print(f"START {seed}", flush=True)
        if os.environ.get("FUZZ_SELFTEST") == f"crash:{seed}":  # test of the harness
            os.abort()
        if os.environ.get("FUZZ_SELFTEST") == f"hang:{seed}":
            import time
            time.sleep(3600)
        try:
            bad = evaluate(target, path)
            outcome = f"nonfinite {bad}" if bad else "ok"
        except UnicodeDecodeError as exc:
            outcome = f"bad {type(exc).__name__}: {exc}"
        except (ValueError, RuntimeError, OSError, MemoryError) as exc:
            outcome = f"error {type(exc).__name__}: {exc}".replace("\n", " | ")
        except Exception as exc:  # noqa: BLE001 - reported as a failure by the parent
            outcome = f"bad {type(exc).__name__}: {exc}".replace("\n", " | ")
        print(f"DONE {seed} {outcome}", flush=True)
        if os.environ.get("FUZZ_KEEP") != "1":
            shutil.rmtree(path.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
