"""One run's configuration: every option of ``train.py``, with its type, choices, valid range and help, declared once.

A :class:`RunConfig` is built from the defaults below, then a flat YAML file (``--config``), then flags, and checked
in one place (:func:`build`): a value of the wrong type or outside its range stops the run with one
:class:`~engine.errors.RunError` line naming the option (and the file it came from) before anything is written.
``reproduce/taskcfg.py`` validates a sweep config by building each task's configuration the same way
(:func:`from_mapping`).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import math
from pathlib import Path
from typing import Any, Callable

import yaml

from data.tasks import PROTOCOLS
from util.cli import ArgumentParser
from util.files import read_yaml

from .errors import RunError

__all__ = ["RunConfig", "OPTIONS", "CHOICES", "WHERE", "build_parser", "build", "from_mapping", "from_json",
           "load_yaml", "parse_method_args", "check_device", "flag_name", "generic_defaults_note", "ROOT"]

ROOT = Path(__file__).resolve().parents[1]  # the repository: default run folders go to <ROOT>/runs


# ------------------------------------------------------------------------------------------------ value parsers
def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_float_or_none(text: str) -> float | None:
    return None if text.lower() in ("none", "null", "") else float(text)


def parse_names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _parse_value(text: str):
    """A method argument's value: YAML scalars (``0.1``, ``true``, ``null``), ``a,b,c`` as a tuple."""
    value = yaml.safe_load(text)
    if isinstance(value, str) and "," in value:
        return tuple(_parse_value(v) for v in value.split(",") if v)
    return tuple(value) if isinstance(value, list) else value


