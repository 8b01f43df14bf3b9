"""data/: task names, NOAH-layout loading, the decode-once cache, bad input, demo tasks.

CPU only, generated trees only (pytest tmp_path), no network.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data
from data import (DataError, FGVC_DATASETS, FGVC_NUM_CLASSES, VTAB_GROUPS, VTAB_NUM_CLASSES, VTAB_TASKS, Loader,
                  load_split, make_demo, resolve_task)
from data.prepare_vtab import write_noah_task
from data.tasks import _FGVC_ALIASES, _VTAB_ALIASES, DEMO_TASKS, VTAB_TEST_SIZES


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch ~/.cache: the default cache dir points into tmp_path."""
    monkeypatch.setenv("VIT_PEFT_CACHE", str(tmp_path / "default_cache"))


def cache_files(cache_dir: Path) -> list[Path]:
    return [p for p in Path(cache_dir).rglob("*") if p.is_file()] if Path(cache_dir).exists() else []


def tiny_task(root: Path, task: str, n=(8, 4, 6), size=12, fmt="png", seed=0, folder: str | None = None) -> Path:
    """A small NOAH-layout task (random pixels) written by the converter's writer."""
    rng = np.random.default_rng(seed)
    C = VTAB_NUM_CLASSES[task]

    def pairs(k, off):
        return [(rng.integers(0, 256, (size + i % 3, size, 3), dtype=np.uint8), (off + i) % C) for i in range(k)]

    d = write_noah_task(root, task, pairs(n[0], 0), pairs(n[1], 3), pairs(n[2], 5), fmt=fmt, strict_counts=False)
    if folder and folder != task:
        d = d.rename(root / folder)
    return d


def pil_resize(path: Path, size: int) -> np.ndarray:
    """The papers' VTAB transform itself: torchvision ``Resize((size, size), bicubic)`` on the PIL image."""
    from torchvision import transforms as T

    with Image.open(path) as im:
        resized = T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC)(im.convert("RGB"))
    return T.PILToTensor()(resized).numpy()


# ------------------------------------------------------------------------------------------- names
def test_tables_match_spec():
    assert len(VTAB_TASKS) == 19 and len(set(VTAB_TASKS)) == 19
    groups = [VTAB_GROUPS[t] for t in VTAB_TASKS]
    assert groups == ["natural"] * 7 + ["specialized"] * 4 + ["structured"] * 8
    assert sum(VTAB_NUM_CLASSES.values()) == 940
    assert sum(FGVC_NUM_CLASSES.values()) == 1173
    assert FGVC_DATASETS == ["cub", "nabirds", "oxford_flowers", "stanford_dogs", "stanford_cars"]
    assert VTAB_TEST_SIZES["kitti"] == 711 and VTAB_TEST_SIZES["dsprites_loc"] == 73_728


def test_every_name_and_alias_resolves():
    for table, bench in ((_VTAB_ALIASES, "vtab"), (_FGVC_ALIASES, "fgvc")):
        for canon, names in table.items():
            for name in [canon, *names]:
                for variant in (name, name.upper(), name.lower(), name.replace("_", "-"), f" {name} "):
                    assert resolve_task(variant) == (bench, canon), variant
    for t in DEMO_TASKS:
        assert resolve_task(t) == ("demo", t)
    # the ones people actually type
    assert resolve_task("cifar100") == ("vtab", "cifar")
    assert resolve_task("CIFAR-100") == ("vtab", "cifar")
    assert resolve_task("oxford_pet") == ("vtab", "oxford_iiit_pet")
    assert resolve_task("pets") == ("vtab", "oxford_iiit_pet")
    assert resolve_task("dsprites_position") == ("vtab", "dsprites_loc")
    assert resolve_task("smallnorb_elevation") == ("vtab", "smallnorb_ele")
    assert resolve_task("svhn_cropped") == ("vtab", "svhn")
    assert resolve_task("SVNH") == ("vtab", "svhn")
    assert resolve_task("diabetic_retinopathy_detection/btgraham-300") == ("vtab", "diabetic_retinopathy")
    assert resolve_task('clevr(task="closest_object_distance")') == ("vtab", "clevr_dist")
    assert resolve_task("CUB_200_2011") == ("fgvc", "cub")
    assert resolve_task("StanfordCars") == ("fgvc", "stanford_cars")
    assert resolve_task("oxfordflower") == ("fgvc", "oxford_flowers")
    assert resolve_task("flowers102") == ("vtab", "oxford_flowers102")


