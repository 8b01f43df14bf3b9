"""FGVC: split regeneration from each dataset's own lists, JSON parsing, label map, image roots."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data import DataError, Loader, load_split
from data.errors import cli_main
from data import fgvc_splits
from data.fgvc_splits import build_splits, stratified_val, write_splits


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VIT_PEFT_CACHE", str(tmp_path / "default_cache"))


def cache_files(cache_dir: Path) -> list[Path]:
    return [p for p in Path(cache_dir).rglob("*") if p.is_file()] if Path(cache_dir).exists() else []


def _img(path: Path, rng, w=40, h=30) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def fake_cub(root: Path, n_classes=5, n_train=10, n_test=4, seed=0) -> Path:
    """CUB-200-2011-style tree: images.txt, image_class_labels.txt, train_test_split.txt, images/."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    imgs, labs, split = [], [], []
    i = 0
    for c in range(1, n_classes + 1):
        for j in range(n_train + n_test):
            i += 1
            rel = f"{c:03d}.Bird_{c}/Bird_{c}_{j:04d}.jpg"
            _img(root / "images" / rel, rng, w=40 + (i % 3) * 8, h=30 + (i % 2) * 16)
            imgs.append(f"{i} {rel}")
            labs.append(f"{i} {c}")
            split.append(f"{i} {1 if j < n_train else 0}")
    (root / "images.txt").write_text("\n".join(imgs) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labs) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    return root


def _read(d: Path, s: str) -> dict:
    return json.loads((d / f"{s}.json").read_text())


# ------------------------------------------------------------------------------------------- regeneration
def test_regenerated_split_is_deterministic_stratified_and_labelled(tmp_path):
    a = fake_cub(tmp_path / "a" / "CUB_200_2011")
    b = fake_cub(tmp_path / "b" / "CUB_200_2011")
    info = write_splits("cub", a, seed=0, val_size=8)
    write_splits("cub", b, seed=0, val_size=8)
    for s in ("train", "val", "test"):
        assert (a / f"{s}.json").read_bytes() == (b / f"{s}.json").read_bytes()
    tr, va, te = _read(a, "train"), _read(a, "val"), _read(a, "test")
    assert (len(tr), len(va), len(te)) == (42, 8, 20)
    assert not set(tr) & set(va) and not (set(tr) | set(va)) & set(te)
    for d in (tr, va, te):
        assert set(d.values()) == {1, 2, 3, 4, 5}  # every split holds every class
    assert all(k.startswith(f"{v:03d}.") for k, v in {**tr, **va, **te}.items())  # dataset's own ids
    si = json.loads((a / "split_info.json").read_text())
    assert si["split"] == "regenerated" and si["regenerated"] is True and si["seed"] == 0
    assert si["sizes"] == {"train": 42, "val": 8, "test": 20} and "NOT VPT" in si["note"]
    assert si == info
    # another seed: another val set, same test set
    c = fake_cub(tmp_path / "c" / "CUB_200_2011")
    write_splits("cub", c, seed=1, val_size=8)
    assert _read(c, "val") != va and _read(c, "test") == te


def test_stratified_val_allocation():
    items = [(f"c{c}/{i}", c) for c in range(4) for i in range([2, 5, 20, 73][c])]
    val = stratified_val(items, 10, seed=0)
    assert len(val) == 10
    per = {c: sum(k.startswith(f"c{c}/") for k in val) for c in range(4)}
    assert all(v >= 1 for v in per.values()) and per[0] == 1 and per[3] >= per[2] >= per[1]
    assert stratified_val(items, 10, seed=0) == val and stratified_val(items, 10, seed=5) != val
    with pytest.raises(DataError, match="every class cannot appear in val"):
        stratified_val(items, 3, seed=0)
    with pytest.raises(DataError, match="< 2 training images"):
        stratified_val(items + [("lone", 9)], 10, seed=0)


def test_regeneration_never_overwrites_vpt_files(tmp_path):
    d = fake_cub(tmp_path / "CUB_200_2011")
    (d / "train.json").write_text('{"x.jpg": 1}')  # e.g. VPT's original, no split_info.json
    with pytest.raises(DataError, match="not marked as regenerated.*--force"):
        write_splits("cub", d, val_size=8)
    assert (d / "train.json").read_text() == '{"x.jpg": 1}'
    write_splits("cub", d, val_size=8, force=True)
    write_splits("cub", d, val_size=8)  # our own regenerated files may be rewritten
    assert len(_read(d, "train")) == 42


