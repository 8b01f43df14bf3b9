"""Before a sweep starts: is the data there, are the weights obtainable? Each problem is one message that says how to
fix it (docs/benchmarks.md §2, §3, §5, §8). Exit status 1 when something is missing.

    python -m reproduce.preflight --benchmark vtab --root data/vtab-1k --weights vit_base_patch16_224.orig_in21k \\
        --tasks cifar dtd

Only presence is checked here (split files, the weights file or cache); counts, hashes and labels are the data
package's job when train.py loads a split.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.tasks import PROTOCOLS, split_files  # noqa: E402  (plain Python: no torch)
from util.cli import ArgumentParser  # noqa: E402

__all__ = ["check_data", "check_weights", "main"]

HOW_VTAB = ("VTAB-1k is not there. Build it once with the converter (TensorFlow only there, docs/benchmarks.md §8): "
            "`python -m data.prepare_vtab --task <task> --out <root>` (see data/prepare_vtab.py --help; writes the "
            "NOAH layout <root>/<task>/{train800,val200,train800val200,test}.txt + images/), or unpack a NOAH-format "
            "copy; check a tree with `python -m data.prepare_vtab --check <root>`; then set VTAB_ROOT=<root>.")
HOW_FGVC = ("FGVC is not there. Download the five datasets (CUB-200-2011, NABirds, Oxford Flowers, Stanford Dogs, "
            "Stanford Cars) and their VPT split JSONs (train/val/test.json; a public mirror is the HF dataset "
            "XiN0919/FGVC), or regenerate the splits with `python -m data.fgvc_splits <dataset> <root>/<dataset>` "
            "(data/fgvc_splits.py; a regenerated split is not VPT's split, docs/benchmarks.md §8); then set "
            "FGVC_ROOT=<root>.")
_AMBIGUOUS = re.compile(r"_in21k$")


def _find(benchmark: str, root: Path, task: str) -> Path | None:
    """The task's folder as train.py's data package finds it (folder named by any alias, any case; or ``root``
    itself), or None. ``root/<task>`` is accepted without importing the data package (which imports torch)."""
    if (root / task).is_dir():
        return root / task
    try:
        from data.errors import DataError
        from data.fgvc import find_dataset_dir
        from data.vtab import find_task_dir
    except ImportError:
        return None
    try:
        return find_task_dir(root, task) if benchmark == "vtab" else find_dataset_dir(root, task)
    except DataError:
        return None


def check_data(benchmark: str, root: str | Path, tasks: list[str], protocol: str = "paper") -> list[str]:
    root = Path(root).expanduser()
    if not root.is_dir():
        return [f"data root {root} does not exist. " + (HOW_VTAB if benchmark == "vtab" else HOW_FGVC)]
    problems = []
    how = HOW_VTAB if benchmark == "vtab" else HOW_FGVC
    ext = "txt" if benchmark == "vtab" else "json"
    for task in tasks:
        folder = _find(benchmark, root, task)
        if folder is None:
            problems.append(f"{root}: no folder for {task}. " + how)
            continue
        missing = [f"{s}.{ext}" for s in split_files(benchmark, protocol) if not (folder / f"{s}.{ext}").is_file()]
        if missing:
            problems.append(f"{folder}: missing split file(s) {', '.join(missing)}. " + how)
    return problems


def check_weights(weights: str) -> tuple[list[str], list[str]]:
    """(problems, notes) for a WEIGHTS value: ``none``, a local file, or a timm name."""
    if weights in ("", "none", "None"):
        return [], ["WEIGHTS=none: random initialisation — only meaningful for smoke runs"]
    looks_like_path = os.sep in weights or weights.endswith((".npz", ".safetensors", ".pth", ".pth.tar", ".bin"))
    if looks_like_path:
        if Path(weights).expanduser().is_file():
            return [], []
        return [f"weights file {weights} does not exist: check the path, or download the file (docs/benchmarks.md §5 "
                "gives each backbone's file and address: Google's ViT-B_16.npz, MAE's mae_pretrain_vit_base.pth, "
                "MoCo v3's linear-vit-b-300ep.pth.tar ...), or use a timm name such as "
                "vit_base_patch16_224.orig_in21k"], []
    if _AMBIGUOUS.search(weights) and "orig" not in weights and "augreg" not in weights:
        return [f"WEIGHTS={weights} is ambiguous (under old timm it is AugReg, not ViT-B_16.npz): name "
                f"{weights[:-len('_in21k')]}.orig_in21k or ...augreg_in21k (docs/benchmarks.md §5)"], []
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return [], [f"cannot check the download cache for {weights}; timm will fetch it on first use"]
    cached = any(isinstance(try_to_load_from_cache(f"timm/{weights}", f), str)
                 for f in ("model.safetensors", "pytorch_model.bin"))
    if cached:
        return [], []
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    offline_fix = ("download the Google .npz (e.g. https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz) "
                   "and set WEIGHTS=/path/to/file.npz") if weights.startswith("vit_") else (
        "download the released file of these weights (docs/benchmarks.md §5 gives each backbone's file and address) "
        "and set WEIGHTS=/path/to/it")
    msg = (f"{weights} is not in the Hugging Face cache; timm downloads it from the hub (timm/{weights}) on first use. "
           f"Without network: {offline_fix}")
    return ([msg], []) if offline else ([], [msg])


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description="Check data and weights before a sweep.")
    ap.add_argument("--benchmark", choices=("vtab", "fgvc"), required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--weights", default="none")
    ap.add_argument("--protocol", choices=PROTOCOLS, default="paper")
    ap.add_argument("--tasks", nargs="+", required=True)
    args = ap.parse_args(argv)
    problems = check_data(args.benchmark, args.root, args.tasks, args.protocol)
    wp, notes = check_weights(args.weights)
    for n in notes:
        print(f"note: {n}")
    for p in problems + wp:
        print(f"error: {p}", file=sys.stderr)
    return 1 if problems or wp else 0


if __name__ == "__main__":
    sys.exit(main())
