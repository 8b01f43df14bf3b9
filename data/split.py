"""``Split`` (decoded images + labels) and the decode-once-and-cache machinery shared by VTAB,
FGVC and the demo tasks.

Decoding runs once per (split file content, resolution, resize method, image files) and the
result is cached as a uint8 (N, 3, H, W) array (see :mod:`data.cache`).  Decoding uses a thread
pool (Pillow releases the GIL while decoding and resampling).  A first decode reports its progress on
stderr (:func:`data.progress.progress`: a bar on a terminal, a start and an end line in a log); a cache
hit prints nothing.
"""
from __future__ import annotations

import os
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from . import cache as _cache
from .errors import DataError
from .progress import Progress, progress

_POLL = 0.25  # seconds between two reads of the threads' counts (decode_all)

_PIL_FILTERS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass
class Split:
    """One decoded split, ready for :class:`data.Loader`.

    ``images`` is a uint8 tensor (N, 3, H, W) at the *stored* resolution (``stored_size``);
    for VTAB / demo that is ``img_size`` itself (resize-only preprocessing), for FGVC it is the
    larger ``round(256 * img_size / 224)`` square from which the loader crops.  ``images`` may be
    backed by a copy-on-write memory map of the cache file.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    name: str
    split: str
    info: dict[str, Any] = field(default_factory=dict)
    benchmark: str = "vtab"
    img_size: int = 224

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def stored_size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, indices: Sequence[int] | torch.Tensor) -> "Split":
        """A new Split with the given rows (copied), e.g. for quick experiments."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        info = dict(self.info, n=int(idx.numel()), subset_of=self.info.get("n", len(self)))
        return replace(self, images=self.images.index_select(0, idx), labels=self.labels.index_select(0, idx),
                       info=info)

    def __repr__(self) -> str:  # keep it short: never print the tensors
        return (f"Split(name={self.name!r}, split={self.split!r}, n={len(self)}, num_classes={self.num_classes}, "
                f"stored={tuple(self.images.shape[1:])}, img_size={self.img_size})")


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------
def open_rgb(path: Path) -> Image.Image:
    """Open + fully decode an image as RGB (PIL ``.convert('RGB')``, as every loader in scope)."""
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def resize_square(im: Image.Image, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """``transforms.Resize((size, size), interpolation)`` on a PIL image -> (3, size, size) uint8."""
    if im.size != (size, size):
        im = im.resize((size, size), _PIL_FILTERS[interpolation])
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def resize_short_center_square(im: Image.Image, size: int, interpolation: str = "bilinear") -> np.ndarray:
    """``Resize(size)`` (shorter side, torchvision rounding) then ``CenterCrop(size)`` -> (3, size, size).

    torchvision: the longer side becomes ``int(size * long / short)``; crop offsets are
    ``int(round((dim - size) / 2))``.
    """
    w, h = im.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), _PIL_FILTERS[interpolation])
    top = int(round((nh - size) / 2.0))
    left = int(round((nw - size) / 2.0))
    im = im.crop((left, top, left + size, top + size))
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def decode_all(paths: Sequence[Path], out: np.ndarray, fn: Callable[[Image.Image], np.ndarray],
               num_workers: int | None = None, describe: Callable[[int], str] | None = None,
               report: Progress | None = None) -> None:
    """Decode ``paths[i]`` with ``fn`` into ``out[i]``; the first failure in path order raises DataError (threads
    stop at images past a failure, so a bad file is found as fast as, and the same as, in one thread).

    num_workers: decoding threads (None: min(8, CPUs); 0 or 1: in the calling thread). Threads, not processes:
    Pillow releases the GIL while it decodes and resamples, and threads write straight into ``out`` (a memory map
    of the cache file). Row i is written by exactly one call of ``fn``, so ``out`` is the same for any count.
    report: told ``update(k)`` from the calling thread as images finish (the counts of every thread, polled every
    ``_POLL`` seconds), e.g. the :class:`data.progress.Progress` of a ``progress`` block.
    """
    n = len(paths)
    workers = _default_workers() if num_workers is None else int(num_workers)

    def work(i: int) -> None:
        p = paths[i]
        try:
            arr = fn(open_rgb(p))
        except FileNotFoundError:
            where = f" ({describe(i)})" if describe else ""
            raise DataError(f"image file missing: {p}{where}; restore the file or regenerate the split file") from None
        except Exception as e:  # PIL.UnidentifiedImageError, truncated file, ...
            where = f" ({describe(i)})" if describe else ""
            raise DataError(
                f"cannot decode image {p}{where}: {type(e).__name__}: {e}; the file is corrupt or not an image -- "
                f"re-extract / re-convert it (python -m data.prepare_vtab --check <root> lists all such files)"
            ) from None
        out[i] = arr

    if workers <= 1 or n < 64:
        for i in range(n):
            work(i)
            if report is not None:
                report.update(1)
        return
    chunk = max(16, min(256, -(-n // (4 * workers))))  # >= 4 chunks per thread: the threads finish together
    starts = range(0, n, chunk)
    done = [0] * len(starts)  # images finished per chunk: each slot written by one thread, summed by this one
    failed: dict[int, BaseException] = {}  # image index -> its error
    first_bad = [n]  # lowest failing index so far: a thread stops past it, so every image before it is tried
    lock = threading.Lock()

    def run(c: int, lo: int) -> None:
        for i in range(lo, min(n, lo + chunk)):
            if i > first_bad[0]:
                return
            try:
                work(i)
            except Exception as e:  # noqa: BLE001 - re-raised below: the first in path order
                with lock:
                    failed[i] = e
                    first_bad[0] = min(first_bad[0], i)
                return
            done[c] += 1

    reported = 0
    with ThreadPoolExecutor(max_workers=workers) as ex:
        futures = [ex.submit(run, c, lo) for c, lo in enumerate(starts)]
        try:
            pending = set(futures)
            while pending:
                _, pending = wait(pending, timeout=_POLL)
                if report is not None:
                    total = sum(done)
                    report.update(total - reported)
                    reported = total
        except BaseException:  # KeyboardInterrupt: the threads stop after their current image
            first_bad[0] = -1
            for f in futures:
                f.cancel()
            raise
    if failed:
        raise failed[min(failed)]


def stat_fingerprint(paths: Sequence[Path], describe: Callable[[int], str] | None = None) -> str:
    """Digest of (size, mtime) of every image; a missing file raises DataError naming it."""
    import hashlib

    h = hashlib.sha256()
    for i, p in enumerate(paths):
        try:
            st = os.stat(p)
        except FileNotFoundError:
            where = f" (referenced by {describe(i)})" if describe else ""
            raise DataError(f"image file missing: {p}{where}; restore the file, or fix / regenerate the split file") \
                from None
        h.update(f"{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:20]


def cached_decode(*, cache_dir: Path, benchmark: str, dataset: str, stem: str, key_material: dict[str, Any],
                  paths: Sequence[Path], labels: Sequence[int], size: int,
                  fn: Callable[[Image.Image], np.ndarray], use_cache: bool = True,
                  num_workers: int | None = None, describe: Callable[[int], str] | None = None,
                  verbose: bool = False, label: str | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Return (uint8 images, int64 labels, cache info), decoding at most once per key.

    A decode reports on stderr (``label``, e.g. ``"cifar test"``, default ``"<dataset> <stem>"``)::

        decoding cifar test: 10,000 images into <cache_dir>/vtab/cifar/test-....npy ...   (not on a terminal)
        decoded cifar test: 10,000 images in 12.3 s (812 img/s)

    a bar in place of the first line on a terminal. A cache hit prints nothing (``verbose``: one line naming it).
    """
    key = _cache.key_digest({**key_material, "cache_version": _cache.CACHE_VERSION})
    npy, meta = _cache.entry_paths(cache_dir, benchmark, dataset, stem)
    n = len(paths)
    what = label or f"{dataset} {stem}"
    if use_cache:
        hit = _cache.load_entry(npy, meta, key)
        if hit is not None:
            arr, m = hit
            if list(m["labels"]) == list(labels) and arr.shape == (n, 3, size, size):
                if verbose:
                    print(f"cached {what}: {n:,} images from {npy}", file=sys.stderr, flush=True)
                return _to_torch(arr), torch.tensor(list(labels), dtype=torch.long), \
                    {"cache_file": str(npy), "cache_hit": True, "cache_key": key}
    stage = {"desc": f"decoding {what}", "done": f"decoded {what}"}
    if not use_cache:
        arr = np.empty((n, 3, size, size), dtype=np.uint8)
        with progress(n, detail="(not cached)", **stage) as p:
            decode_all(paths, arr, fn, num_workers, describe, report=p)
        return torch.from_numpy(arr), torch.tensor(list(labels), dtype=torch.long), \
            {"cache_file": None, "cache_hit": False, "cache_key": key}
    with _cache.ArrayWriter(npy, (n, 3, size, size)) as w, progress(n, detail=f"into {npy}", **stage) as p:
        decode_all(paths, w.array, fn, num_workers, describe, report=p)
        # old meta deleted before the array is replaced, new meta written last (data.cache.commit_entry)
        _cache.commit_entry(w, meta, {"key": key, "cache_version": _cache.CACHE_VERSION, "material": key_material,
                                      "labels": [int(x) for x in labels]})
    arr = np.load(npy, mmap_mode="c")
    return _to_torch(arr), torch.tensor(list(labels), dtype=torch.long), \
        {"cache_file": str(npy), "cache_hit": False, "cache_key": key}


def _to_torch(arr: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.from_numpy(arr)


def image_format(paths: Sequence[Path]) -> str:
    exts = {p.suffix.lower().lstrip(".") for p in paths}
    exts = {"jpg" if e == "jpeg" else e for e in exts}
    if not exts:
        return "none"
    return exts.pop() if len(exts) == 1 else "mixed:" + ",".join(sorted(exts))
