"""FGVC (CUB-200-2011, NABirds, Oxford Flowers, Stanford Dogs, Stanford Cars) with VPT-style
split files (docs/benchmarks.md §3).

    <root>/{train,val,test}.json      each {"<relative image path>": <class id>, ...}

``root`` is the dataset folder (the one holding the JSON files) or a parent holding a folder
named by the id or an alias (``CUB_200_2011``, ``StanfordCars`` ...).  Each key is resolved per
file against ``<root>/<key>``, ``<root>/images/<key>``, ``<root>/Images/<key>`` (the datasets
disagree; ARC and VPT disagree for Dogs).  Labels: the sorted union of the class ids of all
three files maps to 0..C-1, and each split must contain every class (BENCH-5) -- VPT/ARC/SNELL
remap per file, which is only right when that holds.

Cached resolution (a documented deviation from per-epoch PIL transforms)
------------------------------------------------------------------------
Each image is decoded once to ``R x R`` with ``R = round(256 * img_size / 224)`` (256 for 224):
PIL ``Resize(R)`` on the shorter side (bilinear, torchvision's rounding), then the centre
``R x R`` square is kept.  From that array :class:`data.Loader` does

* eval: ``CenterCrop(img_size)`` -- identical to the papers' ``Resize(256) -> CenterCrop(224)``
  at 224 (at other sizes the centre offset can differ by one pixel);
* train ``resize_crop`` (ARC / RLRR / VPT): random ``img_size`` crop + flip.  *Deviation*: the
  papers crop from the whole ``256 x (256*aspect)`` image, we crop from its centre
  ``256 x 256`` square, so the crop never reaches the outer ends of the long side;
* train ``rrc`` (timm / SNELL / HTA): RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) + flip,
  done batched on tensors with ``grid_sample`` (bilinear, or bicubic with ``Aug.interpolation``, SNELL's).
  *Deviations*: the crop box is sampled on the centre square rather than the original image, the source
  is the 256-px image rather than full resolution, and the resampling has no antialiasing (PIL's has).

``train.py --fgvc-source images`` (:class:`data.ImageLoader`, data/images.py) has none of these deviations: it
decodes the original files every epoch and applies the papers' torchvision transforms.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from util import files

from . import cache as _cache
from .errors import DataError
from .split import Split, cached_decode, image_format, resize_short_center_square, stat_fingerprint
from .tasks import FGVC_JSON_SPLITS as JSON_SPLITS, FGVC_NUM_CLASSES, FGVC_SPLITS, aliases, resolve_task

IMAGE_SUBDIRS = ("", "images", "Images")


def stored_size_for(img_size: int) -> int:
    """The cached square side for a model input of ``img_size`` (256 for 224)."""
    return int(round(256 * int(img_size) / 224))


def find_dataset_dir(root: str | Path, canonical: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"FGVC root {str(root)!r} does not exist or is not a folder; pass the dataset folder "
                        f"that holds train.json / val.json / test.json (or its parent)")
    try:
        named = resolve_task(root.name)[1]
    except DataError:
        named = None
    if named == canonical:  # the folder itself is named by the id or an alias
        return root
    if named is None and any((root / f"{s}.json").is_file() for s in JSON_SPLITS):
        return root
    matches = []
    for d in sorted(root.iterdir()):
        if not d.is_dir():
            continue
        try:
            if resolve_task(d.name)[1] == canonical:
                matches.append(d)
        except DataError:
            pass
    with_json = [d for d in matches if any((d / f"{s}.json").is_file() for s in JSON_SPLITS)]
    if len(with_json) == 1:
        return with_json[0]
    if len(matches) == 1:
        return matches[0]
    if len(with_json) > 1:
        raise DataError(f"several folders under {root} hold {canonical!r} split files: "
                        f"{', '.join(d.name for d in with_json)}; keep one")
    raise DataError(f"FGVC dataset {canonical!r} not found under {root}: looked for train.json there and for a "
                    f"folder named {' / '.join(aliases(canonical)[:5])} (any case)")


def read_json_split(path: Path) -> dict[str, int]:
    if not path.is_file():
        raise DataError(f"FGVC split file missing: {path}; VPT's files are no longer downloadable -- regenerate "
                        f"them with python -m data.fgvc_splits <dataset> {path.parent}")
    try:
        obj = json.loads(path.read_text())  # no encoding= kwarg (fails on Python >= 3.9 in ARC's code)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot parse FGVC split file {path}: {e}; regenerate it with python -m data.fgvc_splits")\
            from None
    if not isinstance(obj, dict) or not obj:
        raise DataError(f"{path} must be a non-empty JSON object {{\"<image path>\": <class id>}}")
    out: dict[str, int] = {}
    for k, v in obj.items():
        try:
            if isinstance(v, bool) or float(v) != int(v):
                raise ValueError
            out[str(k)] = int(v)
        except (TypeError, ValueError):
            raise DataError(f"{path}: class id {v!r} of {k!r} is not an integer") from None
    return out


def label_map(ds_dir: Path) -> tuple[list[int], dict[str, dict[str, int]]]:
    """Sorted union of class ids over train/val/test (global map), and the three parsed files."""
    files = {s: read_json_split(ds_dir / f"{s}.json") for s in JSON_SPLITS}
    ids = sorted(set().union(*[set(d.values()) for d in files.values()]))
    return ids, files


def resolve_image(ds_dir: Path, key: str, json_path: Path) -> Path:
    for sub in IMAGE_SUBDIRS:
        p = ds_dir / sub / key if sub else ds_dir / key
        if p.is_file():
            return p
    tried = ", ".join(str(ds_dir / sub / key if sub else ds_dir / key) for sub in IMAGE_SUBDIRS)
    raise DataError(f"{json_path.name} lists {key!r} but no such image exists (tried {tried}); point the root at "
                    f"the extracted dataset folder, or regenerate the split with python -m data.fgvc_splits")


def fgvc_files(dataset: str, root: str | Path | None, split: str, *, strict_counts: bool = True
               ) -> tuple[Path, list[str], list[Path], list[int], list[int]]:
    """The files of one FGVC split without decoding them: (dataset folder, keys, image paths, labels 0..C-1 of the
    global class map, sorted class ids), in key order. Checks what :func:`load_fgvc_split` needs (BENCH-5)."""
    _, canonical = resolve_task(dataset)
    if split not in FGVC_SPLITS:
        raise DataError(f"unknown FGVC split {split!r}; use one of {', '.join(FGVC_SPLITS)}")
    if root is None:
        raise DataError(f"no data root given for FGVC dataset {canonical!r}; pass the folder holding train.json")
    ds_dir = find_dataset_dir(root, canonical)
    ids, files = label_map(ds_dir)
    C = len(ids)
    index = {c: i for i, c in enumerate(ids)}
    parts = ["train", "val"] if split == "trainval" else [split]
    for s in JSON_SPLITS:  # every split must contain every class (BENCH-5)
        missing = sorted(set(ids) - set(files[s].values()))
        if missing:
            msg = (f"{ds_dir / (s + '.json')} lacks {len(missing)} of {C} classes (e.g. ids {missing[:5]}); "
                   f"each split must contain every class -- regenerate with python -m data.fgvc_splits "
                   f"{canonical} {ds_dir}")
            if strict_counts:
                raise DataError(msg)
            warnings.warn(msg)
    if strict_counts and C != FGVC_NUM_CLASSES[canonical]:
        raise DataError(f"{ds_dir}: the split files name {C} classes, {canonical!r} has {FGVC_NUM_CLASSES[canonical]}; "
                        f"wrong dataset folder or broken split files: point --data-root at the full dataset, or "
                        f"regenerate the splits with python -m data.fgvc_splits {canonical} {ds_dir}")
    keys: list[str] = []
    labels: list[int] = []
    paths: list[Path] = []
    for s in parts:
        jp = ds_dir / f"{s}.json"
        for k in sorted(files[s]):  # sorted: the order never depends on JSON key order
            keys.append(k)
            labels.append(index[files[s][k]])
            paths.append(resolve_image(ds_dir, k, jp))
    return ds_dir, keys, paths, labels, ids


def _split_shas(ds_dir: Path) -> dict[str, str]:
    """SHA-256 of the three split files (the provenance every run records, docs/benchmarks.md §8)."""
    return {f"{s}.json": files.sha256_file(ds_dir / f"{s}.json") for s in JSON_SPLITS}


def read_split_info(ds_dir: Path) -> dict[str, Any]:
    """``split_info.json`` of a dataset folder (written by ``data.fgvc_splits``: ``regenerated``, seed, ...), or what
    its absence means: VPT's original split files."""
    si = ds_dir / "split_info.json"
    if not si.is_file():
        return {"split": "vpt (assumed: no split_info.json)", "regenerated": False}
    try:
        return json.loads(si.read_text())
    except (OSError, json.JSONDecodeError):
        return {"split": "unknown (unreadable split_info.json)", "regenerated": None}


