"""Data for VTAB-1k (NOAH layout), FGVC (VPT-style JSON splits) and generated demo tasks.

    from data import load_split, Loader, IMAGENET_MEAN, IMAGENET_STD

    tr = load_split("cifar100", "/data/vtab-1k", "train800val200", img_size=224)  # alias -> 'cifar'
    te = load_split("cifar", "/data/vtab-1k", "test")
    for x, y in Loader(tr, 32, shuffle=True, train=True, device="cuda", seed=42):
        ...   # x: float32 (32, 3, 224, 224) normalised on the GPU; y: int64

    demo = load_split("demo", None, "train800", img_size=32)   # generated under the cache dir

Images are decoded once per split and cached as uint8 (N, 3, H, W) under ``cache_dir``
(argument, else ``$VIT_PEFT_CACHE``, else ``~/.cache/vit_peft``), keyed by the SHA-256 of the
split file(s), the resolution, the resize method and the (size, mtime) of every image.  Bad
input raises :class:`DataError` naming the file and the fix; no cache entry is written from a
failed read.

Command-line tools (each prints one ``error:`` line and exits 2 on unusable input; ``--check`` prints a
per-task table and exits 1 when a task fails):

* ``python -m data.prepare_vtab --check <root>``  verify a NOAH tree (counts, labels, files,
  class coverage, train800val200 == train800 + val200 by pixel hash, manifest);
* ``python -m data.prepare_vtab --task <t> --out <root> --format png|jpg``  convert from TFDS
  (needs tensorflow-datasets, only there);
* ``python -m data.fgvc_splits <dataset> <root>``  regenerate FGVC JSON splits (not VPT's!);
* ``python -m data.demo <root>``  write the demo tasks;  ``python -m data.bench``  throughput.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DataError
from .tasks import (DEMO_NUM_CLASSES, DEMO_TASKS, FGVC_DATASETS, FGVC_NUM_CLASSES, FGVC_SPLIT_SIZES, FGVC_SPLITS,
                    NUM_CLASSES, PROTOCOL_SPLITS, VTAB_GROUPS, VTAB_NUM_CLASSES, VTAB_SPLIT_SIZES, VTAB_SPLITS,
                    VTAB_TASKS, VTAB_TEST_SIZES, resolve_task)

if TYPE_CHECKING:
    from .split import Split

# The modules below import torch, numpy or PIL; they load on first use, so that the task tables above (and
# ``reproduce/``, which reads them) work where only Python is installed.
_LAZY = {"ImageLoader": ".images", "Aug": ".loader", "AUG_KINDS": ".loader", "Loader": ".loader",
         "IMAGENET_MEAN": ".loader", "IMAGENET_STD": ".loader", "HALF_MEAN": ".loader", "HALF_STD": ".loader",
         "Split": ".split", "default_cache_dir": ".cache"}

__all__ = [
    "DataError", "Split", "Loader", "ImageLoader", "Aug", "AUG_KINDS", "load_split", "resolve_task", "make_demo",
    "normalization", "default_cache_dir", "PROTOCOL_SPLITS",
    "VTAB_TASKS", "VTAB_GROUPS", "VTAB_NUM_CLASSES", "VTAB_TEST_SIZES", "VTAB_SPLITS", "VTAB_SPLIT_SIZES",
    "FGVC_DATASETS", "FGVC_NUM_CLASSES", "FGVC_SPLIT_SIZES", "FGVC_SPLITS", "DEMO_TASKS", "DEMO_NUM_CLASSES",
    "NUM_CLASSES", "IMAGENET_MEAN", "IMAGENET_STD", "HALF_MEAN", "HALF_STD",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_split(dataset: str, root: str | Path | None, split: str, img_size: int = 224,
               cache_dir: str | Path | None = None, *, strict_counts: bool = True, interpolation: str | None = None,
               use_cache: bool = True, num_workers: int | None = None, verbose: bool = False) -> Split:
    """Load one split of a VTAB task, FGVC dataset or demo task as a decoded :class:`Split`.

    dataset: any accepted name or alias (see :func:`resolve_task`).
    root: VTAB -- the folder holding the task folders (or the task folder); FGVC -- the dataset
        folder holding ``train.json`` (or its parent); demo -- where to generate (None: under the
        cache dir).
    split: VTAB ``train800 | val200 | train800val200 | test`` (``trainval`` = train800val200);
        FGVC ``train | val | test | trainval``; demo as VTAB.
    img_size: model input size.  VTAB/demo are stored resized to it (bicubic); FGVC is stored at
        ``round(256 * img_size / 224)`` and cropped by the Loader.
    strict_counts: VTAB -- train800/val200/train800val200 must have 800/200/1000 lines (test
        size mismatches warn); FGVC -- the class count must match data/tasks.py and every split must
        hold every class.  Set False for deliberately small trees.
    interpolation: resize filter (VTAB default ``bicubic`` as the papers; FGVC ``bilinear`` =
        torchvision ``Resize(256)``'s default).
    """
    bench, canonical = resolve_task(dataset)
    if bench == "fgvc":
        from .fgvc import load_fgvc_split

        return load_fgvc_split(canonical, root, split, img_size, cache_dir, strict_counts=strict_counts,
                               interpolation=interpolation or "bilinear", use_cache=use_cache,
                               num_workers=num_workers, verbose=verbose)
    from .vtab import load_vtab_split

    return load_vtab_split(canonical, root, split, img_size, cache_dir, strict_counts=strict_counts,
                           interpolation=interpolation or "bicubic", use_cache=use_cache, num_workers=num_workers,
                           verbose=verbose, benchmark=bench)


def make_demo(root, task: str = "demo", n_train: int = 800, n_val: int = 200, n_test: int = 300, size: int = 32,
              seed: int = 0) -> Path:
    """Generate a demo task in the VTAB layout under ``root`` (see :mod:`data.demo`); returns ``<root>/<task>``."""
    from .demo import make_demo as _make_demo  # lazy, so ``python -m data.demo`` runs cleanly

    return _make_demo(root, task, n_train, n_val, n_test, size, seed)


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``'imagenet'`` -> ImageNet mean/std; ``'half'`` / ``'0.5'`` / ``'inception'`` -> 0.5/0.5."""
    from .loader import HALF_MEAN, HALF_STD, IMAGENET_MEAN, IMAGENET_STD

    k = str(name).lower()
    if k in ("imagenet", "in"):
        return IMAGENET_MEAN, IMAGENET_STD
    if k in ("half", "0.5", "inception", "google"):
        return HALF_MEAN, HALF_STD
    raise DataError(f"unknown normalisation {name!r}; use 'imagenet' or 'half'")
