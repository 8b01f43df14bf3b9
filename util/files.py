"""File writing and hashing, one implementation for the whole repository.

Every file this project writes for others to read (run folders, the image cache, split files, configs, tables) goes
through :func:`atomic_path`: the content is written to a temporary file in the same folder and renamed over the
target only once complete, so a reader sees the old file or the whole new one, and an interrupted or failed write
leaves neither a half-written target nor a temporary file behind.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["sha256_file", "sha256_bytes", "umask", "mkstemp_near", "atomic_path", "atomic_write", "write_text_atomic"]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed in chunks (weight files and image caches can be several GB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def umask() -> int:
    """The process umask (read without changing it)."""
    m = os.umask(0)
    os.umask(m)
    return m


def mkstemp_near(final: Path, suffix: str = ".tmp") -> Path:
    """An empty temporary file next to ``final`` (its folder is created), with the permissions a plain ``open``
    would give (``mkstemp`` alone gives 0600, which would make results unreadable to a group)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~umask())
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``final``; when the block ends without an exception it is renamed onto
    ``final`` (``os.replace``). On any exception it is removed and ``final`` is left as it was."""
    final = Path(final)
    tmp = mkstemp_near(final, suffix + ".tmp")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write(final: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """``write(tmp_path)`` then rename onto ``final`` (:func:`atomic_path`), e.g. ``lambda p: torch.save(obj, p)``."""
    with atomic_path(final) as tmp:
        write(tmp)


def write_text_atomic(final: str | os.PathLike, text: str) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text)
