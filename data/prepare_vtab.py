"""VTAB-1k: convert from TFDS to the NOAH layout, and check any existing NOAH tree.

Check (no TensorFlow needed)::

    python -m data.prepare_vtab --check /data/vtab-1k            # all 19 tasks
    python -m data.prepare_vtab --check /data/vtab-1k --tasks cifar dtd --quick

per task: line counts 800 / 200 / 1000 / the task's test size, labels in [0, C), every image exists
and decodes (``--quick``: exists only), train800val200 covers all C classes (a warning: some
tasks may legitimately miss a class in 1,000 images), train800val200 == train800 + val200 by
pixel hash (multiset of SHA-256 of decoded pixels), and split files against ``manifest.json``
when present.  A task folder that passes the full check and has no ``manifest.json`` gets one (counts and
SHA-256 per split file, docs/benchmarks.md §2; ``--no-manifest`` to leave the tree untouched).  Prints a per-task
table; exit status 1 when any check fails, 2 on unusable input.

Convert (one-off, optional environment with ``tensorflow-datasets`` + ``tensorflow``; the
import is lazy and happens only here)::

    python -m data.prepare_vtab --task cifar --out /data/vtab-1k --format jpg --tfds-dir ~/tfds

``--format jpg`` (the default, BENCH-4) reproduces NOAH's converter: PIL ``Image.save`` of a
``.jpg`` with Pillow's defaults (quality 75, 4:2:0 subsampling) -- NOAH's ``get_vtab1k.py``
calls ``image.save(path)`` with no options.  ``--format png`` is lossless (NOAH#28: JPEG costs
CIFAR-100 several points).  The format and quality go into ``<task>/manifest.json`` with the
line count and SHA-256 of each split file.

Split definitions are VTAB's (``task_adaptation``, as used by NOAH's converter):
train800 = ``train[:800]``; val200 = 200 examples at the start of the task's validation part
(``train[k:k+200]`` with k = the VTAB train percentage of the TFDS train split, or
``validation[:200]`` / ``test[:200]`` where VTAB uses that split); train800val200 = their
concatenation; test = VTAB's test split.  See :data:`TFDS_TASKS`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from util import files
from util.cli import ArgumentParser

from . import cache as _cache
from .errors import DataError, cli_main
from .progress import progress
from .tasks import VTAB_NUM_CLASSES, VTAB_SPLIT_SIZES, VTAB_SPLITS, VTAB_TASKS, VTAB_TEST_SIZES, resolve_task

FORMATS = {"png": "png", "jpg": "jpg", "jpeg": "jpg"}
NOAH_JPEG_QUALITY = 75  # Pillow's default, what NOAH's get_vtab1k.py gets from image.save(path)


# ============================================================================================
# Writer: arrays -> NOAH layout (plain numpy, tested without TensorFlow)
# ============================================================================================
def encode_image(img: np.ndarray, fmt: str, quality: int = NOAH_JPEG_QUALITY) -> bytes:
    """(H, W, 3) or (H, W) or (H, W, 1) uint8 -> encoded bytes."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise DataError(f"images must be uint8, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    im = Image.fromarray(a)
    if im.mode != "RGB":
        im = im.convert("RGB")  # NOAH tiles grey images to 3 channels before saving
    buf = io.BytesIO()
    if fmt == "jpg":
        im.save(buf, format="JPEG", quality=quality)
    else:
        im.save(buf, format="PNG")
    return buf.getvalue()