def test_unknown_name_lists_ids_and_suggests_closest():
    with pytest.raises(DataError) as e:
        resolve_task("smallnorb_azimut")
    msg = str(e.value)
    assert "smallnorb_azimuth" in msg and "'smallnorb_azi'" in msg  # closest alias and its canonical id
    assert all(t in msg for t in VTAB_TASKS) and "stanford_cars" in msg
    assert isinstance(e.value, ValueError)
    with pytest.raises(DataError, match="Did you mean 'dtd'"):
        resolve_task("dtdd")


# ------------------------------------------------------------------------------------------- VTAB
def test_load_vtab_alias_folder_and_values(tmp_path):
    root = tmp_path / "vtab"
    d = tiny_task(root, "cifar", folder="CIFAR100")  # folder named by an alias, other case
    s = load_split("cifar100", root, "train800", img_size=16, cache_dir=tmp_path / "c", strict_counts=False)
    assert s.name == "cifar" and s.split == "train800" and s.num_classes == 100 and s.benchmark == "vtab"
    assert s.images.dtype == torch.uint8 and s.images.shape == (8, 3, 16, 16)
    assert s.labels.dtype == torch.int64 and s.labels.tolist() == list(range(8))
    assert s.info["format"] == "png" and s.info["n"] == 8 and s.info["root"] == str(d)
    assert s.info["sha256"]["train800.txt"] == hashlib.sha256((d / "train800.txt").read_bytes()).hexdigest()
    lines = (d / "train800.txt").read_text().split("\n")
    for i in (0, 5):
        rel = lines[i].split()[0]
        np.testing.assert_array_equal(s.images[i].numpy(), pil_resize(d / rel, 16))
    # root may be the task folder itself; 'trainval' means train800val200
    s2 = load_split("cifar", d, "trainval", img_size=16, cache_dir=tmp_path / "c", strict_counts=False)
    assert s2.split == "train800val200" and len(s2) == 12
    with pytest.raises(DataError, match="train800"):
        load_split("cifar", root, "train", img_size=16, cache_dir=tmp_path / "c", strict_counts=False)


def test_cache_equals_fresh_decode_and_is_reused(tmp_path):
    root, cache = tmp_path / "vtab", tmp_path / "cache"
    tiny_task(root, "dtd", n=(10, 4, 70), fmt="jpg")  # 70 test images: the threaded decode path
    a = load_split("dtd", root, "test", img_size=20, cache_dir=cache, strict_counts=False)
    assert a.info["cache_hit"] is False and a.info["format"] == "jpg"
    b = load_split("dtd", root, "test", img_size=20, cache_dir=cache, strict_counts=False)
    assert b.info["cache_hit"] is True and b.info["cache_file"] == a.info["cache_file"]
    fresh = load_split("dtd", root, "test", img_size=20, cache_dir=cache, strict_counts=False, use_cache=False,
                       num_workers=1)
    assert torch.equal(a.images, fresh.images) and torch.equal(b.images, fresh.images)
    assert torch.equal(a.labels, fresh.labels)
    # a different size is a different entry; nothing but .npy/.json entries in the cache
    load_split("dtd", root, "test", img_size=24, cache_dir=cache, strict_counts=False)
    files = cache_files(cache)
    assert sorted(p.suffix for p in files) == [".json", ".json", ".npy", ".npy"]


