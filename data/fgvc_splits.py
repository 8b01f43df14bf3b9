"""Regenerate VPT-style FGVC split files from each dataset's own train/test lists.

    python -m data.fgvc_splits cub /data/CUB_200_2011 [--seed 0] [--val-size N] [--force]

VPT's ``{train,val,test}.json`` are no longer downloadable (KMnP/vpt#52 #67 #72 #73), so this
writes a **regenerated split -- not VPT's**.  The official test list becomes ``test.json``; the
official train list is divided into ``train.json`` and ``val.json`` with VPT's val sizes
(CUB 600, NABirds 2,393, Stanford Dogs 1,200, Stanford Cars 815; Oxford Flowers keeps its
official train/val/test from ``setid.mat``, as VPT did).  VPT's val membership cannot be
reproduced; results on these files must be labelled ``split=regenerated``
(``split_info.json`` records it, and ``load_split`` reports ``info['regenerated']``).

How val is drawn (deterministic, independent of numpy's RNG implementation):
stratified by class so that every split contains every class (BENCH-5; a plain random 10 %
would leave some of CUB's 200 classes out of val): class c gets ``round(V * n_c / N)`` val
images by largest remainder, at least 1 and at most ``n_c - 1``; within a class the images with
the smallest ``sha256(f"{seed}:{key}")`` are taken.

Sources read (image keys are written relative to the folder the loader resolves them in):

============== ============================================================= =================
dataset        files                                                         keys relative to
============== ============================================================= =================
cub, nabirds   images.txt, image_class_labels.txt, train_test_split.txt      ``images/``
stanford_dogs  train_list.mat, test_list.mat (root or ``lists/``; scipy)     ``Images/``
stanford_cars  cars_train_annos.mat, cars_test_annos_withlabels.mat          root
               (root or ``devkit/``); images in cars_train/, cars_test/
oxford_flowers imagelabels.mat, setid.mat; images in jpg/                    root
============== ============================================================= =================

Values in the JSON files are the dataset's own class ids (1-based for all five); the loader maps
the sorted union to 0..C-1.  Existing split files that are not marked as regenerated (e.g. VPT's
originals) are never overwritten unless ``--force`` is given.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from util import files
from util.cli import ArgumentParser

from . import cache as _cache
from .errors import DataError, cli_main
from .tasks import FGVC_DATASETS, FGVC_SPLIT_SIZES, resolve_task

VPT_VAL_SIZES = {"cub": 600, "nabirds": 2393, "stanford_dogs": 1200, "stanford_cars": 815}


# -------------------------------------------------------------------------------------------- readers
def _need(root: Path, names: Sequence[str], what: str) -> Path:
    for n in names:
        if (root / n).is_file():
            return root / n
    raise DataError(f"{what}: none of {', '.join(str(root / n) for n in names)} exists; extract the dataset's "
                    f"official archive into {root}")


def _read_table(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: expected '<id> <value>', got {line!r}")
        out[parts[0]] = parts[1].strip()
    return out


def read_cub_style(root: Path) -> list[tuple[str, int, bool]]:
    """CUB-200-2011 / NABirds: (key relative to images/, class id, is_train)."""
    images = _read_table(_need(root, ["images.txt"], "image list"))
    labels = _read_table(_need(root, ["image_class_labels.txt"], "class labels"))
    split = _read_table(_need(root, ["train_test_split.txt"], "train/test split"))
    out = []
    for iid, rel in images.items():
        if iid not in labels or iid not in split:
            raise DataError(f"image id {iid} of images.txt has no entry in image_class_labels.txt or "
                            f"train_test_split.txt under {root}; the files are from different versions")
        out.append((rel, int(labels[iid]), split[iid].strip() == "1"))
    return out


def _loadmat(path: Path) -> dict:
    import scipy.io

    try:
        return scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=True)
    except Exception as e:
        raise DataError(f"cannot read {path}: {type(e).__name__}: {e}; re-download the dataset's lists") from None


def _as_list(x: Any) -> list:
    import numpy as np

    a = np.atleast_1d(np.asarray(x, dtype=object))
    return [v.item() if hasattr(v, "item") and getattr(v, "size", 1) == 1 else v for v in a.ravel()]


def read_stanford_dogs(root: Path) -> list[tuple[str, int, bool]]:
    out = []
    for name, is_train in (("train_list.mat", True), ("test_list.mat", False)):
        m = _loadmat(_need(root, [name, f"lists/{name}"], f"Stanford Dogs {name}"))
        files, labs = _as_list(m["file_list"]), _as_list(m["labels"])
        if len(files) != len(labs):
            raise DataError(f"{name}: file_list and labels differ in length")
        out += [(str(f), int(y), is_train) for f, y in zip(files, labs)]
    return out


def read_stanford_cars(root: Path) -> list[tuple[str, int, bool]]:
    out = []
    for names, sub, is_train in ((["devkit/cars_train_annos.mat", "cars_train_annos.mat"], "cars_train", True),
                                 (["cars_test_annos_withlabels.mat", "devkit/cars_test_annos_withlabels.mat"],
                                  "cars_test", False)):
        m = _loadmat(_need(root, names, f"Stanford Cars {names[0]}"))
        ann = m["annotations"]
        if "class" not in (ann.dtype.names or ()):
            raise DataError(f"{names[0]} has no 'class' field; the test labels are in "
                            f"cars_test_annos_withlabels.mat (from the devkit update)")
        fnames, classes = _as_list(ann["fname"]), _as_list(ann["class"])
        out += [(f"{sub}/{f}", int(c), is_train) for f, c in zip(fnames, classes)]
    return out


def read_oxford_flowers(root: Path) -> list[tuple[str, int, str]]:
    labels = _as_list(_loadmat(_need(root, ["imagelabels.mat"], "Oxford Flowers labels"))["labels"])
    setid = _loadmat(_need(root, ["setid.mat"], "Oxford Flowers split"))
    out = []
    for field_, split in (("trnid", "train"), ("valid", "val"), ("tstid", "test")):
        for i in _as_list(setid[field_]):
            i = int(i)
            out.append((f"jpg/image_{i:05d}.jpg", int(labels[i - 1]), split))
    return out


# -------------------------------------------------------------------------------------------- split
def _h(seed: int, s: str) -> str:
    return hashlib.sha256(f"{seed}:{s}".encode()).hexdigest()


def stratified_val(items: Sequence[tuple[str, int]], val_size: int, seed: int) -> set[str]:
    """Keys of a class-stratified val subset of ``items`` ((key, class)) with ``val_size`` keys."""
    by_class: dict[int, list[str]] = defaultdict(list)
    for k, c in items:
        by_class[c].append(k)
    classes = sorted(by_class)
    N = len(items)
    if val_size < len(classes):
        raise DataError(f"val size {val_size} < {len(classes)} classes: every class cannot appear in val")
    small = [c for c in classes if len(by_class[c]) < 2]
    if small:
        raise DataError(f"classes {small[:5]} have < 2 training images: cannot put them in both train and val")
    if val_size > N - len(classes):
        raise DataError(f"val size {val_size} leaves fewer than one training image per class (N={N})")
    ideal = {c: val_size * len(by_class[c]) / N for c in classes}
    alloc = {c: min(max(1, math.floor(ideal[c])), len(by_class[c]) - 1) for c in classes}
    rest = val_size - sum(alloc.values())
    while rest != 0:
        # largest remainder against what each class already has (a class raised to its minimum of 1 has used its
        # share): add to the classes furthest below their ideal, take from those furthest above it
        order = sorted(classes, key=lambda c: (-(ideal[c] - alloc[c]), _h(seed, f"class:{c}")))
        moved = False
        for c in order if rest > 0 else reversed(order):
            if rest > 0 and alloc[c] < len(by_class[c]) - 1:
                alloc[c] += 1
                rest -= 1
                moved = True
            elif rest < 0 and alloc[c] > 1:
                alloc[c] -= 1
                rest += 1
                moved = True
            if rest == 0:
                break
        if not moved:  # pragma: no cover - excluded by the checks above
            raise DataError("cannot allocate the val split")
    val: set[str] = set()
    for c in classes:
        val.update(sorted(by_class[c], key=lambda k: _h(seed, k))[:alloc[c]])
    return val


def build_splits(dataset: str, root: str | Path, seed: int = 0,
                 val_size: int | None = None) -> tuple[dict[str, dict[str, int]], dict[str, Any]]:
    """Return ({'train'|'val'|'test': {key: class id}}, split_info) without writing anything."""
    _, canonical = resolve_task(dataset)
    if canonical not in FGVC_DATASETS:
        raise DataError(f"{dataset!r} is not an FGVC dataset; valid: {', '.join(FGVC_DATASETS)}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder {str(root)!r} does not exist")
    splits: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
    if canonical == "oxford_flowers":
        for k, c, s in read_oxford_flowers(root):
            splits[s][k] = c
        method = "official setid.mat train/val/test (same membership as VPT's Flowers split)"
        val_n = len(splits["val"])
    else:
        reader = read_cub_style if canonical in ("cub", "nabirds") else (
            read_stanford_dogs if canonical == "stanford_dogs" else read_stanford_cars)
        rows = reader(root)
        train = [(k, c) for k, c, t in rows if t]
        val_n = VPT_VAL_SIZES[canonical] if val_size is None else int(val_size)
        val = stratified_val(train, val_n, seed)
        for k, c in train:
            splits["val" if k in val else "train"][k] = c
        for k, c, t in rows:
            if not t:
                splits["test"][k] = c
        method = "class-stratified sample of the official train list (sha256-ranked within class)"
    if not all(splits.values()):
        raise DataError(f"{root}: an empty split ({', '.join(f'{s}={len(v)}' for s, v in splits.items())}); "
                        f"are the dataset lists complete?")
    info = {"split": "regenerated", "regenerated": True, "dataset": canonical, "seed": seed,
            "val_size": val_n, "method": method,
            "sizes": {s: len(v) for s, v in splits.items()},
            "vpt_sizes": FGVC_SPLIT_SIZES[canonical],
            "note": "NOT VPT's split: VPT's JSON files are no longer downloadable; label results split=regenerated",
            "created_by": "python -m data.fgvc_splits"}
    return {s: dict(sorted(v.items())) for s, v in splits.items()}, info


def write_splits(dataset: str, root: str | Path, seed: int = 0, val_size: int | None = None,
                 force: bool = False, check_images: bool = True) -> dict[str, Any]:
    """Build and write ``{train,val,test}.json`` + ``split_info.json`` into ``root`` (atomically)."""
    from .fgvc import resolve_image

    root = Path(root).expanduser()
    splits, info = build_splits(dataset, root, seed, val_size)
    existing = [root / f"{s}.json" for s in splits if (root / f"{s}.json").exists()]
    if existing and not force:
        try:
            prev = json.loads((root / "split_info.json").read_text())
        except (OSError, json.JSONDecodeError):
            prev = {}
        if not prev.get("regenerated"):
            raise DataError(f"{existing[0]} exists and is not marked as regenerated (it may be VPT's original); "
                            f"refusing to overwrite -- move it away or pass --force")
    if check_images:
        for s, d in splits.items():
            for k in d:
                resolve_image(root, k, root / f"{s}.json")  # DataError naming the missing image
    shas = {}
    for s, d in splits.items():
        text = json.dumps(d, indent=0, sort_keys=True) + "\n"
        files.write_text_atomic(root / f"{s}.json", text)
        shas[f"{s}.json"] = files.sha256_bytes(text.encode())
    info["sha256"] = shas
    _cache.write_json_atomic(root / "split_info.json", info)
    return info


def main(argv: Sequence[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m data.fgvc_splits", description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", help=f"one of {', '.join(FGVC_DATASETS)} (or an alias)")
    ap.add_argument("root", help="the extracted dataset folder (e.g. .../CUB_200_2011)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-size", type=int, help="override VPT's val size")
    ap.add_argument("--force", action="store_true", help="overwrite split files not marked as regenerated")
    a = ap.parse_args(argv)
    info = write_splits(a.dataset, a.root, a.seed, a.val_size, a.force)
    sz = info["sizes"]
    print(f"{info['dataset']}: wrote REGENERATED split (seed {a.seed}) to {a.root}: train {sz['train']} / "
          f"val {sz['val']} / test {sz['test']} (VPT: {info['vpt_sizes']['train']} / {info['vpt_sizes']['val']} / "
          f"{info['vpt_sizes']['test']}). This is not VPT's split; results are labelled split=regenerated.")
    if sz != info["vpt_sizes"]:
        print(f"warning: sizes differ from VPT's {info['vpt_sizes']} -- incomplete dataset lists?", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli_main(main))