def write_noah_task(root: str | os.PathLike, task: str, train800: Iterable[tuple[np.ndarray, int]],
                    val200: Iterable[tuple[np.ndarray, int]], test: Iterable[tuple[np.ndarray, int]], fmt: str = "jpg",
                    quality: int = NOAH_JPEG_QUALITY, source: dict[str, Any] | None = None,
                    strict_counts: bool = True) -> Path:
    """Write ``<root>/<task>/`` in the NOAH layout from (images, labels) pairs.

    Each split is an iterable of ``(uint8 image (H, W[, C]), label)`` pairs -- ``zip(images,
    labels)`` for arrays, a generator for streams (dSprites' test split has 73,728 images).  train800val200 is
    written as the concatenation train800 + val200 (files duplicated under ``images/train800val200/`` exactly
    as NOAH does).  Labels are range-checked against the class count of data/tasks.py.  Split files and
    the manifest are written atomically, last.  Each split reports on stderr (:func:`data.progress.progress`):
    ``writing <task> <split>: N images into <folder> ...`` then ``wrote <task> <split>: N images in T s (R img/s)``.
    """
    bench, canonical = resolve_task(task)
    if bench != "vtab":
        raise DataError(f"{task!r} is not a VTAB task")
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; use png or jpg")
    fmt = FORMATS[fmt]
    C = VTAB_NUM_CLASSES[canonical]
    task_dir = Path(root).expanduser() / canonical
    ext = "jpg" if fmt == "jpg" else "png"
    lines: dict[str, list[str]] = {}
    blobs_tv: list[bytes] = []
    labels_tv: list[int] = []

    def stage(split: str, total: int | None):  # one progress report per split (data.progress)
        return progress(total, f"writing {canonical} {split}", done=f"wrote {canonical} {split}",
                        detail=f"into {task_dir / 'images' / split}")

    def emit(split: str, pairs: Iterable[tuple[np.ndarray, int]], keep: bool) -> None:
        d = task_dir / "images" / split
        d.mkdir(parents=True, exist_ok=True)
        out: list[str] = []
        want = VTAB_SPLIT_SIZES.get(split, VTAB_TEST_SIZES[canonical]) if strict_counts else None
        with stage(split, len(pairs) if hasattr(pairs, "__len__") else want) as p:  # a generator has no len
            for i, (img, y) in enumerate(pairs):
                y = int(y)
                if not 0 <= y < C:
                    raise DataError(f"{canonical}/{split}[{i}]: label {y} out of range [0, {C})")
                blob = encode_image(img, fmt, quality)
                rel = f"images/{split}/{i:06d}.{ext}"
                (task_dir / rel).write_bytes(blob)
                out.append(f"{rel} {y}")
                if keep:
                    blobs_tv.append(blob)
                    labels_tv.append(y)
                p.update(1)
        lines[split] = out

    emit("train800", train800, keep=True)
    emit("val200", val200, keep=True)
    emit("test", test, keep=False)
    d = task_dir / "images" / "train800val200"
    d.mkdir(parents=True, exist_ok=True)
    tv = []
    with stage("train800val200", len(blobs_tv)) as p:
        for i, (blob, y) in enumerate(zip(blobs_tv, labels_tv)):
            rel = f"images/train800val200/{i:06d}.{ext}"
            (task_dir / rel).write_bytes(blob)
            tv.append(f"{rel} {y}")
            p.update(1)
    lines["train800val200"] = tv
    if strict_counts:
        for s, want in (*VTAB_SPLIT_SIZES.items(), ("test", VTAB_TEST_SIZES[canonical])):
            if len(lines[s]) != want:
                raise DataError(f"{canonical}/{s}: got {len(lines[s])} examples, VTAB-1k needs {want} (a TFDS "
                                f"version other than the one docs/benchmarks.md names? docs/benchmarks.md §2)")
    manifest: dict[str, Any] = {"task": canonical, "format": fmt, "jpeg_quality": quality if fmt == "jpg" else None,
                                "num_classes": C, "created_by": "data.prepare_vtab", "source": source or {},
                                "splits": {}}
    for s in VTAB_SPLITS:
        text = "\n".join(lines[s]) + "\n"
        files.write_text_atomic(task_dir / f"{s}.txt", text)
        manifest["splits"][s] = {"n": len(lines[s]), "sha256": files.sha256_bytes(text.encode())}
    _cache.write_json_atomic(task_dir / "manifest.json", manifest)
    return task_dir


# ============================================================================================
# Checker
# ============================================================================================
@dataclass
class TaskReport:
    task: str
    folder: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    classes_tv: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    union_ok: bool | None = None
    format: str = ""
    manifest_written: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors


def _pixel_hash(path: Path) -> str:
    from .split import open_rgb

    im = open_rgb(path)
    return hashlib.sha256(f"{im.size}".encode() + im.tobytes()).hexdigest()


