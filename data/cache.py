"""Decoded-array cache: location, keys, entries (written through ``util.files``).

A cache entry is two files in ``<cache_dir>/<benchmark>/<dataset>/``:

* ``<stem>.npy``  -- uint8 array (N, 3, H, W), memory-mapped on load (copy-on-write, so a
  50 GB test split does not have to fit in RAM);
* ``<stem>.json`` -- labels, the key material, the split info and the ``.npy``'s size in bytes;
  an entry without its JSON is never used and is simply rebuilt.

Both are written to a temporary name in the same directory and moved into place with
``os.replace`` only after the whole split decoded without error: a failed read leaves no
entry behind.  Replacing an entry (:func:`commit_entry`) deletes the old JSON *before* the new
``.npy`` is moved into place and writes the new JSON *last*, so at every instant the JSON on
disk either describes the ``.npy`` next to it or is absent: a crash between the two writes can
never leave an old JSON that would vouch for a new array (or the reverse).

The cache directory is always explicit: the ``cache_dir`` argument, else ``$VIT_PEFT_CACHE``,
else ``~/.cache/vit_peft`` (never a hidden relative path).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from util.files import is_no_space, mkstemp_near, remove_stale_temps, write_text_atomic

from .errors import DataError

ENV_VAR = "VIT_PEFT_CACHE"
CACHE_VERSION = 2  # 2: the JSON records ``npy_bytes`` and is replaced by commit_entry (1-entries are rebuilt)


def default_cache_dir() -> Path:
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    return (Path.home() / ".cache" / "vit_peft").resolve()


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir).expanduser().resolve() if cache_dir is not None else default_cache_dir()


def key_digest(material: dict[str, Any]) -> str:
    """Stable short digest of a JSON-able dict (the cache key)."""
    blob = json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _reserve(path: Path) -> None:
    """Allocate every block of ``path`` now (where the OS can), so that a full disk is an error here."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without it: written as before
                raise


def write_json_atomic(final: Path, obj: Any) -> None:
    write_text_atomic(final, json.dumps(obj, indent=1, sort_keys=True) + "\n")


class ArrayWriter:
    """Fill a (N, 3, H, W) uint8 ``.npy`` in a temp file; ``commit`` moves it into place.

    The file's blocks are reserved up front (``posix_fallocate``): a memory-mapped array on a full disk would
    otherwise fail page by page with SIGBUS, killing the process without a word. A disk too small is one
    :class:`DataError` naming the folder and the size, with the temp file removed; temp files a killed earlier
    build left behind are removed first (``util.files.remove_stale_temps``).
    Use as a context manager: leaving the block with an exception deletes the temp file.
    """

    def __init__(self, final: Path, shape: tuple[int, ...]):
        self.final = final
        remove_stale_temps(final)
        self.tmp = mkstemp_near(final)
        self._done = False
        try:
            self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.uint8, shape=shape)
            _reserve(self.tmp)
        except OSError as e:
            self.abort()
            if is_no_space(e):
                need = int(np.prod(shape)) / 2**30
                raise DataError(f"{final.parent}: no space left on device for the decoded images ({need:.2f} GiB, "
                                f"{final.name}); free space there or point --cache-dir (VIT_PEFT_CACHE) at another "
                                "disk") from None
            raise

    def commit(self) -> None:
        self.array.flush()
        del self.array
        os.replace(self.tmp, self.final)
        self._done = True

    def abort(self) -> None:
        if hasattr(self, "array"):
            del self.array
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()

    def __enter__(self) -> "ArrayWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._done:
            self.abort()


def commit_entry(writer: ArrayWriter, meta: Path, obj: dict[str, Any]) -> None:
    """Move ``writer``'s filled array into place and write its metadata ``obj`` to ``meta``.

    The order keeps every crash point safe (module docstring): (1) delete the old JSON -- the
    entry is invalid from here on; (2) ``os.replace`` the array; (3) write the JSON, with the
    array's byte size (checked by :func:`load_entry`), atomically and last.
    """
    with contextlib.suppress(FileNotFoundError):
        meta.unlink()
    writer.commit()
    write_json_atomic(meta, {**obj, "npy_bytes": writer.final.stat().st_size})


def entry_paths(cache_root: Path, benchmark: str, dataset: str, stem: str) -> tuple[Path, Path]:
    d = cache_root / benchmark / dataset
    return d / f"{stem}.npy", d / f"{stem}.json"


def load_entry(npy: Path, meta: Path, key: str) -> tuple[np.ndarray, dict] | None:
    """Return (memory-mapped images, meta dict) when a complete entry with this key exists."""
    if not (npy.is_file() and meta.is_file()):
        return None
    try:
        m = json.loads(meta.read_text())
        if m.get("key") != key or m.get("cache_version") != CACHE_VERSION:
            return None
        if m.get("npy_bytes") != npy.stat().st_size:  # not the array this JSON was written for
            return None
        arr = np.load(npy, mmap_mode="c")
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] != len(m.get("labels", ())):
        return None
    return arr, m
