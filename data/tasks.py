"""Task names: canonical ids, groups, class counts, split sizes, aliases (docs/benchmarks.md §1, §3).

Canonical VTAB ids are the NOAH folder names (BENCH-1).  :func:`resolve_task` accepts every
alias of the docs/benchmarks.md §1 table, case-insensitively and ignoring punctuation (``CIFAR-100`` ==
``cifar100`` == ``cifar_100``), plus TFDS / task_adaptation style names
(``svhn_cropped``, ``clevr(task="count_all")``, ``dsprites(predicted_attribute="label_x_position",
num_classes=16)`` ...).  An unknown name raises :class:`DataError` listing the valid ids and the
closest match (difflib).
"""
from __future__ import annotations

import difflib
import re

from .errors import DataError

# ---------------------------------------------------------------------------------------------
# VTAB-1k (docs/benchmarks.md §1).  Order = the papers' table order (natural, specialized, structured).
# ---------------------------------------------------------------------------------------------
_VTAB_TABLE = [
    # id, group, classes, test size
    ("cifar", "natural", 100, 10_000),
    ("caltech101", "natural", 102, 6_084),
    ("dtd", "natural", 47, 1_880),
    ("oxford_flowers102", "natural", 102, 6_149),
    ("oxford_iiit_pet", "natural", 37, 3_669),
    ("svhn", "natural", 10, 26_032),
    ("sun397", "natural", 397, 21_750),
    ("patch_camelyon", "specialized", 2, 32_768),
    ("eurosat", "specialized", 10, 5_400),
    ("resisc45", "specialized", 45, 6_300),
    ("diabetic_retinopathy", "specialized", 5, 42_670),
    ("clevr_count", "structured", 8, 15_000),
    ("clevr_dist", "structured", 6, 15_000),
    ("dmlab", "structured", 6, 22_735),
    ("kitti", "structured", 4, 711),
    ("dsprites_loc", "structured", 16, 73_728),
    ("dsprites_ori", "structured", 16, 73_728),
    ("smallnorb_azi", "structured", 18, 12_150),
    ("smallnorb_ele", "structured", 9, 12_150),
]

VTAB_TASKS: list[str] = [t[0] for t in _VTAB_TABLE]
VTAB_GROUPS: dict[str, str] = {t[0]: t[1] for t in _VTAB_TABLE}
VTAB_NUM_CLASSES: dict[str, int] = {t[0]: t[2] for t in _VTAB_TABLE}
VTAB_TEST_SIZES: dict[str, int] = {t[0]: t[3] for t in _VTAB_TABLE}
VTAB_SPLITS: tuple[str, ...] = ("train800", "val200", "train800val200", "test")
VTAB_SPLIT_SIZES: dict[str, int] = {"train800": 800, "val200": 200, "train800val200": 1000}

# Aliases seen in the wild (spec table, NOAH scripts, V-PETL, Adapter+, TFDS / task_adaptation).
_VTAB_ALIASES: dict[str, list[str]] = {
    "cifar": ["CIFAR-100", "cifar100", "cifar_100", "cifar(num_classes=100)", "cifar100:3.*.*"],
    "caltech101": ["Caltech101", "caltech", "caltech_101", "caltech101:3.*.*"],
    "dtd": ["DTD", "describable_textures", "dtd:3.*.*"],
    "oxford_flowers102": ["Flowers102", "flowers102", "flowers_102", "oxford_flowers_102", "oxford_flowers102:2.*.*"],
    "oxford_iiit_pet": ["Pets", "pet", "oxford_pet", "oxford_pets", "oxford_iiit_pets", "oxfordpet",
                        "oxford_iiit_pet:3.*.*"],
    "svhn": ["SVHN", "SVNH", "svhn_cropped", "svhn_cropped:3.*.*"],
    "sun397": ["Sun397", "sun", "sun_397", "sun397/tfds", "sun397/tfds:4.*.*"],
    "patch_camelyon": ["Camelyon", "Patch Camelyon", "camelyon", "pcam", "patch_camelyon:2.*.*"],
    "eurosat": ["EuroSAT", "eurosat/rgb", "eurosat_rgb", "eurosat/rgb:2.*.*"],
    "resisc45": ["Resisc45", "resisc", "nwpu_resisc45", "resisc45:3.*.*"],
    "diabetic_retinopathy": ["Retinopathy", "retinopathy", "retino", "diabetic_retinopathy_detection",
                             "diabetic_retinopathy(config=\"btgraham-300\")",
                             "diabetic_retinopathy_detection/btgraham-300",
                             "diabetic_retinopathy_detection/btgraham-300:3.*.*"],
    "clevr_count": ["Clevr-Count", "Clevr/count", "clevr_count_all", "clevr(task=\"count_all\")", "clevr_counting"],
    "clevr_dist": ["Clevr-Dist", "Clevr/distance", "clevr_distance", "clevr_closest_object_distance",
                   "clevr(task=\"closest_object_distance\")"],
    "dmlab": ["DMLab", "dmlab:2.0.1", "deepmind_lab"],
    "kitti": ["KITTI-Dist", "KITTI/distance", "kitti_dist", "kitti_distance", "kitti_closest_vehicle_distance",
              "kitti(task=\"closest_vehicle_distance\")", "kitti:3.2.0"],
    "dsprites_loc": ["dSpr-Loc", "dsprites_position", "dsprites_location", "dsprites_xpos", "dsprites_x_position",
                     "dsprites/location",
                     "dsprites(predicted_attribute=\"label_x_position\",num_classes=16)"],
    "dsprites_ori": ["dSpr-Ori", "dsprites_orientation", "dsprites/orientation",
                     "dsprites(predicted_attribute=\"label_orientation\",num_classes=16)"],
    "smallnorb_azi": ["sNORB-Azim", "sNORB-Azi", "smallnorb_azimuth", "smallnorb_azim", "smallnorb/azimuth",
                      "smallnorb(predicted_attribute=\"label_azimuth\")"],
    "smallnorb_ele": ["sNORB-Ele", "sNORB-Elev", "smallnorb_elevation", "smallnorb_elev", "smallnorb/elevation",
                      "smallnorb(predicted_attribute=\"label_elevation\")"],
}

