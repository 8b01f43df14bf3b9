"""Train one method on one dataset: config -> model -> data -> loop -> <out>/{results.json, adapter.safetensors, tb/}.

    python train.py                                   # HTA on a generated demo task, tiny ViT, CPU, seconds
    python -m reproduce.taskcfg reproduce/configs/snell_vtab.yaml cifar --out cifar_snell.yaml  # SNELL's recipe
    python train.py --config cifar_snell.yaml --dataset cifar --data-root ~/data/vtab-1k \
        --pretrained vit_base_patch16_224.orig_in21k
    python train.py --resume runs/cifar_snell_...     # continue a killed run (bit-identical on the CPU)

Hyper-parameters come from (lowest to highest priority) the defaults below, a flat YAML file (``--config``), and
flags. Protocols (specs/benchmarks.md §6):

* ``paper`` trains on train800val200 (FGVC: train) and evaluates the test split every ``eval_every`` epochs and at each
  of the last ``eval_last`` epochs, recording the last-epoch accuracy ``acc_last`` and the maximum (*test-set
  selected*) accuracy ``acc_best_test``. ``acc_last`` of such a run with hyper-parameters chosen on val200 is the
  clean protocol's reported number (§6.2 steps 2-3: retrain on train800val200, test top-1 at the last epoch); the
  test evaluations before the last epoch play no part in it.
* ``clean`` is the clean protocol's selection run (§6.2 step 1): it trains on train800 (FGVC: train) and evaluates
  val200 (FGVC: val) on the same epochs; ``acc_val_last``, the val top-1 at the last epoch, is the selection score
  (``reproduce/search.py``). The test split is read once, at the last epoch (``acc_last``). No epoch is ever
  selected: every number is the last epoch's.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

ROOT = Path(__file__).resolve().parent

# Every option, its default and its help. ``None`` defaults are filled per dataset in ``resolve_config``.
OPTIONS: dict[str, tuple[object, str]] = {
    "method": ("hta", "method name (see models.METHODS)"),
    "method_args": ({}, "method keyword arguments (YAML mapping; flags: --method-args rank=1 dropout=0.1)"),
    "dataset": ("demo_shape", "VTAB task, FGVC dataset, or a generated demo task (demo_shape, demo_ori, demo)"),
    "data_root": (None, "root folder holding <task>/ (VTAB) or the FGVC dataset folder; demo: generated if absent"),
    "cache_dir": (None, "decoded-image cache (default $VIT_PEFT_CACHE or ~/.cache/vit_peft)"),
    "arch": (None, "architecture (default vit_base_patch16_224; demo: vit_micro_patch8)"),
    "pretrained": (None, "timm name | .npz/.safetensors/.pth path | none (default vit_base_patch16_224.orig_in21k; "
                         "demo: none)"),
    "img_size": (None, "input resolution (default 224; demo: 32)"),
    "epochs": (None, "training epochs (default 100; demo: 30)"),
    "batch_size": (32, "training batch size"),
    "eval_batch_size": (256, "evaluation batch size"),
    "lr": (None, "peak learning rate (default 1e-3; demo: 1e-2)"),
    "optimizer": ("adamw", "'adamw' (ARC, HTA, SNELL, most baselines) or 'sgd' with momentum (the VPT and linear-probe "
                           "reference recipe, baselines.md §1, §7)"),
    "momentum": (0.9, "SGD momentum (optimizer sgd)"),
    "scale_lr": (False, "use lr × batch_size / 256 as the peak learning rate (VPT's rule, baselines.md §7)"),
    "weight_decay": (1e-4, "weight decay (decoupled for adamw, L2 for sgd)"),
    "wd_scope": ("matrices", "'matrices': decay only weights with ndim > 1 that are not tokens/embeddings; 'all'"),
    "no_decay": ((), "parameter names (last component) never decayed, in any wd_scope, comma-separated; e.g. "
                     "v_left,v_right,d: HTA's Householder vectors and diagonal (hta.md §5.2)"),
    "warmup_epochs": (None, "linear warm-up epochs (default: 10%% of the epochs, at most 10)"),
    "schedule": ("per_step", "'per_step' warm-up + cosine (ARC/HTA) or 'per_epoch_timm' (SNELL, snell.md §8.1)"),
    "min_lr_factor": (1e-6, "per_step cosine floor as a fraction of lr"),
    "grad_clip": (None, "max gradient norm (none = no clipping)"),
    "drop_rate": (0.0, "backbone dropout"),
    "drop_path_rate": (None, "backbone stochastic depth (default: the method's, e.g. 0.1 for SNELL)"),
    "norm": ("imagenet", "input normalisation: 'imagenet' mean/std or 'half' (0.5/0.5)"),
    "fgvc_aug": ("rrc", "FGVC train augmentation: 'rrc' (random-resized-crop + flip) or 'resize_crop'"),
    "fgvc_interpolation": ("bilinear", "FGVC train resampling: 'bilinear' (torchvision's default: ARC, HTA) or "
                                       "'bicubic' (timm's: SNELL, snell.md §8.1)"),
    "fgvc_source": ("cache", "FGVC training images: 'cache' (crops of the decoded 256-px centre squares: fast, with "
                             "the deviations data/fgvc.py lists) or 'images' (the original files decoded every epoch "
                             "with the papers' torchvision transforms: exact, slower; data/images.py)"),
    "data_workers": (None, "processes decoding images for fgvc_source 'images' (default: min(8, CPU count))"),
    "color_jitter": (0.0, "FGVC train augmentation: brightness/contrast/saturation jitter strength in [0, 1] "
                          "(timm's color_jitter; SNELL uses 0.4); 0 = off"),
    "seed": (42, "random seed"),
    "precision": ("fp32", "'fp32' or 'bf16' (autocast)"),
    "protocol": ("paper", "'paper' (train800val200: test-set selected max + last epoch) or 'clean' (train800: val "
                          "top-1 at the last epoch for selection, test at the last epoch)"),
    "eval_every": (10, "evaluate every N epochs (plus each of the last eval_last epochs)"),
    "eval_last": (10, "always evaluate each of the last N epochs"),
    "eval_merged": (True, "evaluate the merged plain ViT (mergeable methods): same numbers, plain-ViT speed"),
    "eval_initial": (False, "also evaluate before training (epoch 0 on the curves; acc_initial in results.json)"),
    "device": (None, "cuda | cpu (default: cuda when available)"),
    "compile": ("none", "torch.compile the training forward: none | default | reduce-overhead (CUDA graphs) | "
                        "max-autotune"),
    "out": (None, "run directory (default runs/<dataset>_<method>_<time>)"),
}
CHOICES = {"compile": ("none", "default", "reduce-overhead", "max-autotune"), "optimizer": ("adamw", "sgd"),
           "wd_scope": ("matrices", "all"), "schedule": ("per_step", "per_epoch_timm"), "norm": ("imagenet", "half"),
           "fgvc_aug": ("rrc", "resize_crop"), "fgvc_interpolation": ("bilinear", "bicubic"),
           "fgvc_source": ("cache", "images"), "precision": ("fp32", "bf16"), "protocol": ("paper", "clean")}

def _float_or_none(text: str) -> float | None:
    return None if text.lower() in ("none", "null", "") else float(text)


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


TYPES = {"lr": float, "grad_clip": _float_or_none, "drop_path_rate": _float_or_none, "warmup_epochs": int, "epochs": int,
         "img_size": int, "no_decay": _names, "data_workers": int}
NO_DECAY_NAMES = ("cls_token", "pos_embed", "prompt")
WHERE = ("device", "data_root", "cache_dir", "data_workers")  # options a --resume may change: where, not what


class RunError(Exception):
    """A problem with the user's input: printed as one line, exit code 2, nothing written."""


