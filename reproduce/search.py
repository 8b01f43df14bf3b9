"""Hyper-parameter search for HTA, whose paper publishes only its grid (docs/methods/hta.md §5.1–5.2,
docs/benchmarks.md §6.2),
and for ARC on ViT VTAB, which released no per-task values (docs/methods/arc.md §7.4: lr × wd × adapter dropout).

    python reproduce/search.py --config reproduce/configs/hta_vtab.yaml --tasks cifar dtd     # reduced staged grid
    python reproduce/search.py --config reproduce/configs/hta_fgvc.yaml --full                 # the paper's 525 points
    python reproduce/search.py ... --dry-run                                                   # print the commands

Every trial is one ``train.py --protocol clean`` run: train on train800 and score on val200 (FGVC: train.json →
val.json) with the **last-epoch** validation top-1 (``acc_val_last``) — the test split plays no part in the choice.
Ties go to the smaller lr (as VPT's ``tune_vtab.py``), then to the earlier grid point. The grids are the config's
``search:`` block:

* default (reduced, docs/methods/hta.md §5.2 "staged"): ``stage1`` (lr × wd at batch 32, dropout 0.1), then
  ``stage2`` (batch × dropout at the stage-1 lr and wd);
* ``--full``: the cartesian product of ``full`` (docs/methods/hta.md §5.1: 7 lr × 5 wd × 3 batch × 5 dropout = 525
  runs per task; ``arc_vtab.yaml``: 5 lr × 5 wd × 3 dropout = 75, its stages 25 + 2).

Grid keys that are train.py options (lr, weight_decay, batch_size) are set directly; the others (dropout) are method
arguments. Trials live in ``$OUT/<config>_search/<task>/<trial>/`` and are skipped when their results.json exists, so
a search resumes. After each task the chosen values are written into the config (``--write``, default: the config
itself, which ``reproduce/householder_*.sh`` reads), each line commented with its source and val score;
``selection: val`` is set once every task of the config has searched values (``partial`` before that, with a header
status line naming the searched tasks), and ``<task>/search.json`` keeps every trial's score.

Then the retrain and the report (§6.2 steps 2-3): run the sweep with the written config and the default
``PROTOCOL=paper`` (e.g. ``CONFIG=<written config> reproduce/householder_vtab.sh``). Those runs train on
train800val200 (FGVC: train.json) with the selected values; their ``acc_last`` — test top-1 at the last epoch — is
the clean number, which ``verify.py`` prints as "ours: clean (last epoch)" — fully clean for the searched tasks:
all of them under ``selection: val``, those its note names under ``partial``. ``PROTOCOL=clean`` would instead
re-run the train800 selection runs.

Knobs as the sweeps (flags win over environment): VTAB_ROOT / FGVC_ROOT, WEIGHTS, ARCH, IMG_SIZE, PRECISION, EPOCHS,
OUT. ARCH and WEIGHTS default, as the config's sweep script does, to the backbone of its first ``reference`` (ViT-L/16
for ``hta_vtab_large.yaml``), so the search selects on the backbone the sweep then trains.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reproduce import taskcfg  # noqa: E402
from util.cli import ArgumentParser  # noqa: E402
from util.files import write_text_atomic  # noqa: E402

__all__ = ["trial_name", "grid_points", "val_score", "choose", "rewrite_config", "main"]

REPO = Path(__file__).resolve().parents[1]


def trial_name(point: dict) -> str:
    """A stable folder name for one grid point, e.g. ``lr0.01_weight_decay0_batch_size32_dropout0.1``."""
    return "_".join(f"{k}{v:g}" if isinstance(v, (int, float)) else f"{k}{v}" for k, v in point.items())


def grid_points(grid: dict, fixed: dict | None = None) -> list[dict]:
    """Cartesian product of ``grid`` (key → list), each point updated with ``fixed``; keys in a fixed order."""
    keys = list(grid)
    return [{**dict(zip(keys, values)), **(fixed or {})} for values in itertools.product(*(grid[k] for k in keys))]


def apply_point(base: dict, point: dict) -> dict:
    """``base`` (a resolved task config) with the grid point applied: train.py options directly, the rest as
    method arguments."""
    cfg = {**base, "method_args": dict(base.get("method_args") or {})}
    for k, v in point.items():
        if k in base and k != "method_args":
            cfg[k] = v
        else:
            cfg["method_args"][k] = v
    return cfg


def val_score(result: dict) -> float:
    """Last-epoch validation top-1 of a ``protocol: clean`` run (docs/benchmarks.md §6.2 step 1): ``acc_val_last``,
    or the last epoch's ``val_acc`` in the history of a results.json written before that field existed."""
    if result.get("acc_val_last") is not None:
        return float(result["acc_val_last"])
    hist = result.get("history") or []
    last = [r for r in hist if r.get("epoch") == result.get("epochs") and r.get("val_acc") is not None]
    if not last:
        raise ValueError("the run has no validation accuracy at its last epoch (was it run with --protocol clean?)")
    return float(last[-1]["val_acc"])


