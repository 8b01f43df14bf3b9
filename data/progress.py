"""Progress of a long step: a tqdm bar on a terminal, one start and one end line everywhere else.

    with progress(10_000, "decoding cifar test", done="decoded cifar test", detail=f"into {path}") as p:
        for ...:
            p.update(64)

On a terminal (``file.isatty()``) a bar is drawn while the step runs (redrawn at most every ``interval``
seconds) and erased when it ends (``leave=False``). Elsewhere (a log file, a pipe, CI, ``tee train.log``)
nothing is printed per item, only::

    decoding cifar test: 10,000 images into /cache/vtab/cifar/test-....npy ...     (when the step starts)

In both cases, when the block ends without an exception, one summary line stays::

    decoded cifar test: 10,000 images in 12.3 s (812 img/s)

An exception leaves the block without a summary (the error says what happened). Used by the data package for
first decodes, ``prepare_vtab`` conversion and checks; meant for any step that counts items (``engine/`` too).
"""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator, TextIO

__all__ = ["Progress", "progress"]

_PLURALS = {"img": "images", "image": "images", "file": "files", "batch": "batches", "task": "tasks"}


class Progress:
    """The counter a :func:`progress` block yields: ``update(n)`` adds n items (call it from one thread).

    ``update`` costs an addition when no bar is drawn, and tqdm's own time check (it redraws at most every
    ``interval`` seconds) when one is: calling it per item is fine, but never pass it a value that would sync
    with a device (a CUDA tensor's ``.item()``).
    """

    def __init__(self, total: int | None, bar=None):
        self.total, self.n, self.bar = total, 0, bar
        self.t0 = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def _is_tty(file: TextIO) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


@contextlib.contextmanager
def progress(total: int | None, desc: str, unit: str = "img", *, file: TextIO | None = None, done: str | None = None,
             detail: str = "", start_line: bool = True, items: str | None = None,
             interval: float = 0.5) -> Iterator[Progress]:
    """Report a step of ``total`` items (None: unknown) named ``desc``: a bar on a terminal, else one start line;
    then one summary line. Yields a :class:`Progress`; call its ``update(n)`` as items finish.

    file: where to write (default: ``sys.stderr`` at the time of the call, so redirections apply).
    done: the summary's leading words (default ``desc``), e.g. ``"decoded cifar test"`` for ``"decoding ..."``.
    detail: words after the count in the start line (``"into <path>"``); not shown on a terminal.
    start_line: False prints no start line off a terminal (a step reported by its summary alone).
    items: the plural noun of the lines (default from ``unit``: img -> images, file -> files, batch -> batches).
    interval: the least time in seconds between two redraws of the bar.

    Lines: start ``f"{desc}: {total:,} {items} {detail} ..."``, summary
    ``f"{done}: {n:,} {items} in {seconds:.1f} s ({n / seconds:,.0f} {unit}/s)"``; n is the count of ``update``.
    """
    out = sys.stderr if file is None else file
    noun = items or _PLURALS.get(unit, unit + "s")
    bar = None
    if _is_tty(out):
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit=unit, leave=False, file=out, mininterval=interval,
                   dynamic_ncols=True)
    elif start_line:
        count = f" {total:,} {noun}" if total is not None else ""
        print(f"{desc}:{count}{' ' + detail if detail else ''} ...", file=out, flush=True)
    p = Progress(total, bar)
    try:
        yield p
    finally:
        if bar is not None:
            bar.close()  # leave=False: the bar's line is erased
    secs = p.elapsed
    rate = p.n / secs if secs > 0 else 0.0
    print(f"{done or desc}: {p.n:,} {noun} in {secs:.1f} s ({rate:,.0f} {unit}/s)", file=out, flush=True)
