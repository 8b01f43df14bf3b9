"""VTAB-1k in the NOAH layout (docs/benchmarks.md §2).

    <root>/<task>/{train800,val200,train800val200,test}.txt     lines: "<relative path> <label>"
    <root>/<task>/images/<split>/NNNNNN.jpg                     (paths relative to <root>/<task>/)

The task folder may be named by any alias (``<root>/cifar100/``); ``root`` may also be the task
folder itself.  Preprocessing is resize-only, as in the papers: PIL ``.convert('RGB')`` then
``Resize((img_size, img_size))`` bicubic (ARC, SNELL, RLRR, FacT, PETL_Vision), done once and
cached as uint8; normalisation happens later in :class:`data.Loader`.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from util import files

from . import cache as _cache
from .errors import DataError
from .split import Split, cached_decode, image_format, resize_square, stat_fingerprint
from .tasks import (DEMO_NUM_CLASSES, VTAB_NUM_CLASSES, VTAB_SPLIT_SIZES, VTAB_SPLITS, VTAB_TEST_SIZES,
                    aliases, resolve_task)

# 'train' / 'val' are not accepted for VTAB on purpose: which one is meant depends on the protocol.
SPLIT_ALIASES = {"trainval": "train800val200", "train800val200": "train800val200",
                 "train800": "train800", "val200": "val200", "test": "test"}


def _maybe_resolve(name: str) -> tuple[str, str] | None:
    try:
        return resolve_task(name)
    except DataError:
        return None


def _manifest_task(task_dir: Path) -> str | None:
    """The task a converter's manifest.json names (canonical id), or None without a readable one."""
    try:
        task = json.loads((task_dir / "manifest.json").read_text()).get("task")
    except (OSError, ValueError, AttributeError):
        return None
    r = _maybe_resolve(task) if isinstance(task, str) else None
    return r[1] if r else None