def choose(scored: list[tuple[dict, float]]) -> tuple[dict, float]:
    """Best (point, score): highest score; ties → smaller lr, then the earlier point."""
    order = sorted(enumerate(scored), key=lambda t: (-t[1][1], t[1][0].get("lr", 0.0), t[0]))
    return order[0][1]


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _task_blocks(lines: list[str]) -> dict[str, list[str]]:
    """The lines of each task entry of a ``tasks:`` block (entries are indented by two spaces)."""
    blocks: dict[str, list[str]] = {}
    current = None
    for line in lines:
        m = re.match(r"^  ([A-Za-z0-9_]+):", line)
        if m:
            current = m.group(1)
            blocks[current] = [line]
        elif current is not None and (line.startswith("    ") or not line.strip()):
            blocks[current].append(line)
    return blocks


def _unsearched(block: list[str], keys: set[str], method_keys: set[str]) -> tuple[list[str], list[str]]:
    """The lines of a task entry (``block``, its ``  task:`` line first) that set what a search did not: option
    lines whose key is not in ``keys``, and (as ``method_args`` lines at six spaces) method arguments not in
    ``method_keys``, each with its own ``# source:`` comment. An inline ``method_args: {...}`` is split into lines."""
    import yaml

    lines = [line for line in block[1:] if line.strip() and not line.strip().startswith("#")]
    kept, kept_args, i = [], [], 0
    while i < len(lines):
        key, _, rest = lines[i].strip().partition(":")
        comment = rest[rest.index("#"):] if "#" in rest else ""
        if key == "method_args":
            inline = rest.split("#", 1)[0].strip()
            for k, v in (yaml.safe_load(inline) or {}).items() if inline else ():
                if k not in method_keys:
                    kept_args.append(f"{f'      {k}: {_num(v)}':<29} {comment}".rstrip())
            i += 1
            while i < len(lines) and lines[i].startswith("      "):  # a nested method_args block
                if lines[i].strip().partition(":")[0] not in method_keys:
                    kept_args.append(lines[i])
                i += 1
            continue
        if key not in keys:
            kept.append(lines[i])
        i += 1
    return kept, kept_args


STATUS = "# status (reproduce/search.py):"  # the header line rewritten on every write: which tasks are val-selected


def _selection_lines(tasks: list[str], searched: list[str]) -> tuple[str, str]:
    """The ``selection:`` line and the header status line for a config whose ``searched`` tasks (of ``tasks``) hold
    values selected on val (docs/benchmarks.md §6.2): ``val`` only when every task does, else ``partial``."""
    if set(tasks) <= set(searched):
        return ("selection: val   # every task's values searched by reproduce/search.py (see 'search:' and the task "
                "comments)", f"{STATUS} every task ({len(tasks)}) selected on val; the text above describes the "
                "file as committed, before the search")
    return ("selection: partial   # only the tasks commented 'source: reproduce/search.py' were searched; the others "
            "keep their values", f"{STATUS} {len(searched)} of {len(tasks)} tasks selected on val "
            f"({', '.join(searched)}); the other {len(tasks) - len(searched)} keep the values the text above describes")


