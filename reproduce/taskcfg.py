"""Sweep configs ``reproduce/configs/<paper>_<benchmark>.yaml`` → one flat ``train.py --config`` file per task.

A sweep config is a YAML mapping with

* ``benchmark``: ``vtab`` | ``fgvc``;
* ``selection``: where the per-task hyper-parameters come from — ``paper`` (released scripts / author's reply; the
  authors selected them on the test set), ``borrowed`` (the paper released none; the values are another method's
  released recipe on the same tasks, which its authors selected on the test set, until ``reproduce/search.py``
  runs), ``default`` (the paper released none: project defaults until ``reproduce/search.py`` runs; nothing was
  selected on the test set), ``val`` (every task's values selected on val200 / val.json by
  ``reproduce/search.py``) or ``partial`` (search.py has run for some tasks only: the tasks whose lines carry a
  ``# source: reproduce/search.py`` comment, see ``searched_tasks()``, are val-selected, the others keep their
  defaults or paper values; docs/benchmarks.md §6.2);
* ``reference``: backbone id → list of ``{paper, table, method}`` rows of ``paper_tables/`` to compare with
  (``verify.py``);
* ``defaults``: ``train.py`` options (underscored names, as in ``train.py --config``) shared by every task;
* ``tasks``: task id → overrides (``{}`` when the task uses the defaults); ``method_args`` overrides merge key-wise;
* optionally ``search``: the grid ``reproduce/search.py`` runs and how the per-task values were obtained.

Every value under ``defaults`` and ``tasks`` carries a ``# source:`` comment (``undocumented()`` checks it).

    python -m reproduce.taskcfg reproduce/configs/snell_vtab.yaml cifar --out runs/x/config.yaml [--epochs 1]
    python -m reproduce.taskcfg reproduce/configs/snell_vtab.yaml --list-tasks
    python -m reproduce.taskcfg reproduce/configs/snell_vtab.yaml --get benchmark
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.recipes import SELECTIONS, TOP_LEVEL, RecipeError, load, resolve  # noqa: E402,F401
from reproduce import tasks as K  # noqa: E402
from util.cli import ArgumentParser  # noqa: E402
from util.files import write_text_atomic  # noqa: E402

__all__ = ["TOP_LEVEL", "REQUIRED", "SELECTIONS", "SWEEP_KNOBS", "ConfigError", "load", "resolve", "select",
           "canonical", "validate", "undocumented", "searched_tasks", "dump", "write_task_config", "main"]

REQUIRED = ("method", "method_args", "lr", "weight_decay", "batch_size", "epochs")  # per resolved task
SWEEP_KNOBS = {"PRECISION": "precision", "COMPILE": "compile", "PROTOCOL": "protocol"}  # sweep.sh knob -> option
ConfigError = RecipeError  # a sweep config that cannot be read: one line naming the file and the fix


def validate(spec: dict, check_options: bool = False) -> list[str]:
    """Problems of a config: missing required values per task, and with ``check_options`` every task's options as
    train.py would take them: each task's flat mapping is built into its run configuration
    (``engine.config.from_mapping``: names, types, choices, ranges), and what that refuses is reported."""
    problems = []
    for task in spec["tasks"]:
        cfg = resolve(spec, task)
        # an explicit `method_args: {}` is a value (full, linear and bitfit take no arguments); resolve() always
        # gives a mapping, so whether one was written is read from the config itself
        written = "method_args" in spec["defaults"] or "method_args" in spec["tasks"][task]
        for key in REQUIRED:
            if cfg.get(key) in (None, "", {}) and not (key == "method_args" and written):
                problems.append(f"{task}: no value for {key}")
        if check_options:
            from engine import config as C
            from engine.errors import RunError

            unknown = sorted(set(cfg) - set(C.OPTIONS))
            problems += [f"{task}: {key!r} is not a train.py option" for key in unknown]
            try:
                C.from_mapping({k: v for k, v in cfg.items() if k not in unknown})
            except RunError as e:
                problems.append(f"{task}: {e}")
    return problems


def searched_tasks(text: str) -> list[str]:
    """The tasks of a config's text whose entry was written by ``reproduce/search.py`` (a ``# source:
    reproduce/search.py`` comment on one of its lines): their values were selected on val200 / val.json
    (docs/benchmarks.md §6.2). This comment is the per-task record behind ``selection: val`` / ``partial``, which
    ``search.py`` sets and ``verify.py`` reports per task."""
    found, in_tasks, current = [], False, None
    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            in_tasks = line.startswith("tasks:")
            continue
        m = re.match(r"^  ([A-Za-z0-9_]+):", line)
        if in_tasks and m:
            current = m.group(1)
        if in_tasks and current and re.search(r"\s# source: reproduce/search\.py", line) and current not in found:
            found.append(current)
    return found


def undocumented(path: str | Path) -> list[str]:
    """Lines under ``defaults:``/``tasks:`` that set a value without a `` # source:`` comment (a YAML comment needs
    the blank before ``#``). Lines that only open a nested block (``method_args:``, ``cifar:``) need none."""
    bad, section = [], None
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            section = line.split(":")[0].strip()
            continue
        if section not in ("defaults", "tasks"):
            continue
        value = line.split(":", 1)[1].strip() if ":" in line else line.strip()
        if value and not value.startswith("#") and not re.search(r"\s# source:", line):
            bad.append(f"{path}:{n}: {line.strip()}")
    return bad


