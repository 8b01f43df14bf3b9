"""File writing, hashing and reading YAML: one implementation for the whole repository.

Every file this project writes for others to read (run folders, the image cache, split files, configs, tables) goes
through :func:`atomic_path`: the content is written to a temporary file in the same folder and renamed over the
target only once complete, so a reader sees the old file or the whole new one, and an interrupted or failed write
leaves neither a half-written target nor a temporary file behind. A temporary file's name carries its writer's host
and pid, so one that a killed process left behind is recognised and removed by the next writer
(:func:`remove_stale_temps`).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
import tempfile
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["sha256_file", "sha256_bytes", "umask", "mkstemp_near", "remove_stale_temps", "atomic_path",
           "atomic_write", "write_text_atomic", "is_no_space", "read_yaml"]


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


def _writer_tag() -> str:
    return f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"


def mkstemp_near(final: Path, suffix: str = ".tmp") -> Path:
    """An empty temporary file next to ``final`` (its folder is created), named ``.<final name>.<host>-<pid>.*``, with
    the permissions a plain ``open`` would give (``mkstemp`` alone gives 0600, unreadable to a group)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.{_writer_tag()}.", suffix=suffix, dir=final.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~umask())
    return Path(tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(final: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of ``final`` whose writer was a process of this host that no longer runs (killed
    mid-write: a first cache build can leave a full-size array); a live writer's, or another host's on a shared
    disk, are left alone. Returns what was removed."""
    final = Path(final)
    host, removed = socket.gethostname().replace(".", "_"), []
    for tmp in final.parent.glob(f".{final.name}.*"):
        tag = tmp.name[len(final.name) + 2:].split(".", 1)[0]  # <host>-<pid>
        who, _, pid = tag.rpartition("-")
        if who == host and pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``final``; when the block ends without an exception it is renamed onto
    ``final`` (``os.replace``). On any exception it is removed and ``final`` is left as it was."""
    final = Path(final)
    tmp = mkstemp_near(final, suffix + ".tmp")
    remove_stale_temps(final)  # a killed earlier writer's, never this one's (this process is alive)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask())  # a writer that recreated the file (safetensors does) set its own mode
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


def is_no_space(e: BaseException) -> bool:
    """Whether an error is a full disk (or an exhausted quota)."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def read_yaml(path: str | os.PathLike):
    """The YAML document of ``path``. A syntax error is one ``ValueError`` line naming the file, the line and column
    and the problem (PyYAML's own message spans several lines with a caret drawing); a missing file raises
    ``FileNotFoundError``."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML{where} ({problem})") from None