# ---------------------------------------------------------------------------------------------
# FGVC (docs/benchmarks.md §3)
# ---------------------------------------------------------------------------------------------
_FGVC_TABLE = [
    # id, classes, (train, val, test) of VPT's split, image-root subfolder candidates
    ("cub", 200, (5_394, 600, 5_794)),
    ("nabirds", 555, (21_536, 2_393, 24_633)),
    ("oxford_flowers", 102, (1_020, 1_020, 6_149)),
    ("stanford_dogs", 120, (10_800, 1_200, 8_580)),
    ("stanford_cars", 196, (7_329, 815, 8_041)),
]
FGVC_DATASETS: list[str] = [t[0] for t in _FGVC_TABLE]
FGVC_NUM_CLASSES: dict[str, int] = {t[0]: t[1] for t in _FGVC_TABLE}
FGVC_SPLIT_SIZES: dict[str, dict[str, int]] = {
    t[0]: dict(zip(("train", "val", "test"), t[2])) for t in _FGVC_TABLE
}
FGVC_SPLITS: tuple[str, ...] = ("train", "val", "test", "trainval")
FGVC_JSON_SPLITS: tuple[str, ...] = ("train", "val", "test")  # the files; trainval = train + val

_FGVC_ALIASES: dict[str, list[str]] = {
    "cub": ["CUB_200_2011", "CUB", "cub200", "cub_200", "cub2011", "CUB-200-2011", "cub_200_2011"],
    "nabirds": ["NABirds", "na_birds"],
    "oxford_flowers": ["OxfordFlowers", "oxfordflower", "oxfordflowers", "oxford_flower"],
    "stanford_dogs": ["StanfordDogs", "stanforddog", "stanford_dog", "dogs"],
    "stanford_cars": ["StanfordCars", "stanfordcar", "stanford_car", "cars"],
}

# ---------------------------------------------------------------------------------------------
# Generated demo tasks (data/demo.py)
# ---------------------------------------------------------------------------------------------
DEMO_TASKS: list[str] = ["demo", "demo_ori", "demo_shape"]
DEMO_NUM_CLASSES: dict[str, int] = {"demo": 4, "demo_ori": 4, "demo_shape": 4}
_DEMO_ALIASES: dict[str, list[str]] = {
    "demo": ["demo_pos", "demo_position", "demo_loc"],
    "demo_ori": ["demo_orientation"],
    "demo_shape": ["demo_type"],
}

NUM_CLASSES: dict[str, int] = {**VTAB_NUM_CLASSES, **FGVC_NUM_CLASSES, **DEMO_NUM_CLASSES}

