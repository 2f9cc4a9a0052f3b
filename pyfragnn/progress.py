"""Progress bars for long-running work: :mod:`tqdm` with pyfragnn's defaults.

Usage::

    for item in Progress(items, desc="label"):
        ...

    with Progress(total=n, desc="hessian") as bar:
        ...
        bar.update()

Prints ``desc  done/total  rate  ETA  elapsed`` to stderr, redrawn in place at most every
``min_interval`` seconds. Silent when ``disable=True`` or when the stream is not a TTY (log
files, CI), unless ``disable=False`` is passed explicitly.
"""
from __future__ import annotations

import sys
from typing import Iterable, Optional, TextIO

from tqdm import tqdm

__all__ = ["Progress"]

_FORMAT = "{desc}  {n_fmt}/{total_fmt}  {rate_fmt}  ETA {remaining}  elapsed {elapsed}"


class Progress(tqdm):
    """A tqdm bar; ``stream`` and ``min_interval`` (seconds) are tqdm's ``file`` and
    ``mininterval``; ``disable=None`` prints only when the stream is a TTY."""

    def __init__(self, iterable: Optional[Iterable] = None, total: Optional[int] = None,
                 desc: str = "", disable: Optional[bool] = None,
                 stream: Optional[TextIO] = None, min_interval: float = 0.2, **kw) -> None:
        kw.setdefault("bar_format", _FORMAT)
        kw.setdefault("dynamic_ncols", True)
        super().__init__(iterable, total=total, desc=desc, disable=disable,
                         file=stream if stream is not None else sys.stderr,
                         mininterval=min_interval, **kw)

    def update(self, n: float = 1):
        """Advance by n steps; counted in ``self.n`` also when the display is disabled."""
        if self.disable:
            self.n += n
            return None
        return super().update(n)
