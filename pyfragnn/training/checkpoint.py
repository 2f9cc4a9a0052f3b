"""Training state files: data only (``.npz`` read with ``allow_pickle=False``), checksummed.

A state file is one NumPy ``.npz`` archive holding

- ``meta``: UTF-8 JSON (as uint8) ``{"format": FORMAT, "version": VERSION, "state": tree}``,
  where ``tree`` is the saved state with every array replaced by ``{"__array__": name}``;
- ``a0``, ``a1``, ...: those arrays (numeric dtypes only);
- ``sha256``: the hex digest (as uint8) of the meta bytes and of every array's name, dtype,
  shape and bytes, checked on load.

Floats in the JSON tree are written with ``repr`` precision, so a state round-trips bit for bit
(resumed runs are identical to uninterrupted ones). Nothing in the file can run code: a
truncated, altered or foreign file is a :class:`CheckpointError` naming the file.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any, Dict, List, Tuple

import numpy as np

from .config import ConfigError

__all__ = ["CheckpointError", "save_state", "load_state", "CHECKPOINT_NAME"]

FORMAT = "pyfragnn-training-state"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.npz"
_ARRAY_KEY = "__array__"
_PICKLE_MAGIC = (b"\x80",)  # protocol 2+ pickles start with PROTO
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(ConfigError):
    """A training state file that cannot be used (names the file)."""


def _flatten(obj: Any, arrays: List[np.ndarray], where: str) -> Any:
    """JSON-able copy of obj with arrays moved to ``arrays`` (referenced by name)."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"{where}: cannot store an array of dtype {obj.dtype}")
        arrays.append(np.ascontiguousarray(obj))
        return {_ARRAY_KEY: f"a{len(arrays) - 1}"}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str) or k == _ARRAY_KEY:
                raise TypeError(f"{where}: key {k!r} cannot be stored")
            out[k] = _flatten(v, arrays, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"{where}: cannot store a {type(obj).__name__}")


def _unflatten(obj: Any, arrays: Dict[str, np.ndarray]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_ARRAY_KEY}:
            return arrays[obj[_ARRAY_KEY]]
        return {k: _unflatten(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, arrays) for v in obj]
    return obj


def _digest(meta: bytes, arrays: List[Tuple[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    h.update(meta)
    for name, a in arrays:
        h.update(f"\n{name} {a.dtype.str} {a.shape}\n".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def save_state(path: str, state: Dict[str, Any]) -> None:
    """Write ``state`` (nested dicts/lists of numbers, strings, None and numeric arrays) to
    ``path`` atomically (temporary file, fsync, rename)."""
    arrays: List[np.ndarray] = []
    tree = _flatten(state, arrays, "state")
    meta = json.dumps({"format": FORMAT, "version": VERSION, "state": tree},
                      allow_nan=True).encode()
    named = [(f"a{i}", a) for i, a in enumerate(arrays)]
    digest = _digest(meta, named)
    buf = io.BytesIO()
    np.savez(buf, meta=np.frombuffer(meta, np.uint8),
             sha256=np.frombuffer(digest.encode(), np.uint8), **dict(named))
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(buf.getbuffer())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _check_magic(path: str) -> None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if head.startswith(_PICKLE_MAGIC):
        raise CheckpointError(
            f"{path} is a pickle (a checkpoint of an older pyfragnn); it is not loaded, since "
            f"a pickle can run code. Delete it and train again (or resume = false)")
    if head != _ZIP_MAGIC:
        what = "empty" if not head else "not a pyfragnn training state (.npz)"
        raise CheckpointError(f"{path}: {what}")


def load_state(path: str) -> Dict[str, Any]:
    """Read a file written by :func:`save_state`; verify its format and checksum.

    Raises CheckpointError naming ``path`` for a missing, empty, truncated, altered or
    foreign file (never unpickles anything)."""
    _check_magic(path)
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            files = set(z.files)
            if not {"meta", "sha256"} <= files:
                raise CheckpointError(f"{path}: not a pyfragnn training state "
                                      "(no meta/sha256 entries)")
            meta = z["meta"].tobytes()
            stored = z["sha256"].tobytes().decode("ascii", "replace")
            named = sorted(((k, z[k]) for k in files - {"meta", "sha256"}),
                           key=lambda kv: int(kv[0][1:]) if kv[0][1:].isdigit() else -1)
    except CheckpointError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError, EOFError, zlib.error, ...
        raise CheckpointError(f"{path}: truncated or corrupt training state "
                              f"({type(exc).__name__}: {exc})") from exc
    if _digest(meta, named) != stored:
        raise CheckpointError(f"{path}: checksum mismatch (the file was altered or damaged)")
    try:
        head = json.loads(meta.decode())
        ok = isinstance(head, dict) and head.get("format") == FORMAT
    except ValueError:
        ok = False
    if not ok:
        raise CheckpointError(f"{path}: not a pyfragnn training state")
    if head.get("version") != VERSION:
        raise CheckpointError(f"{path}: training state version {head.get('version')!r} "
                              f"(this pyfragnn reads version {VERSION})")
    try:
        return _unflatten(head["state"], dict(named))
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: inconsistent training state ({exc})") from exc
