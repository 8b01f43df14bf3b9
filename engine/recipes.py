"""Recipes: the papers' hyper-parameters as data, one YAML file per paper and benchmark in ``reproduce/configs/``.

A recipe (a sweep config) holds ``benchmark``, ``selection`` (how its values were obtained), ``reference`` (the paper
rows it is compared with), ``defaults`` (train.py options shared by every task), ``tasks`` (task id -> overrides;
``method_args`` merge key-wise) and optionally ``search`` (the grid of ``reproduce/search.py``). This module reads
one and resolves it for a task: ``train.py --recipe hta_vtab --dataset cifar`` and every sweep of ``reproduce/``
(through ``reproduce/taskcfg.py``) read the same values the same way. Plain Python (no torch).
"""
from __future__ import annotations

import copy
from pathlib import Path

from data.tasks import FGVC_DATASETS, VTAB_TASKS, resolve_task
from util.files import read_yaml

__all__ = ["RECIPE_DIR", "TOP_LEVEL", "SELECTIONS", "RecipeError", "load", "resolve", "names", "values_for",
           "recipes_for"]

RECIPE_DIR = Path(__file__).resolve().parents[1] / "reproduce" / "configs"
TOP_LEVEL = {"benchmark", "selection", "reference", "defaults", "tasks", "search"}
# how a recipe's values were obtained; reproduce/verify.py's CLEAN_NOTES says what each means for its table
SELECTIONS = ("paper", "borrowed", "default", "val", "partial")


class RecipeError(ValueError):
    """A recipe that cannot be read or does not fit the run: one line naming the file and the fix."""


def load(path: str | Path) -> dict:
    """Read and structurally check a recipe (not the option names: building the run configuration checks those)."""
    path = Path(path)
    try:
        spec = read_yaml(path)
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such config") from None
    except ValueError as e:  # one line: where the YAML breaks, not the scanner's caret drawing
        raise RecipeError(f"{e}; fix the file or pass another config") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: cannot read ({e})") from None
    if not isinstance(spec, dict):
        raise RecipeError(f"{path}: expected a mapping with keys {sorted(TOP_LEVEL)}")
    unknown = set(spec) - TOP_LEVEL
    if unknown:
        raise RecipeError(f"{path}: unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(TOP_LEVEL)}")
    for key in ("benchmark", "defaults", "tasks"):
        if key not in spec:
            raise RecipeError(f"{path}: missing '{key}'")
    if spec["benchmark"] not in ("vtab", "fgvc"):
        raise RecipeError(f"{path}: benchmark must be vtab or fgvc, got {spec['benchmark']!r}")
    if spec.get("selection", "paper") not in SELECTIONS:
        raise RecipeError(f"{path}: selection must be one of {SELECTIONS}")
    spec["tasks"] = {t: (v or {}) for t, v in (spec["tasks"] or {}).items()}
    expected = VTAB_TASKS if spec["benchmark"] == "vtab" else FGVC_DATASETS
    bad = [t for t in spec["tasks"] if t not in expected]
    if bad:
        raise RecipeError(f"{path}: unknown {spec['benchmark']} task id(s) {bad}; canonical ids: {', '.join(expected)}")
    return spec


def resolve(spec: dict, task: str, epochs: int | None = None) -> dict:
    """The flat option mapping of one task: defaults, then the task's overrides (``method_args`` merged key-wise).

    ``epochs`` (the sweep's ``EPOCHS`` smoke/debug override) also scales ``warmup_epochs`` in proportion
    (10 of 100 → 0 of 1), so a shortened run still has its warm-up inside the run.
    """
    if task not in spec["tasks"]:
        raise RecipeError(f"task {task!r} is not in the config; its tasks: {', '.join(spec['tasks'])}")
    cfg = copy.deepcopy(spec["defaults"])
    over = copy.deepcopy(spec["tasks"][task])
    cfg["method_args"] = {**(cfg.get("method_args") or {}), **(over.pop("method_args", None) or {})}
    cfg.update(over)
    if epochs is not None:
        if epochs < 1:
            raise RecipeError(f"epochs must be >= 1, got {epochs}")
        warm = cfg.get("warmup_epochs")
        if warm is not None and cfg.get("epochs"):
            cfg["warmup_epochs"] = int(warm * epochs // cfg["epochs"])
        cfg["epochs"] = epochs
    return cfg


def names() -> list[str]:
    """The recipes shipped with the repository (``reproduce/configs/*.yaml`` stems)."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def values_for(name: str, dataset: str) -> dict:
    """The options recipe ``name`` gives ``dataset`` (any alias of a task of its benchmark)."""
    path = RECIPE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise RecipeError(f"--recipe {name}: no such recipe; choose one of {', '.join(names())}")
    spec = load(path)
    benchmark, task = resolve_task(dataset)
    if benchmark != spec["benchmark"]:
        others = [n for n in names() if n.endswith(f"_{benchmark}")]
        hint = f"; for {benchmark.upper()} use {' or '.join(others)}" if others else \
            " (the demo tasks have no paper recipe)"
        raise RecipeError(f"--recipe {name} is a {spec['benchmark'].upper()} recipe and {dataset} is a "
                          f"{benchmark.upper()} task{hint}")
    return resolve(spec, task)


def recipes_for(method: str, benchmark: str) -> list[str]:
    """The recipes of ``benchmark`` for ``method``'s family (``arc`` and ``arc_att`` are ARC's; what to suggest for
    ``--method arc`` given alone)."""
    family = method.split("_")[0]
    found = []
    for name in names():
        if name.split("_")[1:2] != [benchmark]:  # a table row's config (hta_ablation_*, snell_mae_*): not a recipe
            continue
        try:
            spec = load(RECIPE_DIR / f"{name}.yaml")
        except RecipeError:
            continue
        if spec["benchmark"] == benchmark and str(spec["defaults"].get("method", "")).split("_")[0] == family:
            found.append(name)
    return found