def check_task(task_dir: Path, canonical: str, strict_counts: bool = True, decode: bool = True,
               write_manifest: bool = True) -> TaskReport:
    """The checks of docs/benchmarks.md §2 on one task folder. A folder that passes them in full (``decode``) and has no
    ``manifest.json`` gets one (counts and SHA-256 per split file, format), so later runs and checks can tell
    whether its split files changed."""
    from .split import image_format
    from .vtab import _maybe_resolve, read_split_file

    rep = TaskReport(canonical, str(task_dir))
    C = VTAB_NUM_CLASSES[canonical]
    parsed: dict[str, tuple[list[str], list[int]]] = {}
    for s in VTAB_SPLITS:
        try:
            parsed[s] = read_split_file(task_dir / f"{s}.txt", C, canonical)
        except DataError as e:
            rep.errors.append(str(e))
            continue
        n = len(parsed[s][0])
        rep.counts[s] = n
        want = VTAB_SPLIT_SIZES.get(s, VTAB_TEST_SIZES[canonical])
        if strict_counts and n != want:
            rep.errors.append(f"{s}.txt has {n} lines, expected {want}")
    all_paths = [task_dir / r for s in parsed for r in parsed[s][0]]
    rep.format = image_format(all_paths)
    total = sum(len(rels) for rels, _ in parsed.values())
    with progress(total, f"checking {canonical}", done=f"checked {canonical}", start_line=False) as bar:
        # one line per task off a terminal; counts the listed image files (--quick: existence, then the union's
        # decodes run after the count is full)
        bad = 0
        hashes: dict[str, str] = {}  # relative path -> pixel hash: each file is decoded once (train800val200 = others)
        for s, (rels, _) in parsed.items():
            for i, r in enumerate(rels):
                p = task_dir / r
                try:
                    if decode:
                        if r not in hashes:
                            hashes[r] = _pixel_hash(p)
                    elif not p.is_file():
                        raise FileNotFoundError(p)
                except Exception as e:  # missing / corrupt
                    bad += 1
                    if bad <= 5:
                        what = "missing" if isinstance(e, FileNotFoundError) else f"unreadable ({type(e).__name__})"
                        rep.errors.append(f"{s}.txt:{i + 1}: {r} {what}")
                bar.update(1)
        if bad > 5:
            rep.errors.append(f"... {bad} bad image files in total")
        if "train800val200" in parsed:
            rep.classes_tv = len(set(parsed["train800val200"][1]))
            if rep.classes_tv != C:
                rep.warnings.append(f"train800val200 covers {rep.classes_tv} of {C} classes")
        if bad == 0 and all(s in parsed for s in ("train800", "val200", "train800val200")):
            unreadable: list[str] = []

            def multiset(split: str) -> Counter:  # decodes what the loop above did not (all under --quick)
                rels, labs = parsed[split]
                out = Counter()
                for i, (r, y) in enumerate(zip(rels, labs)):
                    try:
                        if r not in hashes:
                            hashes[r] = _pixel_hash(task_dir / r)
                        out[(hashes[r], y)] += 1
                    except Exception as e:  # noqa: BLE001 - a corrupt image is a finding of the check, not a crash
                        unreadable.append(f"{split}.txt:{i + 1}: {r} unreadable ({type(e).__name__})")
                return out

            union = multiset("train800") + multiset("val200") == multiset("train800val200")
            if unreadable:
                rep.errors += unreadable[:5] + ([f"... {len(unreadable)} unreadable image files in total"]
                                                 if len(unreadable) > 5 else [])
            else:
                rep.union_ok = union
                if not union:
                    rep.errors.append("train800val200 != train800 + val200 (pixel hashes and labels)")
    manifest = task_dir / "manifest.json"
    if manifest.is_file():
        try:
            m = json.loads(manifest.read_text())
            named = m.get("task")
            if named and ((_maybe_resolve(named) or ("", named))[1]) != canonical:
                rep.errors.append(f"manifest.json names task {named!r}, not {canonical!r}: another task's folder")
            if m.get("num_classes") not in (None, C):
                rep.errors.append(f"manifest.json says {m['num_classes']} classes, {canonical!r} has {C}")
            for s, entry in (m.get("splits") or {}).items():
                f = task_dir / f"{s}.txt"
                if f.is_file() and entry.get("sha256") and files.sha256_file(f) != entry["sha256"]:
                    rep.errors.append(f"{s}.txt does not match manifest.json (sha256)")
            if m.get("format"):
                rep.format = f"{m['format']}" + (f" q{m['jpeg_quality']}" if m.get("jpeg_quality") else "")
        except (OSError, json.JSONDecodeError) as e:
            rep.errors.append(f"unreadable manifest.json: {e}")
    elif write_manifest and decode and rep.ok:  # docs/benchmarks.md §2: the verified tree gets its manifest
        m = {"task": canonical, "format": rep.format, "jpeg_quality": None, "num_classes": C,
             "created_by": "data.prepare_vtab --check (an existing tree, verified)",
             "splits": {s: {"n": rep.counts[s], "sha256": files.sha256_file(task_dir / f"{s}.txt")} for s in parsed}}
        try:
            _cache.write_json_atomic(manifest, m)
            rep.manifest_written = True
        except OSError as e:
            rep.warnings.append(f"could not write manifest.json ({e.strerror or e})")
    return rep


