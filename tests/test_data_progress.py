"""data/progress.py and its uses: a bar on a terminal, one start and one end line per long step elsewhere, nothing
on a cache hit; the decode's count across threads; prepare_vtab's conversion and check."""
from __future__ import annotations

import io
import re
import sys
import threading
import types

import numpy as np
import pytest
import torch

from data import VTAB_NUM_CLASSES, DataError, load_split
from data import prepare_vtab as pv
from data.errors import cli_main
from data.progress import progress
from data.split import decode_all, resize_square

SUMMARY = r"in \d+\.\d s \([\d,]+ img/s\)"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VIT_PEFT_CACHE", str(tmp_path / "default_cache"))


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def tiny_task(root, task="dtd", n=(6, 3, 70), size=10):
    """A NOAH-layout task of random-pixel PNGs (70 test images: more than the threaded decode's minimum of 64)."""
    rng = np.random.default_rng(0)
    C = VTAB_NUM_CLASSES[task]
    parts = [[(rng.integers(0, 256, (size + i % 3, size, 3), dtype=np.uint8), i % C) for i in range(k)] for k in n]
    return pv.write_noah_task(root, task, *parts, fmt="png", strict_counts=False)


# ------------------------------------------------------------------------------------------------- the helper
def test_off_a_terminal_one_start_and_one_end_line():
    f = io.StringIO()
    with progress(12_345, "decoding cifar test", done="decoded cifar test", detail="into /c/x.npy", file=f) as p:
        for _ in range(10):
            p.update(1000)
        p.update(2345)
    lines = f.getvalue().splitlines()
    assert len(lines) == 2 and lines[0] == "decoding cifar test: 12,345 images into /c/x.npy ..."
    assert re.fullmatch(rf"decoded cifar test: 12,345 images {SUMMARY}", lines[1]), lines[1]
    f = io.StringIO()
    with progress(None, "reading", unit="file", start_line=False, file=f) as p:  # no start line; unknown total
        p.update(3)
    assert re.fullmatch(r"reading: 3 files in \d+\.\d s \([\d,]+ file/s\)\n", f.getvalue()), f.getvalue()
    f = io.StringIO()
    with pytest.raises(KeyError), progress(5, "decoding x", file=f) as p:  # a failed step: no summary
        p.update(2)
        raise KeyError
    assert f.getvalue() == "decoding x: 5 images ...\n"


def test_the_default_file_is_stderr_at_call_time(capsys):
    with progress(2, "decoding y", done="decoded y") as p:
        p.update(2)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "decoding y: 2 images ..." and err[1].startswith("decoded y: 2 images in ")


def test_on_a_terminal_a_bar_erased_at_the_end_redrawn_a_few_times_a_second():
    f = FakeTerminal()
    with progress(100_000, "decoding cifar test", done="decoded cifar test", detail="into /c/x.npy", file=f) as p:
        for _ in range(100_000):  # well under a second: the bar is drawn at the start, then at most once more
            p.update(1)
    out = f.getvalue()
    assert "\rdecoding cifar test:   0%" in out and "0/100000" in out  # tqdm's bar
    assert "into /c/x.npy" not in out and " ...\n" not in out  # no start line on a terminal
    assert out.count("\r") <= 4, out  # start, (one redraw), erase: never one per update
    bar, summary = out.rsplit("\r", 1)  # leave=False: the bar's line is blanked, then the summary stays
    assert bar.endswith(" " * 20) and re.fullmatch(rf"decoded cifar test: 100,000 images {SUMMARY}\n", summary)


# ---------------------------------------------------------------------------------------------- the decode
def test_a_first_decode_prints_two_lines_and_a_cache_hit_nothing(tmp_path, capsys):
    root, cache = tmp_path / "vtab", tmp_path / "cache"
    tiny_task(root)
    capsys.readouterr()
    s = load_split("dtd", root, "test", img_size=12, cache_dir=cache, strict_counts=False)
    c = capsys.readouterr()
    assert c.out == "" and s.info["cache_hit"] is False
    lines = c.err.splitlines()
    assert lines == [f"decoding dtd test: 70 images into {s.info['cache_file']} ...", lines[1]], lines
    assert re.fullmatch(rf"decoded dtd test: 70 images {SUMMARY}", lines[1]), lines[1]
    again = load_split("dtd", root, "test", img_size=12, cache_dir=cache, strict_counts=False)
    assert again.info["cache_hit"] is True and capsys.readouterr() == ("", "")  # a cache hit prints nothing
    load_split("dtd", root, "test", img_size=12, cache_dir=cache, strict_counts=False, verbose=True)
    assert capsys.readouterr().err == f"cached dtd test: 70 images from {s.info['cache_file']}\n"
    load_split("dtd", root, "val200", img_size=12, cache_dir=cache, strict_counts=False, use_cache=False)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "decoding dtd val200: 3 images (not cached) ..." and len(lines) == 2
    assert re.fullmatch(rf"decoded dtd val200: 3 images {SUMMARY}", lines[1]), lines[1]


def test_a_first_decode_on_a_terminal_draws_a_bar(tmp_path, capsys, monkeypatch):
    root = tmp_path / "vtab"
    tiny_task(root)
    capsys.readouterr()
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    load_split("dtd", root, "test", img_size=12, cache_dir=tmp_path / "c", strict_counts=False)
    out = term.getvalue()
    assert "\rdecoding dtd test:   0%" in out and "0/70" in out and "images into" not in out
    assert re.fullmatch(rf"decoded dtd test: 70 images {SUMMARY}\n", out.rsplit("\r", 1)[1]), out