def rewrite_config(text: str, chosen: dict[str, dict], provenance: str) -> str:
    """The config text with the ``tasks:`` entries of the searched tasks replaced, and ``selection:`` set to ``val``
    when every task of the config now has search-selected values, else to ``partial`` (taskcfg.SELECTIONS), so that
    verify.py labels each task's clean column honestly (docs/benchmarks.md §6.2); a header status line names the tasks.

    ``chosen``: task → {"point": grid point, "score": val top-1, "n": trials}. Other tasks keep their lines. The
    ``tasks:`` block must be the last top-level block of the file (as in every committed config).
    """
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("tasks:")), None)
    if start is None:
        raise ValueError("config has no top-level 'tasks:' block")
    if any(line and not line[0].isspace() and not line.startswith("#") for line in lines[start + 1:]):
        raise ValueError("the 'tasks:' block must be the last top-level block of the config")
    old = _task_blocks(lines[start + 1:])
    before = taskcfg.searched_tasks(text)
    searched = [t for t in old if t in chosen or t in before]
    selection, status = _selection_lines(list(old), searched)
    head = [line for line in lines[:start] if not line.startswith(STATUS)]
    if any(line.startswith("selection:") for line in head):
        head = [selection if line.startswith("selection:") else line for line in head]
    else:
        head.append(selection)
    first = next(i for i, line in enumerate(head) if not line.startswith("#"))
    stamp = f"# {provenance}"
    head[first:first] = ([] if stamp in head else [stamp]) + [status]
    out = head + ["tasks:   # per-task values: reproduce/search.py (selected on val, last epoch) or the defaults"]
    for task, block in old.items():
        if task not in chosen:
            out.extend(line for line in block if line.strip())
            continue
        c = chosen[task]
        src = f"# source: reproduce/search.py, val top-1 {c['score']:.2f} (last epoch, {c['n']} trials)"
        method_keys = set(c.get("method_keys", ()))
        kept, kept_args = _unsearched(block, set(c["point"]) - method_keys, method_keys)
        out.append(f"  {task}:")
        for k, v in c["point"].items():
            if k not in method_keys:
                out.append(f"{f'    {k}: {_num(v)}':<29} {src}")
        out.extend(kept)  # the task's own values the grid does not set (e.g. SNELL's per-task batch and lr)
        method_args = {k: v for k, v in c["point"].items() if k in method_keys}
        if kept_args:  # one nested block: each argument keeps its own source
            out.append("    method_args:")
            out.extend([f"{f'      {k}: {_num(v)}':<29} {src}" for k, v in method_args.items()] + kept_args)
        elif method_args:
            inner = ", ".join(f"{k}: {_num(v)}" for k, v in method_args.items())
            out.append(f"{f'    method_args: {{{inner}}}':<29} {src}")
    return "\n".join(out) + "\n"


class Runner:
    """Runs (or prints) the train.py commands of the trials of one task."""

    def __init__(self, args, spec: dict, benchmark_root: str):
        self.args, self.spec, self.root = args, spec, benchmark_root

    def command(self, task: str, folder: Path) -> list[str]:
        """The train.py command of a new trial in ``folder``."""
        a = self.args
        return [a.python, "train.py", "--config", str(folder / "config.yaml"), "--dataset", task, "--data-root",
                self.root, "--arch", a.arch, "--pretrained", a.weights, "--img-size", str(a.img_size),
                "--precision", a.precision, "--protocol", "clean", "--out", str(folder)]

    def trial(self, task: str, point: dict, folder: Path) -> float | None:
        res_path = folder / "results.json"
        a = self.args
        cfg = apply_point(taskcfg.resolve(self.spec, task, a.epochs), point)
        fresh = self.command(task, folder)
        if res_path.exists() or (folder / "train_state.pt").exists():
            self._check_reuse(folder, fresh, cfg)
        if res_path.exists():
            return val_score(json.loads(res_path.read_text()))
        cmd = [a.python, "train.py", "--resume", str(folder)] if (folder / "train_state.pt").exists() else fresh
        print("   " + shlex.join(cmd), flush=True)
        if a.dry_run:
            return None
        if cmd is fresh:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "config.yaml").write_text(f"# reproduce/search.py trial {trial_name(point)} of {task}\n"
                                                + taskcfg.dump(cfg))
            (folder / "command.txt").write_text(shlex.join(fresh) + "\n")
        with open(folder / "train.log", "a") as log:
            rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            print(f"   !! trial failed (exit {rc}, e.g. diverged); log: {folder / 'train.log'}", flush=True)
            return None
        return val_score(json.loads(res_path.read_text()))

    @staticmethod
    def _check_reuse(folder: Path, fresh: list[str], cfg: dict) -> None:
        """A trial folder is reused (scored or resumed) only when it was started with the same command and values:
        its name holds the grid point only, so a search with other EPOCHS, weights, arch ... or an edited config
        would otherwise score stale trials and choose from them."""
        stale = []
        command, config = folder / "command.txt", folder / "config.yaml"
        if command.exists() and shlex.split(command.read_text())[1:] != fresh[1:]:  # the interpreter may differ
            stale.append(f"another command ({command})")
        if config.exists() and "".join(line for line in config.read_text().splitlines(keepends=True)
                                       if not line.startswith("#")) != taskcfg.dump(cfg):
            stale.append(f"other hyper-parameters ({config})")
        if stale:
            raise SystemExit(f"error: trial {folder} was run with {' and '.join(stale)}; delete it or pass another "
                             f"--out")


