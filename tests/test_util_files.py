"""util/files.py: the one atomic write and the one file hash every package uses."""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from util.files import atomic_write, sha256_file, write_text_atomic


def test_atomic_write_never_leaves_a_half_written_file(tmp_path):
    target = tmp_path / "train_state.pt"
    target.write_text("previous complete checkpoint")

    def broken(p: Path):
        p.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, broken)
    assert target.read_text() == "previous complete checkpoint"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["train_state.pt"]


def test_atomic_write_gives_the_files_a_plain_open_would_give(tmp_path):
    # mkstemp alone creates 0600 files: results and adapters must be readable as any file the user writes
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "sub" / "results.json", "{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "sub" / "results.json").stat().st_mode) == 0o644
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["results.json"]


def test_sha256_streams_large_files(tmp_path):
    p = tmp_path / "big.bin"
    blob = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)  # several chunks plus a tail
    p.write_bytes(blob)
    assert sha256_file(p) == hashlib.sha256(blob).hexdigest()