# ---------------------------------------------------------------------------------------------
# Protocols (docs/benchmarks.md §6): (benchmark, protocol) -> (training split, selection split or None).
# The paper protocol trains on train+val and reads the test split; the clean protocol's selection run
# trains on train only and scores the held-out val split. Demo tasks use the VTAB layout.
# ---------------------------------------------------------------------------------------------
PROTOCOLS: tuple[str, ...] = ("paper", "clean")
PROTOCOL_SPLITS: dict[tuple[str, str], tuple[str, str | None]] = {
    ("vtab", "paper"): ("train800val200", None), ("vtab", "clean"): ("train800", "val200"),
    ("fgvc", "paper"): ("train", None), ("fgvc", "clean"): ("train", "val"),
}


def protocol_splits(benchmark: str, protocol: str) -> tuple[str, str | None]:
    """(training split, selection split or None) of a run; every run also reads ``test``."""
    return PROTOCOL_SPLITS["vtab" if benchmark == "demo" else benchmark, protocol]


def split_files(benchmark: str, protocol: str) -> tuple[str, ...]:
    """The split files (stems) a run of ``protocol`` reads: VTAB its training and selection splits and ``test``;
    FGVC every JSON for any split (the class map is built from all three, and each must hold every class,
    BENCH-5)."""
    if benchmark == "fgvc":
        return FGVC_JSON_SPLITS
    return tuple(s for s in protocol_splits(benchmark, protocol) if s) + ("test",)


def _key(name: str) -> str:
    """Normalised lookup key: lower case, letters and digits only (``CIFAR-100`` -> ``cifar100``)."""
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def _build_index() -> dict[str, tuple[str, str]]:
    index: dict[str, tuple[str, str]] = {}
    for bench, table, aliases in (
        ("vtab", VTAB_TASKS, _VTAB_ALIASES),
        ("fgvc", FGVC_DATASETS, _FGVC_ALIASES),
        ("demo", DEMO_TASKS, _DEMO_ALIASES),
    ):
        for canon in table:
            for name in [canon, *aliases.get(canon, [])]:
                k = _key(name)
                if k in index and index[k] != (bench, canon):  # pragma: no cover - table sanity
                    raise RuntimeError(f"alias {name!r} maps to both {index[k]} and {(bench, canon)}")
                index[k] = (bench, canon)
    return index


_INDEX = _build_index()
ALL_NAMES: list[str] = VTAB_TASKS + FGVC_DATASETS + DEMO_TASKS


def aliases(canonical: str) -> list[str]:
    """All accepted spellings for a canonical id (the id first)."""
    if canonical in ALL_NAMES:
        for table in (_VTAB_ALIASES, _FGVC_ALIASES, _DEMO_ALIASES):
            if canonical in table:
                return [canonical, *table[canonical]]
        return [canonical]
    raise DataError(f"{canonical!r} is not a canonical task id; valid ids: {', '.join(ALL_NAMES)}")


def known_names() -> list[str]:
    """Every accepted spelling (canonical ids and aliases)."""
    out = list(ALL_NAMES)
    for table in (_VTAB_ALIASES, _FGVC_ALIASES, _DEMO_ALIASES):
        for v in table.values():
            out.extend(v)
    return out


def resolve_task(name: str) -> tuple[str, str]:
    """Map any accepted task / dataset name to ``(benchmark, canonical_id)``.

    ``benchmark`` is ``'vtab'``, ``'fgvc'`` or ``'demo'``.  Matching ignores case and
    punctuation.  Unknown names raise :class:`DataError` listing the valid ids and the closest
    known name.
    """
    k = _key(name)
    if k and k in _INDEX:
        return _INDEX[k]
    names = known_names()
    by_key: dict[str, str] = {}
    for n in names:  # first spelling wins: canonical ids, then the aliases in table order
        by_key.setdefault(_key(n), n)
    canon_keys = {_key(n) for n in ALL_NAMES}

    def score(cand: str) -> tuple[float, bool]:  # best ratio; on a tie prefer a canonical id
        return difflib.SequenceMatcher(None, k, cand).ratio(), cand in canon_keys

    best = max(by_key, key=score) if k else None
    close = [best] if best is not None and score(best)[0] >= 0.5 else []
    hint = ""
    if close:
        b, c = _INDEX[close[0]]
        shown = by_key[close[0]]
        hint = f" Did you mean {shown!r}" + (f" (= {c!r})" if shown != c else "") + "?"
    raise DataError(
        f"unknown task {name!r}.{hint} Valid VTAB ids: {', '.join(VTAB_TASKS)}; "
        f"FGVC ids: {', '.join(FGVC_DATASETS)}; demo ids: {', '.join(DEMO_TASKS)}"
    )


def num_classes(name: str) -> int:
    return NUM_CLASSES[resolve_task(name)[1]]