def search_task(runner: Runner, task: str, out: Path, full: bool) -> dict | None:
    grids = runner.spec.get("search") or {}
    need = ("full",) if full else ("stage1", "stage2")
    if any(k not in grids for k in need):
        raise SystemExit(f"error: the config's 'search:' block needs {need}")
    scored: list[tuple[dict, float]] = []
    trials: list[dict] = []

    def run(points: list[dict]) -> None:
        for p in points:
            if any(t["point"] == p for t in trials):
                continue
            score = runner.trial(task, p, out / task / trial_name(p))
            trials.append({"point": p, "name": trial_name(p), "val_top1_last": score})
            if score is not None:
                scored.append((p, score))

    print(f"== {task}: {'full grid' if full else 'stage 1'}", flush=True)
    run(grid_points(grids["full"] if full else grids["stage1"]))
    if not full and runner.args.dry_run:
        print(f"== {task}: stage 2 ({' x '.join(grids['stage2'])}) runs around the stage-1 winner once stage 1 has "
              "scores", flush=True)
    if not full and scored:
        best, _ = choose(scored)
        print(f"== {task}: stage 2 around lr {best.get('lr')}, wd {best.get('weight_decay')}", flush=True)
        fixed = {k: v for k, v in best.items() if k not in grids["stage2"]}
        run([{k: p[k] for k in best} for p in grid_points(grids["stage2"], fixed)])
    if runner.args.dry_run or not scored:
        return None
    point, score = choose(scored)
    base = taskcfg.resolve(runner.spec, task)
    summary = {"task": task, "mode": "full" if full else "staged", "chosen": point, "val_top1_last": score,
               "trials": trials, "selection_rule": "max last-epoch val top-1; ties -> smaller lr, then grid order"}
    (out / task).mkdir(parents=True, exist_ok=True)
    (out / task / "search.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"== {task}: chose {point} (val top-1 {score:.2f}, {len(scored)} trials)", flush=True)
    return {"point": point, "score": score, "n": len(scored),
            "method_keys": [k for k in point if k not in base or k == "method_args"]}


BACKBONES = {  # paper-table backbone id (docs/benchmarks.md §5) -> (arch, timm weights)
    "vit_b16_in21k": ("vit_base_patch16_224", "vit_base_patch16_224.orig_in21k"),
    "vit_b16_augreg_in21k": ("vit_base_patch16_224", "vit_base_patch16_224.augreg_in21k"),
    "vit_l16_in21k": ("vit_large_patch16_224", "vit_large_patch16_224.orig_in21k"),
    "vit_h14_in21k": ("vit_huge_patch14_224", "vit_huge_patch14_224.orig_in21k"),
    "swin_b_in21k": ("swin_base_patch4_window7_224", "swin_base_patch4_window7_224.ms_in22k"),  # docs/backbones.md §5
    "convnext_b_in21k": ("convnext_base", "convnext_base.fb_in22k"),
    "vit_b16_mae": ("vit_base_patch16_224", "vit_base_patch16_224.mae"),
}


def default_backbone(spec: dict) -> tuple[str, str]:
    """The architecture and weights a config is meant for: those of its first ``reference`` backbone id (the one its
    sweep script defaults to), else ViT-B/16 IN-21k. A search must run on the backbone the sweep then trains."""
    first = next(iter(spec.get("reference") or {}), "vit_b16_in21k")
    return BACKBONES.get(first, BACKBONES["vit_b16_in21k"])


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    ap = ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="reproduce/configs/hta_vtab.yaml")
    ap.add_argument("--tasks", nargs="*", help="subset (default: every task of the config)")
    ap.add_argument("--full", action="store_true", help="the config's full grid (HTA: the paper's 525 points) instead "
                                                         "of the reduced staged one")
    ap.add_argument("--write", help="config to write the chosen values into (default: --config itself)")
    ap.add_argument("--out", default=env("OUT", "runs/reproduce"), help="output root (trials in <out>/<config>_search)")
    ap.add_argument("--data-root", help="default $VTAB_ROOT (data/vtab-1k) or $FGVC_ROOT (data/fgvc)")
    ap.add_argument("--arch", default=env("ARCH"), help="default: the backbone of the config's first reference "
                                                         "(hta_vtab_large.yaml: vit_large_patch16_224)")
    ap.add_argument("--weights", default=env("WEIGHTS"), help="default: as --arch (e.g. <arch>.orig_in21k)")
    ap.add_argument("--img-size", type=int, default=int(env("IMG_SIZE", "224")))
    ap.add_argument("--precision", default=env("PRECISION", "fp32"), choices=("fp32", "bf16"))
    ap.add_argument("--epochs", type=int, default=int(env("EPOCHS")) if env("EPOCHS") else None,
                    help="epochs per trial (default: the config's; warm-up scaled in proportion)")
    ap.add_argument("--python", default=env("PYTHON", sys.executable))
    ap.add_argument("--dry-run", action="store_true", help="print the trial commands, run nothing, write nothing")
    args = ap.parse_args(argv)

    cfg_path = Path(args.config)
    try:
        spec = taskcfg.load(cfg_path)
        tasks = taskcfg.select(spec, args.tasks) if args.tasks else list(spec["tasks"])
    except taskcfg.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    arch, weights = default_backbone(spec)
    args.arch, args.weights = args.arch or arch, args.weights or weights
    bench = spec["benchmark"]
    root = args.data_root or (env("VTAB_ROOT", "data/vtab-1k") if bench == "vtab" else env("FGVC_ROOT", "data/fgvc"))
    from reproduce import preflight

    problems = preflight.check_data(bench, root, tasks, protocol="clean") + preflight.check_weights(args.weights)[0]
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    if problems and not args.dry_run:
        return 3
    out = Path(args.out) / f"{cfg_path.stem}_search"
    write = Path(args.write or cfg_path)
    runner = Runner(args, spec, root)
    mode = "full grid" if args.full else "reduced staged grid (stage1 -> stage2)"
    provenance = (f"search: reproduce/search.py, {mode}, {args.arch} / {args.weights}, "
                  f"{args.epochs or 'config'} epochs per trial, {_dt.date.today().isoformat()}; trials in {out}")
    chosen: dict[str, dict] = {}
    for task in tasks:
        c = search_task(runner, task, out, args.full)
        if c is None:
            continue
        chosen[task] = c
        text = write.read_text() if write.exists() else cfg_path.read_text()
        # atomic: an interrupted search never truncates the config
        write_text_atomic(write, rewrite_config(text, {task: c}, provenance))
        print(f"   wrote {task} into {write}", flush=True)
    if not args.dry_run:
        print(f"done: {len(chosen)}/{len(tasks)} task(s) searched; retrain and report with the sweep, CONFIG={write} "
              "and the default PROTOCOL=paper (train800val200; its last-epoch test top-1 is the clean number)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
