"""Frames of extended XYZ files: read all of them, write atomically (temporary file and
rename, so a killed process never leaves half a file)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Sequence, Union

from ase import Atoms

__all__ = ["read_frames", "write_frames"]


def read_frames(path: Union[str, Path]) -> List[Atoms]:
    """All frames of an extxyz file ([] for an empty or missing file)."""
    from ase.io import read

    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return []
    return list(read(str(path), ":"))


def write_frames(path: Union[str, Path], frames: Sequence[Atoms]) -> None:
    """Write extxyz through a temporary file and a rename (never half a file)."""
    from ase.io import write

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if frames:
        write(str(tmp), list(frames), format="extxyz")
    else:
        tmp.write_text("")
    os.replace(tmp, path)