def test_fgvc_splits_cli(tmp_path, capsys):
    d = fake_cub(tmp_path / "CUB_200_2011")
    assert cli_main(fgvc_splits.main, ["CUB", str(d), "--val-size", "8", "--seed", "3"]) == 0
    out = capsys.readouterr()
    assert "REGENERATED" in out.out and "not VPT's split" in out.out and "seed 3" in out.out
    assert "sizes differ from VPT's" in out.err  # a 5-class fake is not the full dataset
    assert cli_main(fgvc_splits.main, ["cub", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "does not exist" in err[0]
    assert cli_main(fgvc_splits.main, ["cubb", str(d)]) == 2
    assert "Did you mean 'cub'" in capsys.readouterr().err
    (d / "image_class_labels.txt").unlink()
    assert cli_main(fgvc_splits.main, ["cub", str(d), "--val-size", "8"]) == 2
    assert "image_class_labels.txt" in capsys.readouterr().err


def test_stanford_dogs_cars_flowers_from_mat_files(tmp_path):
    import scipy.io

    rng = np.random.default_rng(0)
    # Stanford Dogs: lists/{train,test}_list.mat, images under Images/
    dogs = tmp_path / "StanfordDogs"
    files = {True: [], False: []}
    for c in range(1, 4):
        for j in range(6):
            rel = f"n0{c}-breed{c}/n0{c}_{j}.jpg"
            _img(dogs / "Images" / rel, rng)
            files[j < 4].append((rel, c))
    (dogs / "lists").mkdir()
    for name, is_train in (("train_list.mat", True), ("test_list.mat", False)):
        fl = np.empty((len(files[is_train]), 1), dtype=object)
        for i, (rel, _) in enumerate(files[is_train]):
            fl[i, 0] = np.array([rel])
        scipy.io.savemat(dogs / "lists" / name, {"file_list": fl, "annotation_list": fl,
                                                 "labels": np.array([[c] for _, c in files[is_train]], np.uint8)})
    sp, info = build_splits("stanford_dogs", dogs, seed=0, val_size=3)
    assert {k: len(v) for k, v in sp.items()} == {"train": 9, "val": 3, "test": 6}
    assert sp["test"]["n01-breed1/n01_5.jpg"] == 1 and set(sp["val"].values()) == {1, 2, 3}
    write_splits("stanford_dogs", dogs, val_size=3)
    s = load_split("stanford_dogs", tmp_path, "val", img_size=28, cache_dir=tmp_path / "c", strict_counts=False)
    assert len(s) == 3 and s.info["regenerated"] is True and Path(s.info["root"]) == dogs

    # Stanford Cars: devkit/cars_train_annos.mat + cars_test_annos_withlabels.mat, keys cars_{train,test}/x.jpg
    cars = tmp_path / "cars"
    (cars / "devkit").mkdir(parents=True)
    for sub, name, n in (("cars_train", "devkit/cars_train_annos.mat", 9), ("cars_test",
                                                                             "cars_test_annos_withlabels.mat", 6)):
        ann = np.zeros((1, n), dtype=[("bbox_x1", "O"), ("class", "O"), ("fname", "O")])
        for i in range(n):
            ann[0, i] = (np.array([[1]]), np.array([[i % 3 + 1]], np.uint8), np.array([f"{i:05d}.jpg"]))
            _img(cars / sub / f"{i:05d}.jpg", rng)
        scipy.io.savemat(cars / name, {"annotations": ann})
    sp, _ = build_splits("cars", cars, seed=0, val_size=3)
    assert {k: len(v) for k, v in sp.items()} == {"train": 6, "val": 3, "test": 6}
    assert sp["test"]["cars_test/00004.jpg"] == 2 and all(k.startswith("cars_train/") for k in sp["val"])
    write_splits("cars", cars, val_size=3)
    assert len(load_split("StanfordCars", cars, "test", img_size=28, cache_dir=tmp_path / "c",
                          strict_counts=False)) == 6

    # Oxford Flowers: imagelabels.mat + setid.mat, official split kept as is
    fl = tmp_path / "OxfordFlowers"
    fl.mkdir()
    labels = np.array([[1, 2, 3, 1, 2, 3, 1, 2, 3, 3]], np.uint8)
    for i in range(1, 11):
        _img(fl / "jpg" / f"image_{i:05d}.jpg", rng)
    scipy.io.savemat(fl / "imagelabels.mat", {"labels": labels})
    scipy.io.savemat(fl / "setid.mat", {"trnid": np.array([[1, 2, 3]]), "valid": np.array([[4, 5, 6]]),
                                        "tstid": np.array([[7, 8, 9, 10]])})
    sp, info = build_splits("oxford_flowers", fl)
    assert sp["test"] == {"jpg/image_00007.jpg": 1, "jpg/image_00008.jpg": 2, "jpg/image_00009.jpg": 3,
                          "jpg/image_00010.jpg": 3}
    assert list(sp["val"]) == ["jpg/image_00004.jpg", "jpg/image_00005.jpg", "jpg/image_00006.jpg"]
    assert "official setid.mat" in info["method"]


# ------------------------------------------------------------------------------------------- loading
def test_load_fgvc_label_map_splits_and_info(tmp_path):
    d = fake_cub(tmp_path / "CUB_200_2011")
    write_splits("cub", d, val_size=8)
    cache = tmp_path / "cache"
    kw = dict(img_size=28, cache_dir=cache, strict_counts=False)
    tr = load_split("cub", tmp_path, "train", **kw)  # parent of the alias-named folder
    va = load_split("CUB", d, "val", **kw)
    tv = load_split("cub", d, "trainval", **kw)
    te = load_split("cub", d, "test", **kw)
    assert (len(tr), len(va), len(tv), len(te)) == (42, 8, 50, 20)
    assert tr.num_classes == 5 and tr.info["class_ids"] == [1, 2, 3, 4, 5]
    assert tr.images.shape[1:] == (3, 32, 32) and tr.info["stored_size"] == 32  # round(256 * 28 / 224)
    train_json = _read(d, "train")
    keys = sorted(train_json)
    assert tr.labels.tolist() == [train_json[k] - 1 for k in keys]  # sorted union 1..5 -> 0..4
    assert tv.labels.tolist() == tr.labels.tolist() + va.labels.tolist()
    assert tr.info["regenerated"] is True and tr.info["split_info"]["seed"] == 0
    assert set(tr.info["sha256"]) == {"train.json", "val.json", "test.json"}
    assert tr.benchmark == "fgvc"
    # cached == fresh decode
    fresh = load_split("cub", d, "train", use_cache=False, **kw)
    assert torch.equal(fresh.images, tr.images)
    assert load_split("cub", d, "train", **kw).info["cache_hit"] is True


def test_fgvc_eval_equals_resize_centercrop(tmp_path):
    """Eval: stored Resize(R) + centre square, then CenterCrop(S) == torchvision Resize(R) -> CenterCrop(S)."""
    from torchvision import transforms as T

    d = fake_cub(tmp_path / "CUB_200_2011", n_classes=3, n_train=4, n_test=2)
    write_splits("cub", d, val_size=3)
    s = load_split("cub", d, "test", img_size=56, cache_dir=tmp_path / "c", strict_counts=False)  # R = 64
    x, _ = next(iter(Loader(s, 6, train=False, mean=(0, 0, 0), std=(1, 1, 1))))
    ref_t = T.Compose([T.Resize(64), T.CenterCrop(56)])
    keys = sorted(_read(d, "test"))
    for i, k in enumerate(keys):
        with Image.open(d / "images" / k) as im:
            ref = np.asarray(ref_t(im.convert("RGB"))).transpose(2, 0, 1)
        np.testing.assert_array_equal((x[i] * 255).round().to(torch.uint8).numpy(), ref)


def test_image_root_is_resolved_per_file(tmp_path):
    d = fake_cub(tmp_path / "CUB_200_2011", n_classes=3, n_train=4, n_test=2)
    write_splits("cub", d, val_size=3)
    keys = sorted(_read(d, "test"))
    # one file only at <root>/<key>, one only at <root>/Images/<key>
    for k, where in ((keys[0], d), (keys[1], d / "Images")):
        (where / k).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(d / "images" / k, where / k)
    s = load_split("cub", d, "test", img_size=28, cache_dir=tmp_path / "c", strict_counts=False)
    assert len(s) == 6


def test_fgvc_bad_inputs(tmp_path):
    cache = tmp_path / "cache"
    kw = dict(img_size=28, cache_dir=cache)
    d = fake_cub(tmp_path / "CUB_200_2011", n_classes=3, n_train=4, n_test=2)
    with pytest.raises(DataError, match=r"split file missing: .*train.json.*python -m data.fgvc_splits"):
        load_split("cub", d, "train", strict_counts=False, **kw)
    write_splits("cub", d, val_size=3)
    with pytest.raises(DataError, match="name 3 classes, 'cub' has 200"):
        load_split("cub", d, "train", **kw)  # strict: class count checked against data/tasks.py
    # JSON pointing at a missing image
    key = sorted(_read(d, "test"))[1]
    (d / "images" / key).unlink()
    with pytest.raises(DataError, match=rf"test.json lists '{key}' but no such image exists"):
        load_split("cub", d, "test", strict_counts=False, **kw)
    # a split lacking a class
    val = _read(d, "val")
    (d / "val.json").write_text(json.dumps({k: v for k, v in val.items() if v != 2}))
    with pytest.raises(DataError, match=r"val.json lacks 1 of 3 classes"):
        load_split("cub", d, "train", **kw)
    with pytest.warns(UserWarning, match=r"val.json lacks 1 of 3 classes"):
        s = load_split("cub", d, "train", strict_counts=False, **kw)
    assert s.num_classes == 3 and set(s.labels.tolist()) == {0, 1, 2}  # global map from the union
    (d / "val.json").write_text("{not json")
    with pytest.raises(DataError, match=r"cannot parse FGVC split file .*val.json"):
        load_split("cub", d, "train", strict_counts=False, **kw)
    (d / "val.json").write_text(json.dumps({"a.jpg": "bird"}))
    with pytest.raises(DataError, match=r"class id 'bird' of 'a.jpg' is not an integer"):
        load_split("cub", d, "train", strict_counts=False, **kw)
    with pytest.raises(DataError, match="unknown FGVC split 'train800'"):
        load_split("cub", d, "train800", strict_counts=False, **kw)
    with pytest.raises(DataError, match="FGVC dataset 'nabirds' not found"):
        load_split("nabirds", tmp_path, "train", strict_counts=False, **kw)
    # corrupt image: named; nothing cached
    write_splits("cub", d, val_size=3, check_images=False)
    key = sorted(_read(d, "train"))[0]
    (d / "images" / key).write_bytes(b"\xff\xd8 broken jpeg")
    before = sorted(cache_files(cache))
    with pytest.raises(DataError, match=r"cannot decode image .*" + key.split("/")[1]):
        load_split("cub", d, "train", strict_counts=False, **kw)
    assert sorted(cache_files(cache)) == before  # no entry (and no temp file) from the failed read


def test_results_record_a_regenerated_split_and_the_image_format(tmp_path):
    # docs/benchmarks.md §8: a regenerated FGVC split is not VPT's and must be labelled so in every result file, with
    # the image format; train.py's results.json takes both from the split (split_provenance)
    from engine.rundir import split_provenance

    d = fake_cub(tmp_path / "CUB_200_2011", n_classes=3, n_train=4, n_test=2)
    write_splits("cub", d, val_size=3)
    kw = dict(img_size=28, cache_dir=tmp_path / "c", strict_counts=False)
    prov = split_provenance({s: load_split("cub", d, s, **kw) for s in ("train", "test")})
    assert prov["train"]["regenerated"] is True and prov["test"]["regenerated"] is True
    assert prov["train"]["format"] == "jpg" and "train.json" in prov["train"]["sha256"]
    assert prov["train"]["resize"] == "bilinear"  # torchvision Resize(256)'s default, as the papers' loaders
    assert prov["train"]["n"] == 3 * 4 - 3 and prov["test"]["n"] == 3 * 2


def test_val_allocation_is_largest_remainder_after_the_one_per_class_minimum():
    # ideals 0.9 / 3.5 / 3.6 of 8: the small class is raised to 1 and has then used its share; the remaining 7 go
    # 3 / 4 by the others' remainders (the remainder of the raised class was counted again before: 2 / 3 / 3)
    items = [(f"a{i}", 0) for i in range(9)] + [(f"b{i}", 1) for i in range(35)] + [(f"c{i}", 2) for i in range(36)]
    for seed in range(3):
        val = stratified_val(items, 8, seed)
        assert [sum(k[0] == ch for k in val) for ch in "abc"] == [1, 3, 4]