def check_tree(root: str | os.PathLike, tasks: Sequence[str] | None = None, strict_counts: bool = True,
               decode: bool = True, write_manifest: bool = True) -> list[TaskReport]:
    """Check the named tasks (default: all 19) under ``root``; a missing task is an error row."""
    from .vtab import find_task_dir

    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"VTAB root {str(root)!r} does not exist or is not a folder")
    names = [resolve_task(t) for t in tasks] if tasks else [("vtab", t) for t in VTAB_TASKS]
    reports = []
    for bench, canonical in names:
        if bench != "vtab":
            raise DataError(f"{canonical!r} is not a VTAB task; the checker handles VTAB-1k trees")
        try:
            d = find_task_dir(root, canonical)
        except DataError as e:
            reports.append(TaskReport(canonical, errors=[str(e).split(":")[0] + ": folder not found"]))
            continue
        reports.append(check_task(d, canonical, strict_counts, decode, write_manifest))
    return reports


def format_table(reports: Sequence[TaskReport]) -> str:
    head = f"{'task':22s} {'train800':>8s} {'val200':>6s} {'t8v2':>5s} {'test':>6s} {'cls':>4s} {'union':>5s} " \
           f"{'format':8s} status"
    rows = [head, "-" * len(head)]
    for r in reports:
        c = r.counts
        union = {None: "-", True: "ok", False: "BAD"}[r.union_ok]
        status = "ok" if r.ok else "FAIL: " + "; ".join(r.errors)
        if r.warnings:
            status += " (warning: " + "; ".join(r.warnings) + ")"
        cls = f"{r.classes_tv}" if r.counts else "-"
        rows.append(f"{r.task:22s} {c.get('train800', '-')!s:>8s} {c.get('val200', '-')!s:>6s} "
                    f"{c.get('train800val200', '-')!s:>5s} {c.get('test', '-')!s:>6s} {cls:>4s} {union:>5s} "
                    f"{r.format[:8]:8s} {status}")
    n_ok = sum(r.ok for r in reports)
    rows.append(f"{n_ok}/{len(reports)} tasks ok")
    return "\n".join(rows)


# ============================================================================================
# TFDS shim (lazy import; the only place TensorFlow is touched)
# ============================================================================================
@dataclass(frozen=True)
class TfdsTask:
    tfds_name: str
    scheme: str                 # 'pct_train' | 'official_val' | 'pct_all' | 'test_half'
    train_pct: int = 0          # VTAB's train percentage (pct_train / pct_all)
    val_pct: int = 0            # pct_all: validation percentage
    test_split: str = "test"    # pct_train: TFDS split used as test ('validation' for CLEVR)
    label: str = "label"        # label key or a named label function in LABEL_FNS