def fgvc_file_split(dataset: str, root: str | Path | None, split: str, *, strict_counts: bool = True):
    """One FGVC split as its image files, not decoded (for ``data.ImageLoader``, ``train.py --fgvc-source
    images``), with the same provenance as :func:`load_fgvc_split`'s (split files' SHA-256, format, regenerated)."""
    from .images import FileSplit

    _, canonical = resolve_task(dataset)
    ds_dir, _, paths, labels, ids = fgvc_files(dataset, root, split, strict_counts=strict_counts)
    split_info = read_split_info(ds_dir)
    info = {"benchmark": "fgvc", "dataset": canonical, "split": split, "root": str(ds_dir), "n": len(labels),
            "sha256": _split_shas(ds_dir),
            "format": image_format(paths), "source": "image files, decoded every epoch", "num_classes": len(ids),
            "regenerated": bool(split_info.get("regenerated")), "split_info": split_info}
    return FileSplit(name=canonical, split=split, paths=paths, labels=labels, num_classes=len(ids), info=info)


def load_fgvc_split(dataset: str, root: str | Path | None, split: str, img_size: int = 224,
                    cache_dir: str | Path | None = None, *, strict_counts: bool = True,
                    interpolation: str = "bilinear", use_cache: bool = True, num_workers: int | None = None,
                    verbose: bool = False) -> Split:
    _, canonical = resolve_task(dataset)
    ds_dir, keys, paths, labels, ids = fgvc_files(dataset, root, split, strict_counts=strict_counts)
    C = len(ids)
    parts = ["train", "val"] if split == "trainval" else [split]
    shas = _split_shas(ds_dir)
    R = stored_size_for(img_size)
    describe = (lambda i: f"{keys[i]}")
    material = {"bench": "fgvc", "dataset": canonical, "split": split, "json_sha256": shas, "size": R,
                "resize": interpolation, "files": stat_fingerprint(paths, describe),
                "transform": "resize_short_center_square"}
    stem = f"{split}-{R}-{interpolation}-{_cache.key_digest(shas)[:12]}"
    images, lab, cinfo = cached_decode(
        cache_dir=_cache.resolve_cache_dir(cache_dir), benchmark="fgvc", dataset=canonical, stem=stem,
        key_material=material, paths=paths, labels=labels, size=R,
        fn=lambda im: resize_short_center_square(im, R, interpolation), use_cache=use_cache,
        num_workers=num_workers, describe=describe, verbose=verbose, label=f"{canonical} {split}")
    split_info = read_split_info(ds_dir)
    info: dict[str, Any] = {
        "benchmark": "fgvc", "dataset": canonical, "split": split, "root": str(ds_dir),
        "split_files": [str(ds_dir / f"{s}.json") for s in parts], "sha256": shas, "n": len(labels),
        "format": image_format(paths), "img_size": int(img_size), "stored_size": R,
        "stored": "resize_short_center_square", "resize": interpolation, "num_classes": C,
        "class_ids": ids, "regenerated": bool(split_info.get("regenerated")), "split_info": split_info, **cinfo,
    }
    return Split(images=images, labels=lab, num_classes=C, name=canonical, split=split, info=info,
                 benchmark="fgvc", img_size=int(img_size))