def test_cache_invalidated_when_split_file_or_image_changes(tmp_path):
    root, cache = tmp_path / "vtab", tmp_path / "cache"
    d = tiny_task(root, "eurosat")
    a = load_split("eurosat", root, "val200", img_size=12, cache_dir=cache, strict_counts=False)
    f = d / "val200.txt"
    lines = f.read_text().split("\n")
    lines[0], lines[1] = lines[1], lines[0]  # same files, new order
    f.write_text("\n".join(lines))
    with pytest.warns(UserWarning, match="differs from its manifest"):
        b = load_split("eurosat", root, "val200", img_size=12, cache_dir=cache, strict_counts=False)
    assert b.info["cache_hit"] is False
    assert torch.equal(b.images[0], a.images[1]) and torch.equal(b.images[1], a.images[0])
    assert b.labels[:2].tolist() == a.labels[:2].flip(0).tolist()
    # an image rewritten in place (same split file) is noticed too (size / mtime fingerprint)
    rel = lines[2].split()[0]
    Image.fromarray(np.full((12, 12, 3), 7, np.uint8)).save(d / rel)
    os.utime(d / rel, ns=(1, 1))
    with pytest.warns(UserWarning, match="differs from its manifest"):
        c = load_split("eurosat", root, "val200", img_size=12, cache_dir=cache, strict_counts=False)
    assert c.info["cache_hit"] is False and int(c.images[2].max()) == 7


class _Killed(BaseException):
    """Stands in for a kill / power loss: not an Exception, so nothing on the way handles it."""


@pytest.mark.parametrize("crash_before", [".npy", ".json"])
def test_cache_rebuild_killed_between_array_and_meta_is_never_trusted(tmp_path, monkeypatch, crash_before):
    """A rebuild of an entry (same file name, new key) killed just before its array or its JSON is moved into place
    leaves no JSON at all; the next load rebuilds, also when its key is the old JSON's again (images restored with
    their mtime), instead of serving the new array under the old JSON."""
    root, cache = tmp_path / "vtab", tmp_path / "cache"
    d = tiny_task(root, "eurosat")
    a = load_split("eurosat", root, "val200", img_size=12, cache_dir=cache, strict_counts=False)
    npy = Path(a.info["cache_file"])
    img = d / (d / "val200.txt").read_text().split()[0]
    orig, st = img.read_bytes(), img.stat()
    Image.fromarray(np.full((12, 12, 3), 7, np.uint8)).save(img)  # new key for the same entry
    os.utime(img, ns=(1, 1))
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(crash_before):
            raise _Killed
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(_Killed):
        load_split("eurosat", root, "val200", img_size=12, cache_dir=cache, strict_counts=False)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not [p for p in cache_files(cache) if p.suffix == ".json"], "the old JSON must be gone before the array"
    if crash_before == ".json":  # the new array is in place: the old JSON would have vouched for it
        assert int(np.load(npy)[0].max()) == 7
    img.write_bytes(orig)
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))  # the old key again
    b = load_split("eurosat", root, "val200", img_size=12, cache_dir=cache, strict_counts=False)
    assert b.info["cache_hit"] is False and b.info["cache_key"] == a.info["cache_key"]
    assert torch.equal(b.images, a.images)
    c = load_split("eurosat", root, "val200", img_size=12, cache_dir=cache, strict_counts=False)
    assert c.info["cache_hit"] is True and torch.equal(c.images, a.images)
    assert sorted(p.suffix for p in cache_files(cache)) == [".json", ".npy"]  # no temp file left behind


def test_cache_array_of_another_size_than_its_json_records_is_rebuilt(tmp_path):
    root, cache = tmp_path / "vtab", tmp_path / "cache"
    tiny_task(root, "eurosat")
    a = load_split("eurosat", root, "val200", img_size=12, cache_dir=cache, strict_counts=False)
    npy = Path(a.info["cache_file"])
    assert json.loads(npy.with_suffix(".json").read_text())["npy_bytes"] == npy.stat().st_size
    with open(npy, "ab") as f:  # still loads as the same shape: only the recorded size tells
        f.write(b"\0" * 64)
    b = load_split("eurosat", root, "val200", img_size=12, cache_dir=cache, strict_counts=False)
    assert b.info["cache_hit"] is False and torch.equal(b.images, a.images)
    assert load_split("eurosat", root, "val200", img_size=12, cache_dir=cache, strict_counts=False).info["cache_hit"]