# From task_adaptation/data/*.py as vendored in ZhangYuanhan-AI/NOAH data/vtab-source.
TFDS_TASKS: dict[str, TfdsTask] = {
    "cifar": TfdsTask("cifar100:3.*.*", "pct_train", 90),
    "caltech101": TfdsTask("caltech101:3.*.*", "pct_train", 90),
    "dtd": TfdsTask("dtd:3.*.*", "official_val"),
    "oxford_flowers102": TfdsTask("oxford_flowers102:2.*.*", "official_val"),
    "oxford_iiit_pet": TfdsTask("oxford_iiit_pet:3.*.*", "pct_train", 80),
    "svhn": TfdsTask("svhn_cropped:3.*.*", "pct_train", 90),
    "sun397": TfdsTask("sun397/tfds:4.*.*", "official_val"),
    "patch_camelyon": TfdsTask("patch_camelyon:2.*.*", "official_val"),
    "eurosat": TfdsTask("eurosat/rgb:2.*.*", "pct_all", 60, 20),
    "resisc45": TfdsTask("resisc45:3.*.*", "pct_all", 60, 20),
    "diabetic_retinopathy": TfdsTask("diabetic_retinopathy_detection/btgraham-300:3.*.*", "official_val"),
    "clevr_count": TfdsTask("clevr:3.*.*", "pct_train", 90, test_split="validation", label="clevr_count"),
    "clevr_dist": TfdsTask("clevr:3.*.*", "pct_train", 90, test_split="validation", label="clevr_dist"),
    "dmlab": TfdsTask("dmlab:2.0.1", "official_val"),
    "kitti": TfdsTask("kitti:3.2.0", "official_val", label="kitti_closest_vehicle"),
    "dsprites_loc": TfdsTask("dsprites:2.*.*", "pct_all", 80, 10, label="dsprites_loc"),
    "dsprites_ori": TfdsTask("dsprites:2.*.*", "pct_all", 80, 10, label="dsprites_ori"),
    "smallnorb_azi": TfdsTask("smallnorb:2.*.*", "test_half", label="label_azimuth"),
    "smallnorb_ele": TfdsTask("smallnorb:2.*.*", "test_half", label="label_elevation"),
}


def tfds_split_strings(task: str, n_train: int) -> dict[str, str]:
    """TFDS split strings of train800 / val200 / test (``n_train``: examples in TFDS 'train')."""
    _, canonical = resolve_task(task)
    t = TFDS_TASKS[canonical]
    if t.scheme == "pct_train":
        k = t.train_pct * n_train // 100
        return {"train800": "train[:800]", "val200": f"train[{k}:{k + 200}]", "test": t.test_split}
    if t.scheme == "official_val":
        return {"train800": "train[:800]", "val200": "validation[:200]", "test": "test"}
    if t.scheme == "pct_all":
        k = t.train_pct * n_train // 100
        v = t.val_pct * n_train // 100
        return {"train800": "train[:800]", "val200": f"train[{k}:{k + 200}]", "test": f"train[{k + v}:]"}
    if t.scheme == "test_half":
        return {"train800": "train[:800]", "val200": "test[:200]", "test": "test[50%:]"}
    raise ValueError(t.scheme)  # pragma: no cover


def _clevr_count(ex: dict) -> int:
    return int(np.size(ex["objects"]["size"])) - 3


def _clevr_dist(ex: dict) -> int:
    dist = float(np.min(ex["objects"]["pixel_coords"][:, 2]))
    thrs = np.array([0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0])
    return int(np.max(np.where((thrs - dist) < 0)[0]))


def _kitti_closest_vehicle(ex: dict) -> int:
    obj = ex["objects"]
    z = np.asarray(obj["location"], dtype=np.float64).reshape(-1, 3)[:, 2]
    vehicles = np.asarray(obj["type"]).reshape(-1) < 3  # Car, Van, Truck
    dist = float(np.min(np.concatenate([z[vehicles], [1000.0]])))
    thrs = np.array([-100.0, 8.0, 20.0, 999.0])
    return int(np.max(np.where((thrs - dist) < 0)[0]))


def _dsprites(attr: str, n_orig: int, n_cls: int) -> Callable[[dict], int]:
    factor = float(n_orig) / n_cls
    return lambda ex: int(np.floor(float(ex[attr]) / factor))