def parse_method_args(items: list[str]) -> dict:
    """``["rank=1", "targets=q,v"]`` -> ``{"rank": 1, "targets": ("q", "v")}``."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise RunError(f"--method-args: {item!r} is not key=value (e.g. --method-args rank=1 dropout=0.1)")
        out[key] = _parse_value(text)
    return out


_WANTS = {parse_bool: "true or false", int: "a whole number", float: "a number",
          parse_float_or_none: "a number or none", str: "text"}


# ----------------------------------------------------------------------------------------------- option fields
def option(default: Any, help: str, *, parse: Callable | None = None, choices: tuple[str, ...] | None = None,
           low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False,
           fill: tuple[Any, Any] | None = None, where: bool = False, aliases: tuple[str, ...] = ()) -> Any:
    """A :class:`RunConfig` field. ``parse`` turns a flag's text into the value (default: from the default's type);
    ``choices`` or the range ``low``..``high`` (``*_open``: that bound excluded) is what the option accepts, checked
    by :func:`build`; ``fill`` = (demo value, value) fills a ``None`` default by dataset; ``where``: the option says
    where a run reads or runs, not what it computes, so a ``--resume`` may change it; ``aliases``: more flags for it
    (timm's names: ``--model``, ``--opt``, ``--sched``, ``--clip-grad``, ``--output``)."""
    meta = {"help": help, "parse": parse, "choices": choices, "low": low, "high": high, "low_open": low_open,
            "high_open": high_open, "fill": fill, "where": where, "aliases": aliases}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class RunConfig:
    """Every option of a run. ``None`` defaults with a ``fill`` are set per dataset by :func:`build`."""

    method: str = option("hta", "method name (see models.METHODS)")
    recipe: str | None = option(None, "a paper's recipe for the --dataset given: reproduce/configs/<name>.yaml "
                                      "(hta_vtab, snell_fgvc, ...); --config and flags override its values")
    method_args: dict = option({}, "method keyword arguments (YAML mapping; flags: --method-args rank=1 dropout=0.1)")
    dataset: str = option("demo_shape", "VTAB task, FGVC dataset, or a generated demo task (demo_shape, demo_ori, "
                                        "demo)")
    data_root: str | None = option(None, "root folder holding <task>/ (VTAB) or the FGVC dataset folder; demo: "
                                         "generated if absent", where=True)
    cache_dir: str | None = option(None, "decoded-image cache (default $VIT_PEFT_CACHE or ~/.cache/vit_peft)",
                                   where=True)
    arch: str | None = option(None, "architecture (default vit_base_patch16_224; demo: vit_micro_patch8)",
                              fill=("vit_micro_patch8", "vit_base_patch16_224"), aliases=("--model",))
    pretrained: str | None = option(None, "timm name | .npz/.safetensors/.pth path | none (default "
                                          "vit_base_patch16_224.orig_in21k; demo: none)",
                                    fill=("none", "vit_base_patch16_224.orig_in21k"))
    img_size: int | None = option(None, "input resolution (default 224; demo: 32)", parse=int, low=1,
                                  fill=(32, 224))
    epochs: int | None = option(None, "training epochs (default 100; demo: 30)", parse=int, low=1, fill=(30, 100))
    batch_size: int = option(32, "training batch size", low=1)
    eval_batch_size: int = option(256, "evaluation batch size", low=1)
    lr: float | None = option(None, "peak learning rate (default 1e-3; demo: 1e-2)", parse=float, low=0,
                              low_open=True, fill=(1e-2, 1e-3))
    optimizer: str = option("adamw", "'adamw' (ARC, HTA, SNELL, most baselines) or 'sgd' with momentum (the VPT and "
                                     "linear-probe reference recipe, docs/methods/baselines.md §1, §7)",
                            choices=("adamw", "sgd"), aliases=("--opt",))
    momentum: float = option(0.9, "SGD momentum (optimizer sgd)", low=0, high=1, high_open=True)
    scale_lr: bool = option(False, "use lr × batch_size / 256 as the peak learning rate (VPT's rule, "
                                   "docs/methods/baselines.md §7)")
    weight_decay: float = option(1e-4, "weight decay (decoupled for adamw, L2 for sgd)", low=0)
    wd_scope: str = option("matrices", "'matrices': decay only weights with ndim > 1 that are not tokens/embeddings; "
                                       "'all'", choices=("matrices", "all"))
    no_decay: tuple = option((), "parameter names (last component) never decayed, in any wd_scope, comma-separated; "
                                 "e.g. v_left,v_right,d: HTA's Householder vectors and diagonal "
                                 "(docs/methods/hta.md §5.2)", parse=parse_names)
    warmup_epochs: int | None = option(None, "linear warm-up epochs (default: 10%% of the epochs, at most 10)",
                                       parse=int, low=0)
    schedule: str = option("per_step", "'per_step' warm-up + cosine (ARC/HTA) or 'per_epoch_timm' (SNELL, "
                                       "docs/methods/snell.md §8.1)", choices=("per_step", "per_epoch_timm"),
                           aliases=("--sched",))
    min_lr_factor: float = option(1e-6, "per_step cosine floor as a fraction of lr", low=0, high=1)
    grad_clip: float | None = option(None, "max gradient norm (none or 0 = no clipping)", parse=parse_float_or_none,
                                     low=0, aliases=("--clip-grad",))
    drop_rate: float = option(0.0, "backbone dropout", low=0, high=1, high_open=True)
    drop_path_rate: float | None = option(None, "backbone stochastic depth (default: the method's, e.g. 0.1 for "
                                                "SNELL)", parse=parse_float_or_none, low=0, high=1, high_open=True)
    norm: str = option("imagenet", "input normalisation: 'imagenet' mean/std or 'half' (0.5/0.5)",
                       choices=("imagenet", "half"))
    fgvc_aug: str = option("rrc", "FGVC train augmentation: 'rrc' (random-resized-crop + flip) or 'resize_crop'",
                           choices=("rrc", "resize_crop"))
    fgvc_interpolation: str = option("bilinear", "FGVC train resampling: 'bilinear' (torchvision's default: ARC, "
                                                 "HTA) or 'bicubic' (timm's: SNELL, docs/methods/snell.md §8.1)",
                                     choices=("bilinear", "bicubic"))
    fgvc_source: str = option("cache", "FGVC training images: 'cache' (crops of the decoded 256-px centre squares: "
                                       "fast, with the deviations data/fgvc.py lists) or 'images' (the original "
                                       "files decoded every epoch with the papers' torchvision transforms: exact, "
                                       "slower; data/images.py)", choices=("cache", "images"))
    data_workers: int | None = option(None, "workers decoding images: the first decode of a split into the cache "
                                            "(threads) and fgvc_source 'images' (processes) (default: min(8, CPU "
                                            "count); 0: in the training process)", parse=int, low=0, where=True)
    color_jitter: float = option(0.0, "FGVC train augmentation: brightness/contrast/saturation jitter strength in "
                                      "[0, 1] (timm's color_jitter; SNELL uses 0.4); 0 = off", low=0, high=1)
    seed: int = option(42, "random seed", low=0, high=2**32 - 1)  # numpy's seeds are 32-bit
    precision: str = option("fp32", "'fp32' or 'bf16' (autocast)", choices=("fp32", "bf16"))
    protocol: str = option("paper", "'paper' (train800val200: test-set selected max + last epoch) or 'clean' "
                                    "(train800: val top-1 at the last epoch for selection, test at the last epoch)",
                           choices=PROTOCOLS)
    eval_every: int = option(10, "evaluate every N epochs (plus each of the last eval_last epochs)", low=1)
    eval_last: int = option(10, "always evaluate each of the last N epochs", low=1)
    eval_merged: bool = option(True, "evaluate the merged plain ViT (mergeable methods): same numbers, plain-ViT "
                                     "speed")
    eval_initial: bool = option(False, "also evaluate before training (epoch 0 on the curves; acc_initial in "
                                       "results.json)")
    device: str | None = option(None, "cuda | cpu (default: cuda when available)", where=True)
    compile: str = option("none", "torch.compile the training forward: none | default | reduce-overhead (CUDA "
                                  "graphs) | max-autotune",
                          choices=("none", "default", "reduce-overhead", "max-autotune"))
    out: str | None = option(None, "run directory (default runs/<dataset>_<method>_<time>)", aliases=("--output",))

    def to_json(self) -> dict:
        """The mapping written to a run's ``config.json`` (tuples become lists)."""
        return dataclasses.asdict(self)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(RunConfig)}
