"""Tiny dependency-free progress bar for long-running work.

Usage::

    for item in Progress(items, desc="label"):
        ...

    with Progress(total=n, desc="hessian") as bar:
        ...
        bar.update()

Prints ``desc  done/total  rate/s  ETA`` to stderr, redrawn in place at most every
``min_interval`` seconds.  It is silent when ``disable=True`` or when the stream is
not a TTY (log files, CI), unless ``disable=False`` is passed explicitly.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, Optional, TextIO, TypeVar

T = TypeVar("T")

__all__ = ["Progress"]


def _fmt_seconds(s: float) -> str:
    if s != s or s == float("inf"):  # NaN / inf
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class Progress:
    """Count/rate/ETA progress display, usable as iterator wrapper or context manager.

    Parameters
    ----------
    iterable : iterable, optional
        Items to wrap; ``len()`` gives ``total`` when available.
    total : int, optional
        Number of expected steps (ETA is shown only when known).
    desc : str
        Label printed in front of the counter.
    disable : bool or None
        ``True`` silences, ``False`` forces output, ``None`` (default) prints only
        when ``stream`` is a TTY.
    stream : text stream
        Where to print (default ``sys.stderr``).
    min_interval : float
        Minimum seconds between redraws.
    """

    def __init__(
        self,
        iterable: Optional[Iterable[T]] = None,
        total: Optional[int] = None,
        desc: str = "",
        disable: Optional[bool] = None,
        stream: Optional[TextIO] = None,
        min_interval: float = 0.2,
    ) -> None:
        self.iterable = iterable
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.total = total
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        if disable is None:
            isatty = getattr(self.stream, "isatty", None)
            disable = not (callable(isatty) and isatty())
        self.disable = bool(disable)
        self.min_interval = float(min_interval)
        self.n = 0
        self.start = time.monotonic()
        self._last = 0.0
        self._closed = False

    # ------------------------------------------------------------------ core
    def update(self, n: int = 1) -> None:
        """Advance the counter by ``n`` steps and redraw if due."""
        self.n += n
        if self.disable:
            return
        now = time.monotonic()
        if now - self._last >= self.min_interval or (
            self.total is not None and self.n >= self.total
        ):
            self._last = now
            self._draw(now)

    def line(self, now: Optional[float] = None) -> str:
        """The status text (without carriage return)."""
        now = time.monotonic() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        rate = self.n / elapsed
        parts = [self.desc] if self.desc else []
        if self.total is not None:
            parts.append(f"{self.n}/{self.total}")
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            parts.append(f"{rate:.2f}/s")
            parts.append(f"ETA {_fmt_seconds(eta)}")
        else:
            parts.append(f"{self.n}")
            parts.append(f"{rate:.2f}/s")
        parts.append(f"elapsed {_fmt_seconds(elapsed)}")
        return "  ".join(parts)

    def _draw(self, now: float) -> None:
        self.stream.write("\r" + self.line(now) + "\033[K")
        self.stream.flush()

    def close(self) -> None:
        """Final redraw and newline (once)."""
        if self._closed:
            return
        self._closed = True
        if not self.disable:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()

    # ------------------------------------------------------------- protocols
    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("Progress(iterable=None) is not iterable; use update()")
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