LABEL_FNS: dict[str, Callable[[dict], int]] = {
    "clevr_count": _clevr_count,
    "clevr_dist": _clevr_dist,
    "kitti_closest_vehicle": _kitti_closest_vehicle,
    "dsprites_loc": _dsprites("label_x_position", 32, 16),
    "dsprites_ori": _dsprites("label_orientation", 40, 16),
}


def example_to_pair(task: str, ex: dict) -> tuple[np.ndarray, int]:
    """A TFDS numpy example -> (H, W, 3) uint8 image, label (VTAB's preprocessing)."""
    _, canonical = resolve_task(task)
    t = TFDS_TASKS[canonical]
    img = np.asarray(ex["image"])
    if canonical.startswith("dsprites"):
        img = img.astype(np.uint8) * 255  # dSprites pixels are {0, 1}
    if img.ndim == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    label = LABEL_FNS[t.label](ex) if t.label in LABEL_FNS else int(ex[t.label])
    return img.astype(np.uint8), label


def convert_from_tfds(task: str, out_root: str | os.PathLike, fmt: str = "jpg", tfds_dir: str | None = None,
                      quality: int = NOAH_JPEG_QUALITY) -> Path:  # pragma: no cover - needs TensorFlow + data
    """Thin shim: TFDS examples -> :func:`example_to_pair` -> :func:`write_noah_task`."""
    try:
        import tensorflow_datasets as tfds  # lazy: never imported at train time
    except ImportError:
        raise DataError("converting needs tensorflow-datasets (and tensorflow) in a separate environment: "
                        "pip install tensorflow tensorflow-datasets; checking a tree (--check) does not") from None
    _, canonical = resolve_task(task)
    t = TFDS_TASKS[canonical]
    builder = tfds.builder(t.tfds_name, data_dir=tfds_dir)
    builder.download_and_prepare()
    strings = tfds_split_strings(canonical, builder.info.splits["train"].num_examples)

    def pairs(split: str):
        ds = builder.as_dataset(split=strings[split], shuffle_files=False)
        return (example_to_pair(canonical, ex) for ex in tfds.as_numpy(ds))

    source = {"tfds_name": t.tfds_name, "tfds_version": str(builder.info.version), "splits": strings,
              "tfds_package": getattr(tfds, "__version__", "?")}
    return write_noah_task(out_root, canonical, pairs("train800"), pairs("val200"), pairs("test"), fmt=fmt,
                           quality=quality, source=source)


# ============================================================================================
# CLI
# ============================================================================================
def main(argv: Sequence[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m data.prepare_vtab", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", metavar="ROOT", help="verify an existing NOAH tree and print a per-task table")
    ap.add_argument("--tasks", nargs="+", help="tasks to check / convert (any alias; default: all 19)")
    ap.add_argument("--task", help="task to convert (same as --tasks with one name)")
    ap.add_argument("--quick", action="store_true", help="check: only test that image files exist (no decoding)")
    ap.add_argument("--no-strict-counts", action="store_true", help="check: do not require 800/200/1000/test sizes")
    ap.add_argument("--no-manifest", action="store_true", help="check: do not write manifest.json into a verified "
                                                                "task folder that has none")
    ap.add_argument("--out", help="convert: output root (the folder that will hold <task>/)")
    ap.add_argument("--format", default="jpg", choices=sorted(FORMATS), help="convert: jpg (NOAH, default) or png")
    ap.add_argument("--quality", type=int, default=NOAH_JPEG_QUALITY, help="convert: JPEG quality (NOAH: 75)")
    ap.add_argument("--tfds-dir", help="convert: TFDS data_dir")
    a = ap.parse_args(argv)
    tasks = a.tasks or ([a.task] if a.task else None)
    if a.check:
        reports = check_tree(a.check, tasks, strict_counts=not a.no_strict_counts, decode=not a.quick,
                             write_manifest=not a.no_manifest)
        print(format_table(reports))
        return 0 if all(r.ok for r in reports) else 1
    if not a.out:
        ap.error("give --check ROOT, or --out ROOT (with --task) to convert from TFDS")
    for t in tasks or VTAB_TASKS:
        d = convert_from_tfds(t, a.out, FORMATS[a.format], a.tfds_dir, a.quality)
        print(f"{t}: wrote {d}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli_main(main))