def canonical(name: str) -> str:
    """The canonical id of a task name; aliases (``cifar100``, ``Flowers102`` ...) resolve through ``data.tasks``
    when the data package is importable."""
    if name in K.VTAB or name in K.FGVC:
        return name
    try:
        from data.tasks import resolve_task
    except ImportError:
        return name
    try:
        return resolve_task(name)[1]
    except ValueError as e:
        raise ConfigError(str(e)) from None


def select(spec: dict, names: str | list[str]) -> list[str]:
    """The config's tasks named in ``names`` (space/comma separated), in the order given, canonicalised."""
    if isinstance(names, str):
        names = names.replace(",", " ").split()
    out = []
    for name in names:
        task = canonical(name)
        if task not in spec["tasks"]:
            raise ConfigError(f"task {name!r} is not in this config; its tasks: {', '.join(spec['tasks'])}")
        if task not in out:
            out.append(task)
    if not out:
        raise ConfigError("TASKS selects no task")
    return out


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def dump(cfg: dict) -> str:
    """The YAML text of a flat task config, as written into a run folder and printed by the CLI (one format, so that
    ``reproduce/sweep.sh`` can compare a run's ``config.yaml`` with what the sweep config gives now)."""
    return yaml.safe_dump(_plain(cfg), sort_keys=False, default_flow_style=None)


def write_task_config(spec: dict, task: str, out: str | Path, source: str = "", epochs: int | None = None) -> dict:
    cfg = resolve(spec, task, epochs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    head = (f"# generated by reproduce/taskcfg.py from {source or 'a sweep config'}, task {task}"
            + (f", EPOCHS override {epochs}" if epochs is not None else "")
            + "\n# the sources of the values are the comments in that config\n")
    write_text_atomic(out, head + dump(cfg))
    return cfg


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description="Write the flat train.py config of one task of a sweep config.")
    ap.add_argument("config")
    ap.add_argument("task", nargs="?")
    ap.add_argument("--out", help="where to write the task's flat YAML (default: print it)")
    ap.add_argument("--epochs", type=int, help="override epochs (warm-up scaled in proportion)")
    ap.add_argument("--list-tasks", action="store_true", help="print the config's task ids, one line")
    ap.add_argument("--select", metavar="TASKS", help="with --list-tasks: only these (space/comma separated; aliases "
                                                      "such as cifar100 resolve to the canonical id)")
    ap.add_argument("--get", metavar="KEY", help="print a top-level value (benchmark, selection) or a default")
    ap.add_argument("--check", action="store_true", help="validate option names against train.py and exit")
    ap.add_argument("--check-options", action="store_true",
                    help="only the option names and choices train.py would reject: one error line, exit 2 (sweeps)")
    ap.add_argument("--knob", action="append", default=[], metavar="NAME=VALUE",
                    help="with --check-options: a sweep knob (PRECISION, COMPILE, PROTOCOL) checked against the "
                         "choices train.py accepts for its option")
    args = ap.parse_args(argv)
    try:
        spec = load(args.config)
        if args.list_tasks:
            print(" ".join(select(spec, args.select) if args.select else spec["tasks"]))
            return 0
        if args.get:
            value = spec.get(args.get, spec["defaults"].get(args.get))
            if value is None:
                raise ConfigError(f"{args.config}: no top-level or default value {args.get!r}")
            print(value)
            return 0
        if args.check_options:  # before a sweep trains anything: every run would fail in train.py otherwise
            from engine.config import CHOICES

            for knob in args.knob:  # the sweep's environment knobs, against train.py's own choices
                name, _, value = knob.partition("=")
                if name not in SWEEP_KNOBS:
                    raise ConfigError(f"--knob {knob}: no such knob; use {', '.join(SWEEP_KNOBS)}")
                choices = CHOICES[SWEEP_KNOBS[name]]
                if value not in choices:
                    raise ConfigError(f"{name}={value}: use one of {' '.join(choices)}")
            by_problem: dict[str, list[str]] = {}  # "task: problem" -> problem: tasks (a default repeats per task)
            for p in validate(spec, check_options=True):
                task, _, what = p.partition(": ")
                by_problem.setdefault(what, []).append(task)
            if by_problem:
                said = [f"{what} ({', '.join(t) if len(t) < 4 else f'{len(t)} tasks'})"
                        for what, t in by_problem.items()]
                raise ConfigError(f"{args.config}: {'; '.join(said)}; fix the config (names and choices: "
                                  "python train.py --help)")
            return 0
        if args.check:
            problems = validate(spec, check_options=True) + undocumented(args.config)
            print("\n".join(problems) or f"{args.config}: ok ({len(spec['tasks'])} tasks)")
            return 1 if problems else 0
        if not args.task:
            ap.error("give a task (or --list-tasks / --get / --check)")
        if args.out:
            write_task_config(spec, args.task, args.out, source=args.config, epochs=args.epochs)
        else:
            sys.stdout.write(dump(resolve(spec, args.task, args.epochs)))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