@pytest.mark.parametrize("bad", [False, True])
def test_decode_all_counts_every_thread_and_fills_the_same_array(tmp_path, bad):
    from PIL import Image

    rng = np.random.default_rng(1)
    paths = []
    for i in range(150):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (9 + i % 4, 11, 3), dtype=np.uint8)).save(paths[-1])
    if bad:  # two bad files in different chunks: the first in path order is reported, whichever thread is faster
        paths[140].write_bytes(b"not an image")
        paths[97].write_bytes(b"not an image either")

    class Count:
        def __init__(self):
            self.n, self.calls = 0, 0

        def update(self, k):
            self.n, self.calls = self.n + k, self.calls + 1

    arrays, threads = {}, {}
    for workers in (0, 2, 3):
        seen = set()

        def fn(im, seen=seen):
            seen.add(threading.current_thread() is threading.main_thread())
            return resize_square(im, 8)

        out, count = np.zeros((150, 3, 8, 8), np.uint8), Count()
        if bad:
            with pytest.raises(DataError, match=r"cannot decode image .*97\.png \(line 98\)"):
                decode_all(paths, out, fn, workers, describe=lambda i: f"line {i + 1}", report=count)
            assert count.n < 150
            continue
        decode_all(paths, out, fn, workers, report=count)
        arrays[workers], threads[workers] = out, seen
        assert count.n == 150 and count.calls <= 150, (workers, count.n)  # every image once, whichever thread
    if not bad:
        assert threads[0] == {True} and threads[2] == threads[3] == {False}  # 0: this thread; else the pool's
        assert np.array_equal(arrays[0], arrays[2]) and np.array_equal(arrays[0], arrays[3]) and arrays[0].any()


def test_zero_and_two_workers_give_the_same_split_and_the_same_lines(tmp_path, capsys):
    root = tmp_path / "vtab"
    tiny_task(root)
    capsys.readouterr()
    splits, counts = {}, {}
    for workers in (0, 2):
        splits[workers] = load_split("dtd", root, "test", img_size=12, cache_dir=tmp_path / f"c{workers}",
                                     strict_counts=False, num_workers=workers)
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 2, lines
        counts[workers] = [re.sub(r" into .*| in \d.*", "", ln) for ln in lines]
    assert torch.equal(splits[0].images, splits[2].images) and torch.equal(splits[0].labels, splits[2].labels)
    assert counts[0] == counts[2] == ["decoding dtd test: 70 images", "decoded dtd test: 70 images"]


def test_a_failed_decode_prints_no_summary_and_caches_nothing(tmp_path, capsys):
    root, cache = tmp_path / "vtab", tmp_path / "cache"
    d = tiny_task(root)
    (d / "images" / "test" / "000066.png").write_bytes(b"garbage")
    capsys.readouterr()
    with pytest.raises(DataError, match="000066.png"):
        load_split("dtd", root, "test", img_size=12, cache_dir=cache, strict_counts=False, num_workers=2)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("decoding dtd test: 70 images into ")
    assert not [p for p in cache.rglob("*") if p.is_file()]


# ------------------------------------------------------------------------------------------------ prepare_vtab
def test_check_prints_one_line_per_task(tmp_path, capsys):
    root = tmp_path / "vtab"
    for t in ("dtd", "eurosat"):
        tiny_task(root, t, n=(6, 3, 5))
    capsys.readouterr()
    assert cli_main(pv.main, ["--check", str(root), "--tasks", "dtd", "eurosat", "--no-strict-counts"]) == 0
    c = capsys.readouterr()
    err = c.err.splitlines()
    assert len(err) == 2 and "2/2 tasks ok" in c.out, c
    for line, task in zip(err, ("dtd", "eurosat")):  # 6 + 3 + 9 + 5 listed image files
        assert re.fullmatch(rf"checked {task}: 23 images {SUMMARY}", line), line
    assert cli_main(pv.main, ["--check", str(root), "--tasks", "dtd", "--quick", "--no-strict-counts"]) == 0
    assert len(capsys.readouterr().err.splitlines()) == 1


def _fake_tfds(n_test: int) -> types.ModuleType:
    """Just enough of tensorflow_datasets for convert_from_tfds: a builder whose splits yield KITTI examples."""
    sizes = {"train[:800]": 800, "validation[:200]": 200, "test": n_test}
    ex = {"image": np.full((4, 4, 3), 7, np.uint8),
          "objects": {"type": np.array([0]), "location": np.array([[0.0, 0.0, 5.0]])}}
    info = types.SimpleNamespace(splits={"train": types.SimpleNamespace(num_examples=7481)}, version="3.2.0")
    builder = types.SimpleNamespace(info=info, download_and_prepare=lambda: None,
                                    as_dataset=lambda split, shuffle_files: [ex] * sizes[split])
    return types.SimpleNamespace(builder=lambda name, data_dir=None: builder, as_numpy=lambda ds: iter(ds),
                                 __version__="fake")


def test_convert_reports_each_split(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", _fake_tfds(711))
    assert cli_main(pv.main, ["--task", "kitti", "--out", str(tmp_path), "--format", "png"]) == 0
    err = capsys.readouterr().err.splitlines()
    want = [("train800", 800), ("val200", 200), ("test", 711), ("train800val200", 1000)]
    assert len(err) == 2 * len(want) + 1 and err[-1] == f"kitti: wrote {tmp_path / 'kitti'}", err
    for (split, n), start, end in zip(want, err[0::2], err[1::2]):  # a generator: the count from data/tasks.py
        assert start == f"writing kitti {split}: {n:,} images into {tmp_path / 'kitti' / 'images' / split} ..."
        assert re.fullmatch(rf"wrote kitti {split}: {n:,} images {SUMMARY}", end), end
    assert len((tmp_path / "kitti" / "test.txt").read_text().splitlines()) == 711