def find_task_dir(root: str | Path, canonical: str, benchmark: str = "vtab") -> Path:
    """Locate ``<root>/<task>`` (folder named by the id or any alias, case-insensitive), or
    accept ``root`` itself when it already is the task folder."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{benchmark.upper()} root {str(root)!r} does not exist or is not a folder; pass the folder "
                        f"that contains the task folders (e.g. <root>/{canonical}/train800.txt)")
    if any((root / f"{s}.txt").is_file() for s in VTAB_SPLITS):  # root may be the task folder itself
        r = _maybe_resolve(root.name)
        said = _manifest_task(root)
        if (r is not None and r[1] == canonical and said in (None, canonical)) or (r is None and said == canonical):
            return root
        if r is None and said is None:  # which task it holds cannot be told: never serve it as any task asked for
            raise DataError(f"{root} holds split files, but its name {root.name!r} is no VTAB task id and it has no "
                            f"manifest.json naming its task; rename it to {canonical!r} or pass the folder that "
                            f"contains the task folders")
    exact = root / canonical
    matches = sorted(d for d in root.iterdir() if d.is_dir() and (_maybe_resolve(d.name) or ("", ""))[1] == canonical)
    if exact.is_dir():
        if len(matches) > 1:
            warnings.warn(f"several folders under {root} name task {canonical!r}: "
                          f"{', '.join(d.name for d in matches)}; using {exact.name!r}")
        return exact
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise DataError(f"several folders under {root} name task {canonical!r}: "
                        f"{', '.join(d.name for d in matches)}; keep one (or rename one to {canonical!r})")
    present = sorted(d.name for d in root.iterdir() if d.is_dir())
    shown = ", ".join(present[:25]) + (" ..." if len(present) > 25 else "") if present else "none"
    raise DataError(f"task {canonical!r} not found under {root}: looked for a folder named "
                    f"{' / '.join(aliases(canonical)[:6])} (any case); folders present: {shown}. "
                    f"Convert it with python -m data.prepare_vtab --task {canonical} --out {root}")


def read_split_file(path: Path, num_classes: int, task: str) -> tuple[list[str], list[int]]:
    """Parse a NOAH split file; every problem names ``path:line``."""
    if not path.is_file():
        raise DataError(f"split file missing: {path}; the NOAH layout needs "
                        f"{', '.join(s + '.txt' for s in VTAB_SPLITS)} in {path.parent} "
                        f"(re-extract the archive or run python -m data.prepare_vtab)")
    rels: list[str] = []
    labels: list[int] = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read split file {path}: {e}") from None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"{path}:{lineno}: expected '<relative image path> <integer label>', got {raw!r}")
        rel, lab = parts
        try:
            y = int(lab)
        except ValueError:
            raise DataError(f"{path}:{lineno}: label {lab!r} is not an integer (line {raw!r})") from None
        if not 0 <= y < num_classes:
            raise DataError(f"{path}:{lineno}: label {y} out of range [0, {num_classes}) for task {task!r} "
                            f"({num_classes} classes); the split file belongs to another task or is corrupt")
        rels.append(rel)
        labels.append(y)
    if not rels:
        raise DataError(f"split file {path} is empty; re-extract or re-convert task {task!r}")
    return rels, labels


def check_counts(task: str, split: str, n: int, path: Path, strict: bool) -> None:
    if split in VTAB_SPLIT_SIZES:
        want = VTAB_SPLIT_SIZES[split]
        if n != want and strict:
            raise DataError(f"{path} has {n} lines, VTAB-1k needs {want} (the archive is partial or not VTAB-1k); "
                            f"train.py and the sweeps need the full split: check the tree with `python -m "
                            f"data.prepare_vtab --check {path.parent.parent} --tasks {task}` and re-convert or "
                            f"re-extract the task (`python -m data.prepare_vtab --task {task} --out <root>`)")
    elif split == "test" and task in VTAB_TEST_SIZES and n != VTAB_TEST_SIZES[task]:
        msg = f"{path} has {n} lines; the VTAB-1k test size of {task!r} is {VTAB_TEST_SIZES[task]}"
        if strict:
            warnings.warn(msg + " (check the TFDS version the tree was converted from)")


def load_vtab_split(task: str, root: str | Path | None, split: str, img_size: int = 224,
                    cache_dir: str | Path | None = None, *, strict_counts: bool = True,
                    interpolation: str = "bicubic", use_cache: bool = True, num_workers: int | None = None,
                    verbose: bool = False, benchmark: str | None = None) -> Split:
    bench, canonical = resolve_task(task) if benchmark is None else (benchmark, task)
    if split not in SPLIT_ALIASES:
        raise DataError(f"unknown VTAB split {split!r}; use one of {', '.join(VTAB_SPLITS)} "
                        f"(train800 + val200 for selection, train800val200 + test for the final run)")
    split = SPLIT_ALIASES[split]
    cache_root = _cache.resolve_cache_dir(cache_dir)
    if bench == "demo":
        from .demo import make_demo

        base = Path(root) if root is not None else cache_root / "demo_data"
        task_dir = make_demo(base, canonical)
        num_classes = DEMO_NUM_CLASSES[canonical]
        strict_counts = False
    else:
        if root is None:
            raise DataError(f"no data root given for VTAB task {canonical!r}; pass the folder that contains "
                            f"{canonical}/train800.txt (NOAH layout)")
        task_dir = find_task_dir(root, canonical)
        num_classes = VTAB_NUM_CLASSES[canonical]
    split_file = task_dir / f"{split}.txt"
    rels, labels = read_split_file(split_file, num_classes, canonical)
    check_counts(canonical, split, len(rels), split_file, strict_counts)
    paths = [task_dir / r for r in rels]
    describe = (lambda i: f"{split_file}:{i + 1}")
    fingerprint = stat_fingerprint(paths, describe)
    sha = files.sha256_file(split_file)
    material = {"bench": bench, "task": canonical, "split": split, "split_sha256": sha, "size": int(img_size),
                "resize": interpolation, "files": fingerprint, "transform": "resize_square"}
    stem = f"{split}-{img_size}-{interpolation}-{sha[:12]}"
    images, lab, cinfo = cached_decode(
        cache_dir=cache_root, benchmark=bench, dataset=canonical, stem=stem, key_material=material, paths=paths,
        labels=labels, size=int(img_size), fn=lambda im: resize_square(im, int(img_size), interpolation),
        use_cache=use_cache, num_workers=num_workers, describe=describe, verbose=verbose,
        label=f"{canonical} {split}")
    info: dict[str, Any] = {
        "benchmark": bench, "dataset": canonical, "split": split, "root": str(task_dir),
        "split_files": [str(split_file)], "sha256": {split_file.name: sha}, "n": len(labels),
        "format": image_format(paths), "img_size": int(img_size), "stored_size": int(img_size),
        "stored": "resize_square", "resize": interpolation, "num_classes": num_classes, **cinfo,
    }
    manifest = task_dir / "manifest.json"
    if manifest.is_file():
        try:
            m = json.loads(manifest.read_text())
            info["manifest"] = {k: m.get(k) for k in ("format", "jpeg_quality", "source", "created_by") if k in m}
            if m.get("format"):
                info["format"] = m["format"]
            want = (m.get("splits", {}).get(split) or {}).get("sha256")
            if want and want != sha:
                warnings.warn(f"{split_file} differs from its manifest (sha256 {sha[:12]} != {want[:12]})")
        except (OSError, json.JSONDecodeError):
            warnings.warn(f"unreadable manifest {manifest}; ignoring it")
    return Split(images=images, labels=lab, num_classes=num_classes, name=canonical, split=split, info=info,
                 benchmark=bench, img_size=int(img_size))