OPTIONS: tuple[str, ...] = tuple(FIELDS)
CHOICES: dict[str, tuple[str, ...]] = {n: f.metadata["choices"] for n, f in FIELDS.items() if f.metadata["choices"]}
WHERE: tuple[str, ...] = tuple(n for n, f in FIELDS.items() if f.metadata["where"])
_MAPPINGS = ("method_args",)


def _default(name: str):
    f = FIELDS[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _parser_of(name: str) -> Callable:
    """How a flag's (or a config file's) text becomes the option's value."""
    f = FIELDS[name]
    if f.metadata["parse"] is not None:
        return f.metadata["parse"]
    default = _default(name)
    if isinstance(default, bool):
        return parse_bool
    return type(default) if isinstance(default, (int, float)) else str


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


# ------------------------------------------------------------------------------------------------------ parsing
def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """train.py's flags: one per option (``--batch-size`` for ``batch_size``), plus --config/--resume/--overwrite.
    Options not given are absent from the namespace, so a config file's values are not overridden by defaults."""
    p = ArgumentParser(description=description, formatter_class=argparse.RawTextHelpFormatter)
    for name, f in FIELDS.items():
        kw = dict(default=argparse.SUPPRESS, help=f"{f.metadata['help']} [default: {_default(name)}]", dest=name)
        flags = (flag_name(name), *f.metadata["aliases"])
        parse = _parser_of(name)
        if name in _MAPPINGS:
            p.add_argument(*flags, nargs="*", metavar="KEY=VALUE", **kw)
        elif parse is parse_bool:
            p.add_argument(*flags, type=parse_bool, metavar="{true,false}", **kw)
        elif name in CHOICES:
            p.add_argument(*flags, choices=CHOICES[name], **kw)
        else:
            p.add_argument(*flags, type=parse, **kw)
    p.add_argument("--config", help="YAML file of options (underscored names); flags override it")
    p.add_argument("--resume", metavar="OUT", help="continue the run in OUT from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("--stop-after-epochs", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulate a kill
    return p


def load_yaml(path: str | Path) -> dict:
    """A flat ``--config`` file as a mapping of option -> value, each converted as its flag would be."""
    try:
        cfg = read_yaml(path) or {}
    except FileNotFoundError:
        raise RunError(f"--config {path}: file not found") from None
    except IsADirectoryError:
        raise RunError(f"--config {path}: is a folder; give a YAML file of option: value lines") from None
    except ValueError as e:  # one line: file, line, column, problem
        raise RunError(f"--config {e}; fix the file (one option: value per line)") from None
    if not isinstance(cfg, dict):
        raise RunError(f"--config {path}: expected a mapping of option: value")
    unknown = sorted(set(cfg) - set(OPTIONS))
    if unknown:
        hint = (" (a sweep config of reproduce/configs/: write one task's flat config with `python -m "
                f"reproduce.taskcfg {path} <task> --out cfg.yaml`)") if {"defaults", "tasks"} & set(unknown) else ""
        raise RunError(f"--config {path}: unknown option(s) {unknown}; valid: {', '.join(OPTIONS)}{hint}")
    return {k: _convert(k, v, f"--config {path}: ") for k, v in cfg.items()}


def _convert(key: str, value, where: str = ""):
    """A value from a file (YAML types, or text: YAML 1.1 reads ``1e-3`` as a string) as the flag of the same name
    would give it: numbers, true/false, text; ``None`` only where the option allows it. Else one RunError naming
    ``where``, the option and what it takes."""
    parse, default = _parser_of(key), _default(key)
    if value is None:
        if default is None or parse is parse_float_or_none:  # options that take "none"
            return None
        raise RunError(f"{where}{key} is empty; give a value or remove the line (default {default!r})")
    if key in _MAPPINGS:
        if not isinstance(value, dict):
            raise RunError(f"{where}{key}: {value!r} is not valid; it takes a mapping, e.g. {{rank: 1, dropout: 0.1}}")
        return {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    if parse is parse_names:  # a list, or comma-separated text
        names = parse_names(value) if isinstance(value, str) else value
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n for n in names):
            raise RunError(f"{where}{key} must be a list of parameter names (e.g. [v_left, v_right, d]), got "
                           f"{value!r}")
        return tuple(names)
    try:
        if parse is parse_bool:
            return value if isinstance(value, bool) else parse_bool(str(value))
        if isinstance(value, bool) or (parse is str and not isinstance(value, str)):
            raise ValueError(value)
        if parse is int:
            if float(value) != int(float(value)):
                raise ValueError(value)
            return int(float(value))
        return parse(value if parse is str else str(value))
    except (ValueError, OverflowError, argparse.ArgumentTypeError):
        raise RunError(f"{where}{key}: {value!r} is not valid; it takes {_WANTS.get(parse, 'text')}") from None


def _range_text(f: dataclasses.Field) -> str | None:
    m = f.metadata
    if m["low"] is None and m["high"] is None:
        return None
    if m["high"] is None:
        return f"{'>' if m['low_open'] else '>='} {m['low']}"
    return f"a number in {'(' if m['low_open'] else '['}{m['low']}, {m['high']}{')' if m['high_open'] else ']'}"


def _check(name: str, value) -> None:
    """The option's declared choices and range; one RunError naming what it accepts."""
    f = FIELDS[name]
    m = f.metadata
    if m["choices"] and value not in m["choices"]:
        raise RunError(f"{name}={value!r}: choose one of {', '.join(m['choices'])}")
    if value is None or (m["low"] is None and m["high"] is None):
        return
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = number and (m["low"] is None or (value > m["low"] if m["low_open"] else value >= m["low"])) and \
        (m["high"] is None or (value < m["high"] if m["high_open"] else value <= m["high"]))
    if not ok:
        raise RunError(f"{name} must be {_range_text(f)}, got {value!r}")


def from_mapping(values: dict, where: str = "") -> RunConfig:
    """A RunConfig from defaults updated by ``values`` (converted as in a config file and checked: types, choices,
    ranges), without filling dataset defaults or touching the file system: what a sweep config's task gives."""
    unknown = sorted(set(values) - set(OPTIONS))
    if unknown:
        raise RunError(f"{where}unknown option(s) {unknown}; valid: {', '.join(OPTIONS)}")
    cfg = RunConfig(**{k: _convert(k, v, where) for k, v in values.items()})
    for name in OPTIONS:
        _check(name, getattr(cfg, name))
    return cfg


def from_json(values: dict) -> RunConfig:
    """A run's saved ``config.json`` back as a RunConfig (lists as tuples, as the flags give them)."""
    fixed = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in OPTIONS}
    args = fixed.get("method_args") or {}
    fixed["method_args"] = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    return RunConfig(**fixed)


def build(args: argparse.Namespace) -> RunConfig:
    """Defaults, then ``--recipe`` (the recipe's values for the dataset), then ``--config``, then flags; every value
    checked; dataset defaults filled; paths absolute (a run can be resumed from any directory); the device checked."""
    values = load_yaml(args.config) if getattr(args, "config", None) else {}
    flags = {k: v for k, v in vars(args).items() if k in OPTIONS}
    if "method_args" in flags:
        flags["method_args"] = parse_method_args(flags["method_args"])
    recipe = flags.get("recipe", values.get("recipe"))
    layers = [values, flags]
    if recipe:  # the recipe's values for this dataset, below the config file and the flags
        from . import recipes

        dataset = flags.get("dataset", values.get("dataset", _default("dataset")))
        try:
            layers.insert(0, {k: _convert(k, v, f"--recipe {recipe}: ") for k, v in
                              recipes.values_for(recipe, dataset).items()})
        except ValueError as e:  # RecipeError, or data's unknown-task DataError
            raise RunError(str(e)) from None
    merged: dict = {}
    for layer in layers:  # method_args merge key-wise, as a sweep config's task overrides do
        merged.update({k: v for k, v in layer.items() if k != "method_args"})
        if "method_args" in layer:
            merged["method_args"] = {**merged.get("method_args", {}), **layer["method_args"]}
    cfg = from_mapping(merged)
    demo = str(cfg.dataset).startswith("demo")
    fills = {n: f.metadata["fill"][0 if demo else 1] for n, f in FIELDS.items()
             if f.metadata["fill"] and getattr(cfg, n) is None}
    cfg = dataclasses.replace(cfg, **fills)
    if cfg.warmup_epochs is None:
        cfg.warmup_epochs = min(10, cfg.epochs // 10)
    if cfg.grad_clip == 0:
        cfg.grad_clip = None
    if cfg.device is None:
        import torch

        cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
    check_device(cfg.device)
    if cfg.out is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        cfg.out = str(ROOT / "runs" / f"{cfg.dataset}_{cfg.method}_{stamp}")
    for key in ("out", "data_root", "cache_dir"):
        if getattr(cfg, key) is not None:
            setattr(cfg, key, str(Path(getattr(cfg, key)).expanduser().resolve()))
    if cfg.pretrained not in (None, "none") and Path(cfg.pretrained).expanduser().is_file():
        cfg.pretrained = str(Path(cfg.pretrained).expanduser().resolve())  # weights: only when a file is named
    return cfg


def generic_defaults_note(cfg: RunConfig, from_file: bool) -> str | None:
    """For ``--method hta|arc|snell`` on a benchmark task with neither ``--recipe`` nor ``--config``: the line saying
    that train.py's generic defaults are not that paper's recipe (they leave HTA's Householder vectors and ARC's
    scales out of weight decay and do not clip, for instance), naming the recipe to use. None otherwise."""
    from data.tasks import resolve_task

    family = cfg.method.split("_")[0]
    if cfg.recipe or from_file or family not in ("hta", "arc", "snell"):
        return None
    benchmark, _ = resolve_task(cfg.dataset)
    if benchmark == "demo":
        return None
    from .recipes import recipes_for

    found = recipes_for(cfg.method, benchmark)
    return (f"note: --method {cfg.method} with train.py's generic defaults, not the paper's recipe; for its values "
            f"use --recipe {' or '.join(found) or '(none for ' + benchmark + ')'} (flags still override)")


def check_device(device: str) -> None:
    """``device`` names a CPU or a visible CUDA device, else one RunError naming the fix."""
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda"):
        raise RunError(f"device {device!r}: use cuda, cuda:N or cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise RunError(f"device {device!r}: no CUDA device is visible here; use --device cpu")