class Diverged(Exception):
    """Non-finite loss: exit code 3, no results.json."""


# ----------------------------------------------------------------------------------------------------------- config
def _parse_value(text: str):
    value = yaml.safe_load(text)
    if isinstance(value, str) and "," in value:
        return tuple(_parse_value(v) for v in value.split(",") if v)
    return tuple(value) if isinstance(value, list) else value


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_method_args(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise RunError(f"--method-args: {item!r} is not key=value (e.g. --method-args rank=1 dropout=0.1)")
        out[key] = _parse_value(text)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    for name, (default, help_) in OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        kw = dict(default=argparse.SUPPRESS, help=f"{help_} [default: {default}]")
        if name == "method_args":
            p.add_argument(flag, nargs="*", metavar="KEY=VALUE", **kw)
        elif isinstance(default, bool):
            p.add_argument(flag, type=_parse_bool, metavar="{true,false}", **kw)
        elif name in CHOICES:
            p.add_argument(flag, choices=CHOICES[name], **kw)
        else:
            typ = TYPES.get(name) or (type(default) if isinstance(default, (int, float)) else str)
            p.add_argument(flag, type=typ, **kw)
    p.add_argument("--config", help="YAML file of options (underscored names); flags override it")
    p.add_argument("--resume", metavar="OUT", help="continue the run in OUT from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("--stop-after-epochs", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a kill
    return p


def load_yaml_config(path: str) -> dict:
    try:
        cfg = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise RunError(f"--config {path}: file not found") from None
    except yaml.YAMLError as e:
        raise RunError(f"--config {path}: not valid YAML ({e})") from None
    if not isinstance(cfg, dict):
        raise RunError(f"--config {path}: expected a mapping of option: value")
    unknown = sorted(set(cfg) - set(OPTIONS))
    if unknown:
        hint = (" (a sweep config of reproduce/configs/: write one task's flat config with `python -m "
                f"reproduce.taskcfg {path} <task> --out cfg.yaml`)") if {"defaults", "tasks"} & set(unknown) else ""
        raise RunError(f"--config {path}: unknown option(s) {unknown}; valid: {', '.join(OPTIONS)}{hint}")
    return {k: _config_value(path, k, v) for k, v in cfg.items()}


def _config_value(path: str, key: str, value):
    """A YAML value as the flag of the same name would give it: numbers from text (YAML 1.1 reads ``1e-3`` as a
    string), true/false, the listed choices; None only where the option allows it. Else one RunError naming the file,
    the option and what it takes."""
    default = OPTIONS[key][0]
    convert = TYPES.get(key) or (type(default) if isinstance(default, (bool, int, float)) else str)
    if value is None:
        if default is None or convert is _float_or_none:  # options that take "none"
            return None
        raise RunError(f"--config {path}: {key} is empty; give a value or remove the line (default {default!r})")
    if key in ("method_args", "no_decay"):  # a mapping; a list or comma-separated text (checked in resolve_config)
        if key == "method_args" and not isinstance(value, dict):
            raise RunError(f"--config {path}: method_args: {value!r} is not valid; it takes a mapping, e.g. "
                           "{rank: 1, dropout: 0.1}")
        return value
    wants = {bool: "true or false", int: "a whole number", float: "a number", _float_or_none: "a number or none",
             str: "text"}[convert]
    try:
        if convert is bool:
            return value if isinstance(value, bool) else _parse_bool(str(value))
        if isinstance(value, bool) or (convert is str and not isinstance(value, str)):
            raise ValueError(value)
        if convert is int:
            if float(value) != int(float(value)):
                raise ValueError(value)
            return int(float(value))
        return convert(value if convert is str else str(value))
    except (ValueError, OverflowError, argparse.ArgumentTypeError):
        raise RunError(f"--config {path}: {key}: {value!r} is not valid; it takes {wants}") from None


def resolve_config(args: argparse.Namespace) -> dict:
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, (v, _) in OPTIONS.items()}
    if args.config:
        cfg.update(load_yaml_config(args.config))
    flags = {k: v for k, v in vars(args).items() if k in OPTIONS}
    if "method_args" in flags:
        flags["method_args"] = {**(cfg.get("method_args") or {}), **parse_method_args(flags["method_args"])}
    cfg.update(flags)
    cfg["method_args"] = {k: tuple(v) if isinstance(v, list) else v for k, v in (cfg["method_args"] or {}).items()}
    for key, choices in CHOICES.items():
        if cfg[key] not in choices:
            raise RunError(f"{key}={cfg[key]!r}: choose one of {', '.join(choices)}")
    demo = str(cfg["dataset"]).startswith("demo")
    fill = {"arch": ("vit_micro_patch8", "vit_base_patch16_224"), "img_size": (32, 224), "epochs": (30, 100),
            "pretrained": ("none", "vit_base_patch16_224.orig_in21k"), "lr": (1e-2, 1e-3)}
    for key, (demo_value, value) in fill.items():
        if cfg[key] is None:
            cfg[key] = demo_value if demo else value
    if cfg["warmup_epochs"] is None:
        cfg["warmup_epochs"] = min(10, cfg["epochs"] // 10)
    if cfg["grad_clip"] in ("none", "None", 0):
        cfg["grad_clip"] = None
    try:
        jitter = float(cfg["color_jitter"])
    except (TypeError, ValueError):
        jitter = math.nan
    if isinstance(cfg["color_jitter"], bool) or not 0.0 <= jitter <= 1.0:
        raise RunError(f"color_jitter must be a number in [0, 1], got {cfg['color_jitter']!r}")
    cfg["color_jitter"] = jitter
    if isinstance(cfg["momentum"], bool) or not isinstance(cfg["momentum"], (int, float)) or \
            not 0.0 <= cfg["momentum"] < 1.0:
        raise RunError(f"momentum must be a number in [0, 1), got {cfg['momentum']!r}")
    names = _names(cfg["no_decay"]) if isinstance(cfg["no_decay"], str) else cfg["no_decay"]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n for n in names):
        raise RunError(f"no_decay must be a list of parameter names (e.g. [v_left, v_right, d]), got {names!r}")
    cfg["no_decay"] = tuple(names)
    for key in ("epochs", "batch_size", "eval_batch_size", "eval_every", "eval_last", "img_size"):
        if int(cfg[key]) < 1:
            raise RunError(f"{key} must be >= 1, got {cfg[key]}")
    if cfg["data_workers"] is not None and int(cfg["data_workers"]) < 0:
        raise RunError(f"data_workers must be >= 0 (0: decode in the training process), got {cfg['data_workers']}")
    if cfg["device"] is None:
        cfg["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    check_device(cfg["device"])
    if cfg["out"] is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        cfg["out"] = str(ROOT / "runs" / f"{cfg['dataset']}_{cfg['method']}_{stamp}")
    # absolute paths in config.json: a run can be resumed from any directory (weights: only when a file is named)
    for key in ("out", "data_root", "cache_dir"):
        if cfg[key] is not None:
            cfg[key] = str(Path(cfg[key]).expanduser().resolve())
    if cfg["pretrained"] not in (None, "none") and Path(cfg["pretrained"]).expanduser().is_file():
        cfg["pretrained"] = str(Path(cfg["pretrained"]).expanduser().resolve())
    return cfg


def check_device(device: str) -> None:
    """``device`` names a CPU or a visible CUDA device, else one RunError naming the fix."""
    try:
        kind = torch.device(device).type
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda"):
        raise RunError(f"device {device!r}: use cuda, cuda:N or cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise RunError(f"device {device!r}: no CUDA device is visible here; use --device cpu")


# ------------------------------------------------------------------------------------------------------- schedules
def peak_lr(cfg: dict) -> float:
    """The schedule's peak learning rate: ``lr``, or lr × batch_size / 256 with ``scale_lr`` (baselines.md §7)."""
    return cfg["lr"] * (cfg["batch_size"] / 256 if cfg.get("scale_lr") else 1.0)


def build_optimizer(cfg: dict, groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
    """AdamW (fused on CUDA: one kernel per step instead of several per tensor; the step is launch-bound at batch
    64), or SGD with ``momentum`` (``optimizer: sgd``). The learning rate is set by :func:`lr_at` every step."""
    if cfg.get("optimizer", "adamw") == "sgd":
        return torch.optim.SGD(groups, lr=peak_lr(cfg), momentum=cfg["momentum"])
    return torch.optim.AdamW(groups, lr=peak_lr(cfg), fused=device.type == "cuda")


def lr_at(cfg: dict, step: int, epoch: int, steps_per_epoch: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based) in ``epoch``.

    per_step (arc.md §7.1, hta.md §5.2): factor t/W during W warm-up steps (the first update uses lr 0), then
    max(min_lr_factor, ½(1 + cos(π (t − W)/(T − W)))). per_epoch_timm (snell.md §8.1): timm 0.5.4's
    CosineLRScheduler stepped once per epoch *after* the epoch, warmup_lr_init 1e-6, lr_min 1e-5.
    """
    base, epochs, warm = peak_lr(cfg), cfg["epochs"], cfg["warmup_epochs"]
    if cfg["schedule"] == "per_epoch_timm":
        if epoch == 0:
            return 1e-6 if warm > 0 else base
        t = epoch - 1
        if t < warm:
            return 1e-6 + t * (base - 1e-6) / warm
        return 1e-5 + 0.5 * (base - 1e-5) * (1 + math.cos(math.pi * t / epochs))
    W, T = warm * steps_per_epoch, epochs * steps_per_epoch
    if step < W:
        return base * step / W
    progress = min(step - W, T - W) / max(T - W, 1)
    return base * max(cfg["min_lr_factor"], 0.5 * (1 + math.cos(math.pi * progress)))


def param_groups(model: torch.nn.Module, weight_decay: float, scope: str, names: tuple = ()) -> list[dict]:
    """AdamW groups: decayed and not. ``scope`` "all" decays every trainable tensor, "matrices" only those with
    ndim > 1 that are not tokens or embeddings; trainable tensors whose name ends in one of ``names`` (its last
    component: "d" matches "blocks.0.attn.q.d", not "head.bias") are never decayed (``no_decay``)."""
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        last = name.rsplit(".", 1)[-1]
        seen.add(last)
        exempt = scope == "matrices" and (p.ndim <= 1 or any(k in name for k in NO_DECAY_NAMES))
        (no_decay if exempt or last in names else decay).append(p)
    unknown = [n for n in names if n not in seen]
    if unknown:
        raise RunError(f"no_decay: {', '.join(unknown)} names no trainable parameter of this model; trainable names "
                       f"end in {', '.join(sorted(seen))}")
    return [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
            if g["params"]]


def train_aug_record(aug) -> dict:
    """The training augmentation as results.json records it: every field of ``data.Aug``, or only its kind when
    there is none (VTAB trains without augmentation, benchmarks.md §4: crop and resampling fields would not apply)."""
    return dataclasses.asdict(aug) if aug.kind != "none" else {"kind": "none"}


def split_provenance(splits: dict) -> dict:
    """What results.json records of each split (benchmarks.md §4, §8): its name and size, the split files' SHA-256,
    the image format (VTAB: JPEG as converted for the papers, or lossless PNG) with the converter's manifest, the
    resize filter of the stored images, and whether an FGVC split was regenerated (``split=regenerated``)."""
    keep = ("sha256", "format", "resize", "source", "regenerated", "manifest")
    return {k: {"name": s.split, "n": len(s), **{kk: s.info[kk] for kk in keep if kk in s.info}}
            for k, s in splits.items()}


# ------------------------------------------------------------------------------------------------------------ I/O
def atomic_write(path: Path, write) -> None:
    """Write via ``write(tmp_path)`` then rename: readers see the old file or the complete new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n"))


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_adapter(path: Path, model: torch.nn.Module, meta: dict) -> None:
    from safetensors.torch import save_file

    tensors = {n: t.contiguous() for n, t in trainable_state(model).items()}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata={k: str(v) for k, v in meta.items()}))


def git_commit() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if sha.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    import timm

    return {"python": sys.version.split()[0], "torch": torch.__version__, "timm": timm.__version__,
            "numpy": np.__version__, "cuda": torch.version.cuda}


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------- data
SPLITS = {  # (benchmark, protocol) -> (train split, selection split or None)
    ("vtab", "paper"): ("train800val200", None), ("vtab", "clean"): ("train800", "val200"),
    ("fgvc", "paper"): ("train", None), ("fgvc", "clean"): ("train", "val"),
}


def build_data(cfg: dict):
    import data

    benchmark, name = data.resolve_task(cfg["dataset"])
    if cfg.get("color_jitter") and benchmark != "fgvc":
        raise RunError(f"color_jitter={cfg['color_jitter']:g}: colour jitter is part of the FGVC train augmentation; "
                       f"{name} ({benchmark}) trains without augmentation (benchmarks.md §4), so set it to 0")
    if cfg.get("fgvc_source", "cache") != "cache" and benchmark != "fgvc":
        raise RunError(f"fgvc_source={cfg['fgvc_source']}: only FGVC trains from image files; {name} ({benchmark}) "
                       "is read from its cache (no augmentation, benchmarks.md §4), so set it to cache")
    key = ("vtab" if benchmark == "demo" else benchmark, cfg["protocol"])
    train_name, val_name = SPLITS[key]
    load = lambda split: data.load_split(name, cfg["data_root"], split, img_size=cfg["img_size"],  # noqa: E731
                                         cache_dir=cfg["cache_dir"])
    exact = benchmark == "fgvc" and cfg.get("fgvc_source") == "images"  # FGVC training from the files themselves
    if exact:
        from data.fgvc import fgvc_file_split

        splits = {"train": fgvc_file_split(name, cfg["data_root"], train_name), "test": load("test")}
    else:
        splits = {"train": load(train_name), "test": load("test")}
    if val_name:
        splits["val"] = load(val_name)
    mean, std = (data.IMAGENET_MEAN, data.IMAGENET_STD) if cfg["norm"] == "imagenet" else (data.HALF_MEAN,
                                                                                           data.HALF_STD)
    common = dict(mean=mean, std=std, img_size=cfg["img_size"], device=cfg["device"])
    # VTAB / demo: no augmentation (benchmarks.md §4); FGVC: fgvc_aug, plus colour jitter when color_jitter > 0
    aug = (data.Aug(cfg["fgvc_aug"], color_jitter=cfg.get("color_jitter") or 0.0,
                    interpolation=cfg.get("fgvc_interpolation", "bilinear")) if benchmark == "fgvc" else None)
    if exact:  # the original files, decoded and transformed every epoch (data/images.py)
        tr = splits["train"]
        loaders = {"train": data.ImageLoader(tr.paths, tr.labels, cfg["batch_size"], aug, cfg["img_size"], mean=mean,
                                             std=std, device=cfg["device"], seed=cfg["seed"],
                                             num_workers=cfg.get("data_workers"))}
    else:
        loaders = {"train": data.Loader(splits["train"], cfg["batch_size"], shuffle=True, train=True,
                                        seed=cfg["seed"], aug=aug, **common)}
    for split in ("val", "test"):
        if split in splits:
            loaders[split] = data.Loader(splits[split], cfg["eval_batch_size"], shuffle=False, train=False,
                                         **common)
    return benchmark, name, splits, loaders


# ------------------------------------------------------------------------------------------------------- the loop
def autocast(cfg: dict):
    return torch.autocast(device_type=torch.device(cfg["device"]).type, dtype=torch.bfloat16,
                          enabled=cfg["precision"] == "bf16")


def eval_network(model: torch.nn.Module, cfg: dict) -> torch.nn.Module:
    """What the evaluations of one epoch run: with ``eval_merged``, ``models.merge(model)`` for mergeable methods (a
    plain ViT at plain-ViT speed whatever the method, equal to the adapted model up to float rounding), built once
    for all the splits evaluated then; else the model itself."""
    import models

    return models.merge(model) if cfg["eval_merged"] and model.method.mergeable else model


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, cfg: dict) -> float:
    """Top-1 accuracy in percent. One host sync per call."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=cfg["device"])
    n = 0
    for x, y in loader:
        with autocast(cfg):
            logits = model(x)
        correct += (logits.argmax(-1) == y).sum()
        n += y.numel()
    model.train(was_training)
    return 100.0 * correct.item() / max(n, 1)


def eval_epochs(cfg: dict) -> set[int]:
    E = cfg["epochs"]
    return {e for e in range(E) if e % cfg["eval_every"] == 0 or e >= E - cfg["eval_last"]}


def train(cfg: dict, resume: bool = False, stop_after: int | None = None) -> dict | None:
    import data
    import models
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    out = Path(cfg["out"])
    device = torch.device(cfg["device"])
    with torch.device("meta"):  # arch, method and its arguments checked before the data is decoded (minutes)
        models.create_model(cfg["arch"], cfg["method"], num_classes=2, img_size=cfg["img_size"], **cfg["method_args"])
    benchmark, dataset, splits, loaders = build_data(cfg)
    seed_everything(cfg["seed"])  # right before the model: eval.py rebuilds a randomly initialised backbone the same way
    model = models.create_model(cfg["arch"], cfg["method"], num_classes=splits["train"].num_classes,
                                pretrained=cfg["pretrained"], img_size=cfg["img_size"], drop_rate=cfg["drop_rate"],
                                drop_path_rate=cfg["drop_path_rate"], **cfg["method_args"]).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(cfg, param_groups(model, cfg["weight_decay"], cfg["wd_scope"], cfg.get("no_decay", ())),
                          device)
    forward = model if cfg["compile"] == "none" else torch.compile(
        model, mode=None if cfg["compile"] == "default" else cfg["compile"])  # shares model's parameters
    steps_per_epoch = len(loaders["train"])
    state = {"epoch": 0, "step": 0, "history": [], "train_time": 0.0, "train_images": 0}
    if resume:
        ckpt = torch.load(out / "train_state.pt", map_location="cpu", weights_only=False)
        try:
            missing = model.load_state_dict(ckpt["trainable"], strict=False)
        except RuntimeError as e:  # same names, other shapes (e.g. another rank)
            raise RunError(f"{out / 'train_state.pt'}: checkpoint does not match the model "
                           f"({str(e).splitlines()[-1].strip()})") from None
        if missing.unexpected_keys:
            raise RunError(f"{out / 'train_state.pt'}: checkpoint does not match the model ({missing.unexpected_keys[:3]})")
        opt.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        state = ckpt["state"]
        state.pop("best_val", None)  # checkpoints written before the clean protocol dropped best-epoch selection
    else:
        try:
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / "config.json", cfg)
        except OSError as e:
            raise RunError(f"--out {out}: cannot write there ({e.strerror or e}); choose a writable folder") from None
    # every point is written after the checkpoint of its epoch, so a resumed run never writes a point twice and
    # nothing needs purging (a purge by step would also drop epoch-indexed points, train/acc, eval/*, perf/*)
    writer = SummaryWriter(log_dir=str(out / "tb"))
    count_all = models.count_parameters(model)
    count_no_head = models.count_parameters(model, head=False)
    print(f"{cfg['method']} on {dataset} ({benchmark}, {cfg['protocol']} protocol): "
          f"{count_all:,} trainable parameters ({count_no_head:,} without the head), "
          f"{len(splits['train'])} training images, {steps_per_epoch} steps/epoch, device {device}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    evals = eval_epochs(cfg)
    if cfg["eval_initial"] and not resume:
        split = "val" if cfg["protocol"] == "clean" else "test"
        state["acc_initial"] = evaluate(eval_network(model, cfg), loaders[split], cfg)
        writer.add_scalar(f"eval/{split}/acc", state["acc_initial"], 0)
    model.train()
    for epoch in range(state["epoch"], cfg["epochs"]):
        loaders["train"].set_epoch(epoch)
        losses, correct, seen = [], torch.zeros((), dtype=torch.long, device=device), 0
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        last = f" (previous loss {state['history'][-1]['loss']:.4f})" if state["history"] else ""
        points: list[tuple[str, float, int]] = []  # (tag, value, step), written once the epoch is checkpointed
        bar = tqdm(loaders["train"], desc=f"epoch {epoch + 1}/{cfg['epochs']}{last}", leave=False,
                   dynamic_ncols=True, disable=not sys.stderr.isatty())
        for x, y in bar:
            lr = lr_at(cfg, state["step"], epoch, steps_per_epoch)
            for g in opt.param_groups:
                g["lr"] = lr
            with autocast(cfg):
                logits = forward(x)
                loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(params, float(cfg["grad_clip"]))
            opt.step()
            losses.append(loss.detach())
            correct += (logits.detach().argmax(-1) == y).sum()
            seen += y.numel()
            points.append(("train/lr", lr, state["step"]))
            state["step"] += 1
            # host-side numbers only: reading the loss here would sync with the device every step
            bar.set_postfix(lr=f"{lr:.2e}", img_s=f"{seen / (time.perf_counter() - t0):.0f}", refresh=False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        step_losses = torch.stack(losses).float().cpu()  # one transfer per epoch, no per-step host syncs
        bad = (~torch.isfinite(step_losses)).nonzero()
        if len(bad):
            i = int(bad[0])
            raise Diverged(f"loss became {step_losses[i].item()} at epoch {epoch + 1}, step {i + 1} of "
                           f"{steps_per_epoch} (lr {lr:.3g}): lower --lr or set --grad-clip 1.0")
        first = state["step"] - len(losses)
        points += [("train/loss", value, first + i) for i, value in enumerate(step_losses.tolist())]
        state["train_time"] += dt
        state["train_images"] += seen
        record = {"epoch": epoch + 1, "loss": float(step_losses.mean()), "train_acc": 100.0 * correct.item() / seen,
                  "img_per_s": seen / dt, "lr": lr}
        points += [("train/acc", record["train_acc"], epoch + 1), ("perf/img_per_s", record["img_per_s"], epoch + 1)]
        if device.type == "cuda":
            record["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
            points.append(("perf/peak_mem_mb", record["peak_mem_mb"], epoch + 1))
        if epoch in evals:  # eval_epochs always holds the last epoch
            net = eval_network(model, cfg)
            for split in ("val", "test") if cfg["protocol"] == "clean" else ("test",):
                if split == "test" and cfg["protocol"] == "clean" and epoch != cfg["epochs"] - 1:
                    continue  # clean protocol: the test split is read at the last epoch only
                record[f"{split}_acc"] = evaluate(net, loaders[split], cfg)
                points.append((f"eval/{split}/acc", record[f"{split}_acc"], epoch + 1))
            del net  # a merged copy must not stay allocated through the next epochs' training
        state["history"].append(record)
        state["epoch"] = epoch + 1
        shown = " ".join(f"{k}={v:.4g}" for k, v in record.items() if k not in ("epoch",))
        print(f"epoch {epoch + 1}/{cfg['epochs']} {shown}", flush=True)
        state["wall_s"] = state.get("wall_s", 0.0) + time.perf_counter() - t0  # before the checkpoint: resumable
        ckpt = {"trainable": trainable_state(model), "optimizer": opt.state_dict(), "rng": rng_state(),
                "state": state, "config": cfg}
        atomic_write(out / "train_state.pt", lambda p: torch.save(ckpt, p))
        save_adapter(out / "adapter.safetensors", model, {"epoch": epoch + 1, "method": cfg["method"]})
        for tag, value, step in points:
            writer.add_scalar(tag, value, step)
        writer.flush()
        if stop_after is not None and stop_after <= epoch + 1 < cfg["epochs"]:
            writer.close()
            return None  # simulated kill (tests): checkpoint written, no results
    # ---- final numbers
    hist = state["history"]
    tested = [r for r in hist if "test_acc" in r]
    at_last = hist[-1] if hist and hist[-1]["epoch"] == cfg["epochs"] else {}
    result = {
        "method": cfg["method"], "method_args": model.method.config(), "arch": cfg["arch"],
        "pretrained": model.pretrained_info, "dataset": dataset, "benchmark": benchmark,
        "splits": split_provenance(splits),
        "split_regenerated": any(s.info.get("regenerated") for s in splits.values()),
        "num_classes": splits["train"].num_classes, "protocol": cfg["protocol"], "seed": cfg["seed"],
        "precision": cfg["precision"], "compile": cfg["compile"], "epochs": cfg["epochs"], "lr": cfg["lr"],
        "peak_lr": peak_lr(cfg),
        "optimizer": cfg.get("optimizer", "adamw"), "weight_decay": cfg["weight_decay"],
        "batch_size": cfg["batch_size"], "img_size": cfg["img_size"], "norm": cfg["norm"],
        "color_jitter": cfg.get("color_jitter", 0.0), "train_aug": train_aug_record(loaders["train"].aug),
        "train_source": "image files" if isinstance(loaders["train"], data.ImageLoader) else "cache",
        "acc_last": at_last.get("test_acc"),
        "acc_initial": state.get("acc_initial"), "acc_best_test": None, "acc_best_test_epoch": None,
        "acc_best_test_note": "maximum over evaluated epochs, selected on the TEST set (paper protocol)",
        # clean protocol (§6.2 step 1): the selection score; train800 -> val200, last epoch, never the best epoch
        "acc_val_last": at_last.get("val_acc"),
        "params_trainable": count_all, "params_trainable_no_head": count_no_head,
        "peak_mem_mb": max((r.get("peak_mem_mb", 0.0) for r in hist), default=0.0) or None,
        "train_img_per_s": state["train_images"] / max(state["train_time"], 1e-9),
        "train_time_s": state["train_time"], "wall_s": state.get("wall_s", 0.0), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "versions": versions(), "git_commit": git_commit(), "history": hist,
    }
    if cfg["protocol"] == "paper" and tested:
        best = max(tested, key=lambda r: r["test_acc"])
        result["acc_best_test"], result["acc_best_test_epoch"] = best["test_acc"], best["epoch"]
    hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in cfg.items()
               if k not in ("out", "data_root", "cache_dir")}
    metrics = {f"hparam/{k}": v for k, v in result.items() if k.startswith("acc_") and isinstance(v, float)}
    writer.add_hparams(hparams, metrics or {"hparam/acc_last": -1.0}, run_name="hparams")
    writer.close()
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from models.pretrained import WeightsUnavailable
    try:
        if args.resume:
            out = Path(args.resume)
            given = sorted("--" + k.replace("_", "-") for k in vars(args) if k in OPTIONS and k not in WHERE) + \
                (["--config"] if args.config else []) + (["--overwrite"] if args.overwrite else [])
            if given:
                raise RunError(f"--resume continues {out} with the options it was started with; drop "
                               f"{' '.join(given)} (to change them, start a new run with --out; only "
                               f"{', '.join('--' + k.replace('_', '-') for k in WHERE)} may change on a resume)")
            if not (out / "train_state.pt").exists():
                raise RunError(f"--resume {out}: no checkpoint (train_state.pt) there; start a new run with --out")
            if (out / "results.json").exists():
                raise RunError(f"--resume {out}: the run already finished (results.json exists)")
            cfg = json.loads((out / "config.json").read_text())
            cfg["out"] = str(out.resolve())  # the folder given, wherever the run was started or moved or copied to
            for key in WHERE:  # where the run's data, cache and device are on this machine: results do not depend
                if key in vars(args):
                    value = getattr(args, key)
                    cfg[key] = str(Path(value).expanduser().resolve()) if key in ("data_root", "cache_dir") else value
            check_device(cfg["device"])
        else:
            cfg = resolve_config(args)
            out = Path(cfg["out"])
            if (out / "results.json").exists() and not args.overwrite:
                raise RunError(f"--out {out} already holds a finished run (results.json); pass --overwrite to "
                               "replace it or choose another --out")
            if (out / "train_state.pt").exists() and not args.overwrite:
                raise RunError(f"--out {out} holds an unfinished run; continue it with --resume {out} or pass "
                               "--overwrite")
            if args.overwrite and out.exists():
                for name in ("results.json", "train_state.pt", "adapter.safetensors", "config.json"):
                    (out / name).unlink(missing_ok=True)
                import shutil

                shutil.rmtree(out / "tb", ignore_errors=True)
        result = train(cfg, resume=bool(args.resume), stop_after=args.stop_after_epochs)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Diverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (ValueError, WeightsUnavailable) as e:  # bad arch/method/arguments/weights/data: messages name the fix
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result is None:
        return 0
    write_json(out / "results.json", result)
    sel = (f"best test {result['acc_best_test']:.2f}% at epoch {result['acc_best_test_epoch']} (test-selected)"
           if result["protocol"] == "paper" else
           f"last-epoch val accuracy {result['acc_val_last']:.2f}% (the selection score)")
    print(f"done: last-epoch test accuracy {result['acc_last']:.2f}%, {sel}\n"
          f"results: {out / 'results.json'}\nadapter: {out / 'adapter.safetensors'}\n"
          f"curves:  tensorboard --logdir {out / 'tb'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
