"""Training data sets: structures with reference energies, forces, labels and masks.

Readers: extended XYZ (``.xyz``/``.extxyz``), ASE databases (``.db``/``.json``) and n2p2
``input.data``; writers: ``input.data`` and extended XYZ. Units are Å and eV throughout.

Per structure: ``energy`` (eV), ``forces`` (eV/Å, [n, 3]), a free-form type ``label``
(e.g. a fragment type ``I1-As``), ``set`` (``"train"``, ``"test"`` or ``None`` = assigned by
the split), ``weight`` (multiplies the structure's loss terms / EKF update probability) and a
per-atom ``force_mask`` (which force components enter the fit, e.g. only non-cap atoms).

Where these live in each format:

- extxyz / ASE db: ``info``/key-value pairs ``label`` (also ``type``/``kind``), ``set``,
  ``weight``; per-atom array ``force_mask`` (bool or 0/1). Energy and forces from the
  attached calculator results or ``info['energy']``/``arrays['forces']``.
- input.data: ``begin set=train|set=test``; the ``comment`` line may carry ``label=...`` and
  ``weight=...`` tokens; a force mask is written as ``force_mask=0110...`` (one digit per atom).

Bad records (missing energy or forces, non-finite numbers, unknown elements, malformed lines)
raise :class:`DatasetError` naming the file and the 1-based record number; nothing is dropped
silently.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence

import numpy as np

__all__ = ["Structure", "DatasetError", "read_dataset", "read_extxyz", "read_ase_db",
           "read_input_data", "write_input_data", "write_extxyz", "validate"]


@functools.lru_cache(maxsize=1)
def _element_symbols() -> frozenset:
    from ase.data import chemical_symbols
    return frozenset(chemical_symbols[1:])


class DatasetError(ValueError):
    """A problem with one or more records of a data file (message names file and record)."""


@dataclass
class Structure:
    symbols: List[str]
    positions: np.ndarray                 # [n, 3] Å
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    energy: Optional[float] = None        # eV
    forces: Optional[np.ndarray] = None   # [n, 3] eV/Å
    label: str = ""
    set: Optional[str] = None             # "train" / "test" / None
    weight: float = 1.0
    force_mask: Optional[np.ndarray] = None  # [n] bool
    source: str = ""                      # "file:record" for messages

    @property
    def n_atoms(self) -> int:
        return len(self.symbols)

    def mask(self) -> np.ndarray:
        if self.force_mask is None:
            return np.ones(self.n_atoms, dtype=bool)
        return np.asarray(self.force_mask, dtype=bool)

    def to_atoms(self):
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator
        at = Atoms(symbols=self.symbols, positions=self.positions, cell=self.cell, pbc=self.pbc)
        if self.label:
            at.info["label"] = self.label
        if self.set:
            at.info["set"] = self.set
        if self.weight != 1.0:
            at.info["weight"] = float(self.weight)
        if self.force_mask is not None:
            at.arrays["force_mask"] = np.asarray(self.force_mask, dtype=bool)
        res = {}
        if self.energy is not None:
            res["energy"] = float(self.energy)
        if self.forces is not None:
            res["forces"] = np.asarray(self.forces, dtype=float)
        if res:
            at.calc = SinglePointCalculator(at, **res)
        return at


# --------------------------------------------------------------------------- readers

def _from_atoms(at, source: str, problems: list) -> Structure:
    energy = None
    forces = None
    calc = at.calc
    if calc is not None:
        r = getattr(calc, "results", {})
        if "energy" in r:
            energy = float(r["energy"])
        elif "free_energy" in r:
            energy = float(r["free_energy"])
        if "forces" in r:
            forces = np.array(r["forces"], dtype=float)
    if energy is None and "energy" in at.info:
        try:
            energy = float(at.info["energy"])
        except (TypeError, ValueError):
            problems.append(f"{source}: energy {at.info['energy']!r} is not a number")
    if forces is None and "forces" in at.arrays:
        forces = np.array(at.arrays["forces"], dtype=float)
    label = ""
    for key in ("label", "type", "kind"):
        if key in at.info:
            label = str(at.info[key])
            break
    st = at.info.get("set")
    if st is not None:
        st = str(st).lower()
        if st not in ("train", "test"):
            problems.append(f"{source}: set={st!r}, expected 'train' or 'test'")
            st = None
    weight = 1.0
    if "weight" in at.info:
        try:
            weight = float(at.info["weight"])
        except (TypeError, ValueError):
            problems.append(f"{source}: weight {at.info['weight']!r} is not a number")
    mask = None
    if "force_mask" in at.arrays:
        mask = np.asarray(at.arrays["force_mask"]).astype(bool).reshape(-1)
    cell = np.array(at.cell.array if hasattr(at.cell, "array") else at.cell, dtype=float)
    return Structure(symbols=list(at.get_chemical_symbols()),
                     positions=np.array(at.positions, dtype=float), cell=cell,
                     pbc=np.array(at.pbc, dtype=bool), energy=energy, forces=forces,
                     label=label, set=st, weight=weight, force_mask=mask, source=source)


def _text_lines(path: str) -> List[str]:
    """Lines of a text file (UTF-8); a byte that is not UTF-8 is a DatasetError naming the
    file and line."""
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        return raw.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DatasetError(f"{path}: line {line}: not a text file (byte "
                           f"0x{raw[exc.start]:02X} is not UTF-8)") from None


def _xyz_frames(path: str, lines: List[str]):
    """Split extxyz text into frames: yields (record, first line number, frame text).
    A frame is an atom-count line, a comment line and that many atom lines."""
    i, rec = 0, 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        rec += 1
        try:
            n = int(lines[i].split()[0])
            if n < 0:
                raise ValueError
        except ValueError:
            raise DatasetError(f"{path}: record {rec} (line {i + 1}): expected the number of "
                               f"atoms, found {lines[i].strip()[:60]!r}") from None
        if i + 2 + n > len(lines):
            raise DatasetError(f"{path}: record {rec} (line {i + 1}): {n} atoms announced, "
                               f"the file ends after {max(len(lines) - i - 2, 0)}")
        yield rec, i + 1, "".join(lines[i:i + 2 + n])
        i += 2 + n


def read_extxyz(path: str) -> List[Structure]:
    """Read an extended XYZ file (all frames); errors name the record (frame) and line."""
    import io

    from ase.io.extxyz import read_xyz
    out: List[Structure] = []
    problems: list = []
    for rec, line, text in _xyz_frames(path, _text_lines(path)):
        try:
            frames = list(read_xyz(io.StringIO(text), index=slice(None)))
        except Exception as exc:  # noqa: BLE001 - any parse failure of this frame
            what = f"unknown element or key {exc}" if isinstance(exc, KeyError) else str(exc)
            raise DatasetError(f"{path}: record {rec} (line {line}): cannot parse: "
                               f"{what}") from exc
        if len(frames) != 1:
            raise DatasetError(f"{path}: record {rec} (line {line}): cannot parse the frame")
        out.append(_from_atoms(frames[0], f"{path}: record {rec}", problems))
    if problems:
        raise DatasetError(_summary(problems))
    return out


def read_ase_db(path: str) -> List[Structure]:
    """Read every row of an ASE database (record number = row id)."""
    import ase.db
    out: List[Structure] = []
    problems: list = []
    with ase.db.connect(path) as db:
        for row in db.select():
            at = row.toatoms(add_additional_information=True)
            kv = dict(row.key_value_pairs)
            at.info.update(kv)
            data = at.info.pop("data", {}) or {}
            if "force_mask" in data:
                at.arrays["force_mask"] = np.asarray(data["force_mask"]).astype(bool)
            out.append(_from_atoms(at, f"{path}: record {row.id}", problems))
    if problems:
        raise DatasetError(_summary(problems))
    return out


def read_input_data(path: str) -> List[Structure]:
    """Read n2p2 ``input.data`` (Å, eV assumed)."""
    out: List[Structure] = []
    problems: list = []
    rec = 0
    cur = None

    def bad(lineno, msg):
        raise DatasetError(f"{path}: record {rec} (line {lineno}): {msg}")

    for lineno, raw in enumerate(_text_lines(path), 1):
        tok = raw.split()
        if not tok:
            continue
        key = tok[0]
        if key == "begin":
            if cur is not None:
                bad(lineno, "'begin' before 'end' of the previous structure")
            rec += 1
            cur = {"lattice": [], "atoms": [], "energy": None, "set": None,
                   "comment": "", "line": lineno}
            for t in tok[1:]:
                if t.startswith("set="):
                    s = t[4:].lower()
                    if s not in ("train", "test"):
                        bad(lineno, f"set={s!r}, expected train or test")
                    cur["set"] = s
            continue
        if cur is None:
            rec_ = rec + 1
            raise DatasetError(f"{path}: record {rec_} (line {lineno}): "
                               f"'{key}' outside begin/end")
        try:
            if key == "comment":
                cur["comment"] = raw.strip()[len("comment"):].strip()
            elif key == "lattice":
                if len(tok) != 4:
                    bad(lineno, "lattice needs 3 numbers")
                cur["lattice"].append([float(v) for v in tok[1:4]])
            elif key == "atom":
                if len(tok) != 10:
                    bad(lineno, f"atom line needs 9 values, got {len(tok) - 1}")
                if tok[4] not in _element_symbols():
                    bad(lineno, f"unknown element '{tok[4]}'")
                cur["atoms"].append((tok[4], [float(v) for v in tok[1:4]],
                                     [float(v) for v in tok[7:10]]))
            elif key == "energy":
                cur["energy"] = float(tok[1])
            elif key == "charge":
                pass
            elif key == "end":
                out.append(_finish_input_data(cur, path, rec, problems))
                cur = None
            else:
                bad(lineno, f"unknown keyword '{key}'")
        except (ValueError, IndexError) as exc:
            if isinstance(exc, DatasetError):
                raise
            bad(lineno, f"cannot parse '{raw.strip()}': {exc}")
    if cur is not None:
        raise DatasetError(f"{path}: record {rec}: missing 'end'")
    if problems:
        raise DatasetError(_summary(problems))
    return out


def _finish_input_data(cur, path, rec, problems) -> Structure:
    source = f"{path}: record {rec}"
    if len(cur["lattice"]) not in (0, 3):
        raise DatasetError(f"{source}: {len(cur['lattice'])} lattice lines (need 0 or 3)")
    if not cur["atoms"]:
        raise DatasetError(f"{source}: no atoms")
    symbols = [a[0] for a in cur["atoms"]]
    pos = np.array([a[1] for a in cur["atoms"]], dtype=float)
    frc = np.array([a[2] for a in cur["atoms"]], dtype=float)
    periodic = len(cur["lattice"]) == 3
    cell = np.array(cur["lattice"], dtype=float) if periodic else np.zeros((3, 3))
    label, weight, mask = "", 1.0, None
    for t in cur["comment"].split():
        if t.startswith("label="):
            label = t[6:]
        elif t.startswith("weight="):
            weight = float(t[7:])
        elif t.startswith("force_mask="):
            bits = t[11:]
            if len(bits) != len(symbols) or set(bits) - {"0", "1"}:
                raise DatasetError(f"{source}: force_mask needs {len(symbols)} digits 0/1")
            mask = np.array([b == "1" for b in bits])
    if cur["energy"] is None:
        problems.append(f"{source}: no energy line")
    return Structure(symbols=symbols, positions=pos, cell=cell,
                     pbc=np.array([periodic] * 3), energy=cur["energy"], forces=frc,
                     label=label, set=cur["set"], weight=weight, force_mask=mask, source=source)


def read_dataset(path: str, fmt: Optional[str] = None) -> List[Structure]:
    """Read a data file; format from ``fmt`` (extxyz, db, n2p2) or the file name."""
    if not os.path.exists(path):
        raise DatasetError(f"{path}: no such file")
    if fmt is None:
        base = os.path.basename(path).lower()
        if base.endswith((".xyz", ".extxyz")):
            fmt = "extxyz"
        elif base.endswith((".db", ".json", ".aselmdb")):
            fmt = "db"
        elif base.endswith(".data") or base.startswith("input"):
            fmt = "n2p2"
        else:
            raise DatasetError(f"{path}: cannot tell the format from the name; set format to "
                               "extxyz, db or n2p2")
    if fmt == "extxyz":
        return read_extxyz(path)
    if fmt == "db":
        return read_ase_db(path)
    if fmt == "n2p2":
        return read_input_data(path)
    raise DatasetError(f"{path}: unknown format {fmt!r} (extxyz, db, n2p2)")


# --------------------------------------------------------------------------- validation

def _summary(problems: Sequence[str], limit: int = 20) -> str:
    msg = "\n".join(problems[:limit])
    if len(problems) > limit:
        msg += f"\n... and {len(problems) - limit} more problems"
    return f"{len(problems)} bad record(s):\n" + msg


def validate(structures: Iterable[Structure], elements: Optional[Sequence[str]] = None,
             need_forces: bool = True) -> None:
    """Raise DatasetError listing every bad record (file and record number)."""
    problems = []
    known = set(elements) if elements is not None else None
    for k, s in enumerate(structures):
        src = s.source or f"structure {k + 1}"
        n = s.n_atoms
        if n == 0:
            problems.append(f"{src}: no atoms")
            continue
        pos = np.asarray(s.positions)
        if pos.shape != (n, 3) or not np.all(np.isfinite(pos)):
            problems.append(f"{src}: positions missing or not finite")
        if not np.all(np.isfinite(np.asarray(s.cell, dtype=float))):
            problems.append(f"{src}: cell {np.asarray(s.cell).tolist()} is not finite")
        if s.energy is None:
            problems.append(f"{src}: missing energy")
        elif not math.isfinite(s.energy):
            problems.append(f"{src}: energy is {s.energy}")
        if need_forces:
            if s.forces is None:
                problems.append(f"{src}: missing forces")
            else:
                f = np.asarray(s.forces)
                if f.shape != (n, 3):
                    problems.append(f"{src}: forces have shape {f.shape}, expected ({n}, 3)")
                elif not np.all(np.isfinite(f)):
                    bad = np.argwhere(~np.isfinite(f))[0]
                    problems.append(f"{src}: non-finite force on atom {bad[0] + 1}")
        if s.force_mask is not None and np.asarray(s.force_mask).shape != (n,):
            problems.append(f"{src}: force_mask has {np.asarray(s.force_mask).size} entries, "
                            f"expected {n}")
        if known is not None:
            unk = sorted(set(s.symbols) - known)
            if unk:
                problems.append(f"{src}: unknown element(s) {', '.join(unk)} "
                                f"(potential has {' '.join(elements)})")
        if not (math.isfinite(s.weight) and s.weight >= 0):
            problems.append(f"{src}: weight {s.weight} must be finite and >= 0")
    if problems:
        raise DatasetError(_summary(problems))


# --------------------------------------------------------------------------- writers

def write_input_data(structures: Iterable[Structure], path: str) -> None:
    """Write n2p2 input.data (label, weight and force mask go into the comment line)."""
    with open(path, "w") as fh:
        for s in structures:
            fh.write("begin" + (f" set={s.set}" if s.set else "") + "\n")
            com = []
            if s.label:
                com.append(f"label={s.label}")
            if s.weight != 1.0:
                com.append(f"weight={s.weight!r}")
            if s.force_mask is not None:
                com.append("force_mask=" + "".join("1" if m else "0" for m in s.mask()))
            if com:
                fh.write("comment " + " ".join(com) + "\n")
            if np.any(s.pbc):
                for v in s.cell:
                    fh.write("lattice {:.17g} {:.17g} {:.17g}\n".format(*v))
            f = s.forces if s.forces is not None else np.zeros((s.n_atoms, 3))
            for sym, p, fv in zip(s.symbols, s.positions, f):
                fh.write("atom {:.17g} {:.17g} {:.17g} {} 0.0 0.0 {:.17g} {:.17g} {:.17g}\n"
                         .format(p[0], p[1], p[2], sym, fv[0], fv[1], fv[2]))
            fh.write("energy {:.17g}\n".format(s.energy if s.energy is not None else 0.0))
            fh.write("charge 0.0\nend\n")


def write_extxyz(structures: Iterable[Structure], path: str) -> None:
    from ase.io import write
    write(path, [s.to_atoms() for s in structures], format="extxyz")
