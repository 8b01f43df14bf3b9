"""data.prepare_vtab: arrays -> NOAH writer, the tree checker and its CLI, VTAB split definitions."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data import VTAB_NUM_CLASSES, VTAB_TASKS, DataError, load_split
from data.errors import cli_main
from data import prepare_vtab as pv


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VIT_PEFT_CACHE", str(tmp_path / "default_cache"))


def arrays(n, C, size=10, seed=0, off=0):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return imgs, [(off + i) % C for i in range(n)]


def write(root, task, n=(6, 3, 5), fmt="png", size=10):
    C = VTAB_NUM_CLASSES[task]
    parts = [arrays(k, C, size, seed=i, off=i) for i, k in enumerate(n)]
    d = pv.write_noah_task(root, task, *[zip(*p) for p in parts], fmt=fmt, strict_counts=False)
    return d, parts


def test_writer_png_is_lossless_and_noah_shaped(tmp_path):
    d, (tr, va, te) = write(tmp_path, "dsprites_loc")
    assert sorted(p.name for p in d.iterdir()) == ["images", "manifest.json", "test.txt", "train800.txt",
                                                   "train800val200.txt", "val200.txt"]
    lines = (d / "train800val200.txt").read_text().splitlines()
    assert lines[0] == f"images/train800val200/000000.png {tr[1][0]}" and len(lines) == 9
    assert (d / "images/train800val200/000007.png").read_bytes() == (d / "images/val200/000001.png").read_bytes()
    m = json.loads((d / "manifest.json").read_text())
    assert m["format"] == "png" and m["jpeg_quality"] is None and m["splits"]["test"]["n"] == 5
    assert m["splits"]["val200"]["sha256"] == hashlib.sha256((d / "val200.txt").read_bytes()).hexdigest()
    s = load_split("dSpr-Loc", tmp_path, "train800val200", img_size=10, cache_dir=tmp_path / "c",
                   strict_counts=False)
    ref = np.concatenate([tr[0], va[0]]).transpose(0, 3, 1, 2)
    assert np.array_equal(s.images.numpy(), ref)  # png + same size: bit-exact
    assert s.labels.tolist() == list(tr[1]) + list(va[1]) and s.info["format"] == "png"


def test_writer_jpg_grey_and_label_checks(tmp_path):
    C = VTAB_NUM_CLASSES["smallnorb_azi"]
    grey = [(np.full((8, 8, 1), 100, np.uint8), 1)]
    d = pv.write_noah_task(tmp_path, "smallnorb_azimuth", grey, grey, grey, fmt="jpeg", strict_counts=False)
    assert d.name == "smallnorb_azi"
    with Image.open(d / "images/test/000000.jpg") as im:
        assert im.mode == "RGB" and im.format == "JPEG"
    m = json.loads((d / "manifest.json").read_text())
    assert m["format"] == "jpg" and m["jpeg_quality"] == 75
    with pytest.raises(DataError, match=rf"label {C} out of range \[0, {C}\)"):
        pv.write_noah_task(tmp_path / "x", "smallnorb_azi", grey, [(grey[0][0], C)], grey, strict_counts=False)
    with pytest.raises(DataError, match="train800: got 1 examples, VTAB-1k needs 800"):
        pv.write_noah_task(tmp_path / "y", "smallnorb_azi", grey, grey, grey)
    with pytest.raises(DataError, match="not a VTAB task"):
        pv.write_noah_task(tmp_path / "z", "cub", grey, grey, grey)


def test_checker_passes_good_tree_and_reports_each_problem(tmp_path):
    root = tmp_path / "vtab"
    for t in ("cifar", "kitti", "eurosat"):
        write(root, t)
    (root / "kitti").rename(root / "KITTI-Dist")  # alias-named folder
    reps = pv.check_tree(root, ["cifar", "kitti", "eurosat"], strict_counts=False)
    assert [r.task for r in reps] == ["cifar", "kitti", "eurosat"]
    assert all(r.ok for r in reps) and all(r.union_ok for r in reps)
    assert reps[1].counts == {"train800": 6, "val200": 3, "train800val200": 9, "test": 5}
    assert reps[1].warnings == [] and reps[1].classes_tv == 4
    assert reps[0].warnings == ["train800val200 covers 6 of 100 classes"]
    # strict counts: the wrong count is reported
    strict = pv.check_tree(root, ["kitti"])
    assert not strict[0].ok and "train800.txt has 6 lines, expected 800" in strict[0].errors
    assert "test.txt has 5 lines, expected 711" in strict[0].errors
    # train800val200 with different pixels than train800 + val200
    d = root / "cifar"
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(d / "images/train800val200/000002.png")
    # a corrupt image, a label out of range, a manifest mismatch
    (root / "eurosat/images/test/000001.png").write_bytes(b"garbage")
    reps = {r.task: r for r in pv.check_tree(root, ["cifar", "eurosat", "kitti"], strict_counts=False)}
    assert reps["cifar"].union_ok is False and not reps["cifar"].ok
    assert any("test.txt:2: images/test/000001.png unreadable" in e for e in reps["eurosat"].errors)
    assert reps["kitti"].ok
    f = root / "KITTI-Dist/val200.txt"
    f.write_text(f.read_text().replace(" 1\n", " 4\n", 1))
    r = pv.check_tree(root, ["kitti"], strict_counts=False)[0]
    assert any("label 4 out of range [0, 4)" in e for e in r.errors)
    assert any("val200.txt does not match manifest.json" in e for e in r.errors)
    # missing tasks are rows, not crashes
    r = pv.check_tree(root, ["dmlab"], strict_counts=False)[0]
    assert not r.ok and "folder not found" in r.errors[0]
    table = pv.format_table(pv.check_tree(root, None, strict_counts=False))
    assert len(table.splitlines()) == 2 + 19 + 1 and table.endswith("0/19 tasks ok")


def test_check_cli_exit_codes(tmp_path, capsys):
    root = tmp_path / "vtab"
    write(root, "dtd")
    assert cli_main(pv.main, ["--check", str(root), "--tasks", "dtd", "--no-strict-counts"]) == 0
    out = capsys.readouterr().out
    assert "dtd" in out and "1/1 tasks ok" in out
    assert cli_main(pv.main, ["--check", str(root), "--tasks", "dtd"]) == 1  # 6 lines != 800
    assert "FAIL" in capsys.readouterr().out
    assert cli_main(pv.main, ["--check", str(root / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "does not exist" in err[0]
    assert cli_main(pv.main, ["--check", str(root), "--tasks", "dtdx"]) == 2
    assert "Did you mean 'dtd'" in capsys.readouterr().err
    # the real entry point, in a fresh interpreter: one line on stderr, exit 2, no traceback
    p = subprocess.run([sys.executable, "-m", "data.prepare_vtab", "--check", str(root / "nope")],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "tensorflow" not in p.stderr


def test_tfds_split_definitions_follow_task_adaptation():
    assert set(pv.TFDS_TASKS) == set(VTAB_TASKS)
    assert pv.tfds_split_strings("cifar", 50_000) == {"train800": "train[:800]", "val200": "train[45000:45200]",
                                                      "test": "test"}
    assert pv.tfds_split_strings("oxford_iiit_pet", 3_680)["val200"] == "train[2944:3144]"
    assert pv.tfds_split_strings("clevr_count", 70_000) == {"train800": "train[:800]",
                                                            "val200": "train[63000:63200]", "test": "validation"}
    assert pv.tfds_split_strings("eurosat", 27_000) == {"train800": "train[:800]", "val200": "train[16200:16400]",
                                                        "test": "train[21600:]"}
    # dSprites: 737,280 examples -> test = the last 10 % = 73,728 (the documented test size)
    d = pv.tfds_split_strings("dsprites_ori", 737_280)
    assert d["val200"] == "train[589824:590024]" and d["test"] == "train[663552:]"
    from data.tasks import VTAB_TEST_SIZES

    assert 737_280 - 663_552 == VTAB_TEST_SIZES["dsprites_ori"]  # the split string gives the documented test size
    assert pv.tfds_split_strings("resisc45", 31_500)["test"] == "train[25200:]"
    assert 31_500 - 25_200 == VTAB_TEST_SIZES["resisc45"]
    assert pv.tfds_split_strings("smallnorb_ele", 24_300) == {"train800": "train[:800]", "val200": "test[:200]",
                                                              "test": "test[50%:]"}
    for t in ("dtd", "sun397", "kitti", "dmlab", "patch_camelyon", "diabetic_retinopathy", "oxford_flowers102"):
        assert pv.tfds_split_strings(t, 1)["val200"] == "validation[:200]"


def test_label_functions_match_vtab_preprocessing():
    clevr = {"image": np.zeros((4, 4, 3), np.uint8),
             "objects": {"size": np.zeros(5), "pixel_coords": np.array([[0, 0, 9.2], [0, 0, 12.0]])}}
    assert pv.example_to_pair("clevr_count", clevr)[1] == 2  # 5 objects - 3
    assert pv.example_to_pair("clevr_dist", clevr)[1] == 3  # 9.0 < 9.2 <= 9.5
    kitti = {"image": np.zeros((4, 4, 3), np.uint8),
             "objects": {"type": np.array([3, 0]), "location": np.array([[0, 0, 2.0], [0, 0, 15.0]])}}
    assert pv.example_to_pair("kitti", kitti)[1] == 1  # closest vehicle (type < 3) at 15 m: 8 < d <= 20
    kitti["objects"]["location"] = np.array([[0, 0, 2.0], [0, 0, 25.0]])
    assert pv.example_to_pair("kitti", kitti)[1] == 2  # 20 < d
    none = {"image": np.zeros((4, 4, 3), np.uint8), "objects": {"type": np.zeros(0), "location": np.zeros((0, 3))}}
    assert pv.example_to_pair("kitti", none)[1] == 3  # no vehicle
    ds = {"image": np.ones((4, 4, 1), np.uint8), "label_x_position": 31, "label_orientation": 39}
    img, y = pv.example_to_pair("dsprites_loc", ds)
    assert y == 15 and img.shape == (4, 4, 3) and img.max() == 255
    assert pv.example_to_pair("dsprites_ori", ds)[1] == 15  # floor(39 / 2.5)
    assert pv.example_to_pair("dsprites_ori", {**ds, "label_orientation": 5})[1] == 2
    norb = {"image": np.full((4, 4, 1), 9, np.uint8), "label_azimuth": 17, "label_elevation": 8}
    assert pv.example_to_pair("smallnorb_azi", norb)[1] == 17 and pv.example_to_pair("smallnorb_ele", norb)[1] == 8
    assert pv.example_to_pair("cifar", {"image": np.zeros((4, 4, 3), np.uint8), "label": 42})[1] == 42


def test_converter_without_tfds_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails even if installed
    assert cli_main(pv.main, ["--task", "cifar", "--out", str(tmp_path)]) == 2
    assert "pip install tensorflow tensorflow-datasets" in capsys.readouterr().err
    assert not (tmp_path / "cifar").exists()


def test_check_quick_reports_a_corrupt_image_and_folders_are_matched_to_their_task(tmp_path):
    root = tmp_path / "vtab"
    write(root, "dtd")
    d, _ = write(root, "cifar")
    (root / "dtd" / "images" / "train800" / "000001.png").write_bytes(b"garbage")
    r = pv.check_tree(root, ["dtd"], strict_counts=False, decode=False)[0]  # --quick: the union check decodes
    assert not r.ok and any("train800.txt:2" in e and "unreadable" in e for e in r.errors), r.errors
    # a task folder whose name is no task id and that has no manifest is no task at all (it was every task)
    other = tmp_path / "mydata"
    other.mkdir()
    for f in d.iterdir():
        if f.name != "manifest.json":
            (other / f.name).symlink_to(f)
    with pytest.raises(DataError, match="'mydata' is no VTAB task id.*rename it to 'sun397'"):
        load_split("sun397", other, "train800", img_size=10, cache_dir=tmp_path / "c", strict_counts=False)
    (other / "manifest.json").write_text((d / "manifest.json").read_text())  # ... its manifest names cifar
    assert load_split("cifar", other, "train800", img_size=10, cache_dir=tmp_path / "c", strict_counts=False)
    assert not pv.check_tree(other, ["sun397"], strict_counts=False)[0].ok
    # a folder named for one task whose manifest names another
    (root / "dtd" / "manifest.json").write_text((d / "manifest.json").read_text())
    r = pv.check_tree(root, ["dtd"], strict_counts=False)[0]
    assert any("manifest.json names task 'cifar', not 'dtd'" in e for e in r.errors), r.errors


def test_converter_checks_the_test_split_size_too(tmp_path):
    # a TFDS version other than the documented one can change the test split: caught when writing, not at training time
    C = VTAB_NUM_CLASSES["dtd"]
    px = np.zeros((4, 4, 3), np.uint8)
    part = lambda n: [(px, i % C) for i in range(n)]  # noqa: E731
    with pytest.raises(DataError, match="dtd/test: got 7 examples, VTAB-1k needs 1880"):
        pv.write_noah_task(tmp_path, "dtd", part(800), part(200), part(7), fmt="png")


def test_full_check_writes_the_manifest_of_a_verified_tree(tmp_path):
    # docs/benchmarks.md §2: the verify command writes a manifest (counts + SHA-256 per split file); later checks then
    # see a split file that changed
    root = tmp_path / "vtab"
    d, _ = write(root, "dtd")
    (d / "manifest.json").unlink()  # as a tree from the NOAH converter or a download: no manifest
    assert not pv.check_tree(root, ["dtd"], strict_counts=False, write_manifest=False)[0].manifest_written
    assert not (d / "manifest.json").exists()
    assert not pv.check_tree(root, ["dtd"], strict_counts=False, decode=False)[0].manifest_written  # --quick
    r = pv.check_tree(root, ["dtd"], strict_counts=False)[0]
    assert r.ok and r.manifest_written
    m = json.loads((d / "manifest.json").read_text())
    assert m["task"] == "dtd" and m["splits"]["train800"]["n"] == 6 and m["format"] == "png"
    assert m["splits"]["test"]["sha256"] == hashlib.sha256((d / "test.txt").read_bytes()).hexdigest()
    (d / "test.txt").write_text((d / "test.txt").read_text().replace(" 2\n", " 3\n", 1))
    r = pv.check_tree(root, ["dtd"], strict_counts=False)[0]
    assert not r.ok and "test.txt does not match manifest.json (sha256)" in r.errors


def test_check_decodes_each_image_file_once(tmp_path, monkeypatch):
    # the full check decoded every training image twice (a readability pass, then the pixel hashes of the
    # train800 + val200 == train800val200 check); now the hash is the readability check
    import data.split

    d, _ = write(tmp_path / "vtab", "dtd")  # 6 train800 + 3 val200 + 9 train800val200 + 5 test image files
    listed = [ln.split()[0] for s in ("train800", "val200", "train800val200", "test")
              for ln in (d / f"{s}.txt").read_text().splitlines()]
    assert len(listed) == len(set(listed)) == 23
    opened: list[str] = []
    real = data.split.open_rgb
    monkeypatch.setattr(data.split, "open_rgb", lambda p: (opened.append(Path(p).relative_to(d).as_posix()),
                                                           real(p))[1])
    r = pv.check_tree(tmp_path / "vtab", ["dtd"], strict_counts=False)[0]
    assert r.ok and r.union_ok and sorted(opened) == sorted(listed)  # each file once
    opened.clear()
    r = pv.check_tree(tmp_path / "vtab", ["dtd"], strict_counts=False, decode=False)[0]  # --quick: the union only
    assert r.ok and r.union_ok and sorted(opened) == sorted(listed[:18])