def test_default_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VIT_PEFT_CACHE", str(tmp_path / "envcache"))
    assert data.default_cache_dir() == (tmp_path / "envcache").resolve()
    s = load_split("demo", None, "val200", img_size=32)
    assert s.info["cache_file"].startswith(str((tmp_path / "envcache").resolve()))
    monkeypatch.delenv("VIT_PEFT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_cache_dir() == (tmp_path / "home" / ".cache" / "vit_peft").resolve()


def test_strict_counts(tmp_path):
    root = tmp_path / "vtab"
    tiny_task(root, "kitti")
    with pytest.raises(DataError, match=r"train800.txt has 8 lines, VTAB-1k needs 800") as e:
        load_split("kitti", root, "train800", img_size=12, cache_dir=tmp_path / "c")
    # the fix it names is one a train.py / sweep user can apply: strict_counts is a Python argument only
    assert f"`python -m data.prepare_vtab --check {root} --tasks kitti`" in str(e.value)
    assert "strict_counts=False" not in str(e.value)
    with pytest.warns(UserWarning, match="VTAB-1k test size of 'kitti' is 711"):
        load_split("kitti", root, "test", img_size=12, cache_dir=tmp_path / "c")
    assert len(load_split("kitti", root, "train800", img_size=12, cache_dir=tmp_path / "c",
                          strict_counts=False)) == 8


# ------------------------------------------------------------------------------------------- bad input
def _bad(tmp_path, cache, match, *args, **kw):
    with pytest.raises(DataError, match=match):
        load_split(*args, img_size=12, cache_dir=cache, strict_counts=False, **kw)
    assert cache_files(cache) == [], "a failed read must not leave cache files"


def test_bad_inputs_raise_clear_errors_and_write_no_cache(tmp_path):
    root, cache = tmp_path / "vtab", tmp_path / "cache"
    d = tiny_task(root, "svhn", n=(8, 4, 80))
    _bad(tmp_path, cache, "does not exist", "svhn", tmp_path / "nowhere", "train800")
    _bad(tmp_path, cache, r"task 'dtd' not found under .*folders present: svhn", "dtd", root, "train800")
    _bad(tmp_path, cache, "unknown task 'svhm'.*Did you mean 'svhn'", "svhm", root, "train800")
    _bad(tmp_path, cache, "no data root", "svhn", None, "train800")

    (d / "val200.txt").unlink()
    _bad(tmp_path, cache, r"split file missing: .*val200.txt", "svhn", root, "val200")

    f = d / "train800.txt"
    good = f.read_text()
    f.write_text(good.replace(" 3\n", " 10\n", 1))  # svhn has 10 classes: 10 is out of range
    _bad(tmp_path, cache, r"train800.txt:4: label 10 out of range \[0, 10\)", "svhn", root, "train800")
    f.write_text(good.replace(" 3\n", " three\n", 1))
    _bad(tmp_path, cache, r"train800.txt:4: label 'three' is not an integer", "svhn", root, "train800")
    f.write_text(good + "lonely_token\n")
    _bad(tmp_path, cache, r"train800.txt:9: expected '<relative image path> <integer label>'", "svhn", root,
         "train800")
    f.write_text(good)

    # missing image: named, with the split-file line that references it
    (d / "images/test/000003.png").unlink()
    _bad(tmp_path, cache, r"image file missing: .*000003.png \(referenced by .*test.txt:4\)", "svhn", root, "test")
    tiny_task(root, "svhn", n=(8, 4, 80))
    # corrupt image (truncated PNG) in the threaded path: error names the file; no cache entry
    p = d / "images/test/000077.png"
    p.write_bytes(p.read_bytes()[:40])
    _bad(tmp_path, cache, r"cannot decode image .*000077.png", "svhn", root, "test")
    (d / "images/test/000050.png").write_bytes(b"this is not an image")
    _bad(tmp_path, cache, r"cannot decode image .*000050.png", "svhn", root, "test")
    # and the good splits still load afterwards
    assert len(load_split("svhn", root, "train800", img_size=12, cache_dir=cache, strict_counts=False)) == 8


def test_ambiguous_alias_folders(tmp_path):
    root = tmp_path / "vtab"
    tiny_task(root, "oxford_iiit_pet", folder="pets")
    tiny_task(root, "oxford_iiit_pet", folder="oxford_pet", seed=1)
    with pytest.raises(DataError, match="several folders .* name task 'oxford_iiit_pet'"):
        load_split("pet", root, "train800", img_size=12, cache_dir=tmp_path / "c", strict_counts=False)


# ------------------------------------------------------------------------------------------- demo
def _tree_bytes(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_demo_is_deterministic_idempotent_and_in_noah_layout(tmp_path):
    a = make_demo(tmp_path / "a", "demo_ori", n_train=40, n_val=12, n_test=20, seed=3)
    b = make_demo(tmp_path / "b", "demo_ori", n_train=40, n_val=12, n_test=20, seed=3)
    ba, bb = _tree_bytes(a), _tree_bytes(b)
    assert ba == bb and len(ba) == 40 + 12 + 20 + 5
    c = make_demo(tmp_path / "c", "demo_ori", n_train=40, n_val=12, n_test=20, seed=4)
    assert _tree_bytes(c) != ba
    for s, n in (("train800", 40), ("val200", 12), ("train800val200", 52), ("test", 20)):
        lines = (a / f"{s}.txt").read_text().split()
        assert len(lines) == 2 * n
        labels = [int(x) for x in lines[1::2]]
        assert set(labels) == {0, 1, 2, 3}  # balanced: every class in every split
    # idempotent: nothing rewritten
    mt = {p: p.stat().st_mtime_ns for p in a.rglob("*.png")}
    assert make_demo(tmp_path / "a", "demo_ori", n_train=40, n_val=12, n_test=20, seed=3) == a
    assert {p: p.stat().st_mtime_ns for p in a.rglob("*.png")} == mt
    # incomplete -> regenerated byte-identically
    (a / "images/test/000007.png").unlink()
    make_demo(tmp_path / "a", "demo_ori", n_train=40, n_val=12, n_test=20, seed=3)
    assert _tree_bytes(a) == bb
    # the PNGs are valid images of the requested size
    with Image.open(a / "images/val200/000000.png") as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    with pytest.raises(DataError, match="not a demo task"):
        make_demo(tmp_path, "cifar")


def test_demo_tasks_differ_and_load_without_root(tmp_path):
    s1 = load_split("demo", None, "val200", img_size=32, cache_dir=tmp_path / "c")
    s2 = load_split("demo_shape", None, "val200", img_size=32, cache_dir=tmp_path / "c")
    assert s1.benchmark == "demo" and s1.num_classes == 4 and len(s1) == 200
    assert (tmp_path / "c" / "demo_data" / "demo" / "val200.txt").is_file()
    assert not torch.equal(s1.images, s2.images)


def _fit_tiny_convnet(task: str, cache: Path) -> float:
    from torch import nn

    tr = load_split(task, None, "train800", img_size=32, cache_dir=cache)
    te = load_split(task, None, "test", img_size=32, cache_dir=cache)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; one thread is fastest for this size
    try:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Flatten(), nn.Linear(32 * 16, 4))
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        loader = Loader(tr, 32, shuffle=True, seed=0)
        for _ in range(4):
            for x, y in loader:
                loss = nn.functional.cross_entropy(net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            return sum((net(x).argmax(1) == y).sum().item() for x, y in Loader(te, 300)) / len(te)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("task", ["demo", "demo_ori", "demo_shape"])
def test_demo_labels_are_learnable(task, tmp_path):
    acc = _fit_tiny_convnet(task, tmp_path / "c")
    assert acc > 0.6, f"{task}: tiny convnet reached only {acc:.2f} (chance 0.25)"
