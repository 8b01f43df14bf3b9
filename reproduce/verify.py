"""Compare a sweep's ``results.json`` files with the published tables (docs/benchmarks.md §6–7,
paper_tables/README.md "Consumer rules").

    python reproduce/verify.py runs/reproduce/hta_vtab                      # config inferred from the folder name
    python reproduce/verify.py runs/reproduce/snell_fgvc --config reproduce/configs/snell_fgvc.yaml \\
        --tolerance 0.5 --markdown snell_fgvc.md --strict

What is printed, per task then per aggregate:

* **ours, test-selected (paper protocol)** — ``acc_best_test`` of the ``protocol: paper`` runs: the maximum test top-1
  over the evaluated epochs, i.e. model selection on the test set, which is what the papers report (§6.1);
* **paper** — the printed value of the matching row (matched on paper, table, backbone, method, task), and the
  difference ours − paper, flagged when it exceeds ``--tolerance`` (|Δ| ≤ 0.05 is rounding);
* **ours, clean (last epoch)** — ``acc_last`` of the same runs: test top-1 at the last epoch after training on
  train800val200 (FGVC: train), step 3 of the clean protocol (§6.2). It is fully clean only when the config's
  hyper-parameters were selected on val200 (``selection: val`` in the config, e.g. after ``reproduce/search.py``;
  ``selection: partial``: only for the tasks the note names, those with a ``# source: reproduce/search.py`` line);
  otherwise the header says the hyper-parameters come from the papers' test-selected recipes or project defaults;
* ``protocol: clean`` runs of train.py (the selection runs of §6.2 step 1: train800, scored by val200 top-1 at the last
  epoch, ``acc_val_last``) add a column "val top-1, last epoch" when present — a selection score, not a test result;
* the three group means and **both** VTAB overall means, labelled: ``mean_19`` (plain mean of the 19 tasks; HTA's
  "Mean Total", SNELL Tables A7 and 5(b)) and ``mean_groups`` (mean of the three group means; SNELL Tables 1, 4, 5(a),
  A11). A convention the paper did not print is computed from the paper's own per-task values where it has them
  and marked "(computed)" — the printed value is never replaced;
* trainable parameters, ours with and without the head (mean over tasks), against the printed ``params_m``;
* mean peak memory and training img/s.

Several seeds of one task are averaged (mean ± sample std). Means over a group are only formed when every task of the
group has a result. ``--strict`` exits 1 when a row is out of tolerance or an expected task has no result. Bad input
(no such run folder, a config that does not load, an unwritable ``--markdown`` path) is one error line and exit 2.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean, stdev

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reproduce import tables as T  # noqa: E402
from reproduce import tasks as K  # noqa: E402
from util.cli import ArgumentParser  # noqa: E402
from util.files import write_text_atomic  # noqa: E402

__all__ = ["backbone_id", "load_runs", "TaskResult", "collect", "Row", "Report", "build_report", "render_text",
           "render_markdown", "clean_note", "main", "ROUNDING"]

ROUNDING = 0.05  # paper_tables/README.md: differences of <= 0.05 are rounding
AGG_LABELS = {
    "mean_natural": "mean Natural (7)",
    "mean_specialized": "mean Specialized (4)",
    "mean_structured": "mean Structured (8)",
    "mean_19": "mean_19 = plain mean of the 19 tasks",
    "mean_groups": "mean_groups = mean of the 3 group means",
    "mean_fgvc": "mean_fgvc = plain mean of the 5 datasets",
}
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CLEAN_NOTES = {  # what the clean (last-epoch) column means, by the config's `selection`
    "paper": "Clean column: last-epoch test top-1 with the papers' released hyper-parameters (which their authors "
             "selected on the test set), not a val200 search: clean in its reporting, not in its selection.",
    "default": "Clean column: last-epoch test top-1 with project defaults (the paper released no per-task values and "
               "reproduce/search.py has not been run): nothing was selected on the test set.",
    "val": "Clean column: last-epoch test top-1 with hyper-parameters selected on val200 by reproduce/search.py "
           "(docs/benchmarks.md §6.2).",
    "partial": "Clean column: last-epoch test top-1; hyper-parameters selected on val200 by reproduce/search.py "
               "(docs/benchmarks.md §6.2) only for {searched}; {rest} keep the config's other values (project defaults or "
               "the papers' test-selected recipes, see the config's comments), so their clean numbers are not "
               "val-selected.",
}


def clean_note(selection: str, config_text: str, tasks: list[str]) -> str:
    """The note on the clean column for the reported ``tasks`` (docs/benchmarks.md §6.2). Under ``selection: partial`` (or
    a ``val`` config that search.py left only partly searched) it names which tasks were val-selected, read from
    their ``# source: reproduce/search.py`` comments (taskcfg.searched_tasks); when all reported tasks were, the
    ``val`` note applies to the whole table."""
    if selection not in ("val", "partial"):
        return CLEAN_NOTES[selection]
    from reproduce import taskcfg

    recorded = taskcfg.searched_tasks(config_text)
    if selection == "val" and not recorded:  # values selected on val by hand: the config's word is all there is
        return CLEAN_NOTES["val"]
    searched = [t for t in tasks if t in recorded]
    rest = [t for t in tasks if t not in recorded]
    if not rest:
        return CLEAN_NOTES["val"]
    return CLEAN_NOTES["partial"].format(searched=", ".join(searched) or "none of the reported tasks",
                                         rest=f"the other tasks ({', '.join(rest)})" if searched else "all of them")


# --------------------------------------------------------------------------------------------------- reading runs
def backbone_id(arch: str | None, source: str | None) -> str | None:
    """The paper-table backbone id of a run (docs/benchmarks.md §5), or None when it is none of the papers' backbones
    (random init, a test architecture, an unknown file)."""
    s = (source or "").lower()
    if not s or s == "none":
        return None
    family = {"vit_base_patch16_224": "b16", "vit_large_patch16_224": "l16", "vit_huge_patch14_224": "h14"}.get(
        arch or "")
    if family is None:
        return None
    if "in1k" in s:  # fine-tuned on ImageNet-1k: none of the papers' backbones
        return None
    if ("augreg" in s and "in21k" in s) or "i21k-300ep" in s:
        return f"vit_{family}_augreg_in21k" if family == "b16" else None
    file_names = {"b16": "vit-b_16.npz", "l16": "vit-l_16.npz", "h14": "vit-h_14.npz"}
    if "orig_in21k" in s or s.endswith(file_names[family]):
        return f"vit_{family}_in21k"
    return None


def load_runs(root: str | Path) -> tuple[list[dict], list[str]]:
    """Every ``results.json`` below ``root`` (each dict gets ``_path``), and the problems met (unreadable files)."""
    runs, problems = [], []
    for path in sorted(Path(root).rglob("results.json")):
        try:
            res = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            problems.append(f"{path}: unreadable ({e})")
            continue
        if not isinstance(res, dict) or "dataset" not in res:
            problems.append(f"{path}: not a train.py results.json (no 'dataset')")
            continue
        res["_path"] = str(path)
        runs.append(res)
    return runs, problems


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return fmean(values), (stdev(values) if len(values) > 1 else None)


@dataclass
class TaskResult:
    """All seeds of one task."""
    task: str
    seeds: list = field(default_factory=list)                 # paper-protocol runs
    test_selected: list[float] = field(default_factory=list)  # acc_best_test, paper protocol
    clean_last: list[float] = field(default_factory=list)     # acc_last, paper protocol (train800val200)
    val_last: list[float] = field(default_factory=list)   # acc_val_last, clean-protocol selection runs (train800)
    params: list[int] = field(default_factory=list)
    params_no_head: list[int] = field(default_factory=list)
    peak_mem_mb: list[float] = field(default_factory=list)
    img_per_s: list[float] = field(default_factory=list)

    def stat(self, name: str) -> tuple[float | None, float | None]:
        return _mean_std(getattr(self, name))


def collect(runs: list[dict]) -> dict[str, TaskResult]:
    """Group runs by task (the canonical ``dataset`` id written by train.py)."""
    out: dict[str, TaskResult] = {}
    for r in runs:
        tr = out.setdefault(r["dataset"], TaskResult(r["dataset"]))
        if r.get("protocol", "paper") == "paper":
            tr.seeds.append(r.get("seed"))  # n = the runs behind "ours"; clean-protocol runs have their own column
            if r.get("acc_best_test") is not None:
                tr.test_selected.append(float(r["acc_best_test"]))
            if r.get("acc_last") is not None:
                tr.clean_last.append(float(r["acc_last"]))
        elif r.get("acc_val_last") is not None:
            tr.val_last.append(float(r["acc_val_last"]))
        for key, dst in (("params_trainable", tr.params), ("params_trainable_no_head", tr.params_no_head),
                         ("peak_mem_mb", tr.peak_mem_mb), ("train_img_per_s", tr.img_per_s)):
            if r.get(key) is not None:
                dst.append(r[key])
    return out


# ------------------------------------------------------------------------------------------------------ the report
@dataclass
class Row:
    name: str                    # task id or aggregate key
    label: str
    kind: str                    # 'task' | 'aggregate'
    n: int = 0                   # seeds (tasks) or tasks with a result (aggregates) behind "ours"
    n_total: int | None = None   # aggregates: tasks the mean is over
    ours: float | None = None    # test-selected (paper protocol)
    ours_std: float | None = None
    clean: float | None = None   # last epoch
    clean_std: float | None = None
    val_last: float | None = None
    paper: float | None = None
    paper_printed: str | None = None
    paper_source: str | None = None  # e.g. "Table 1" or "Table 1 (computed)"
    flag: str = ""               # '' | 'rounding' | 'ok' | 'OUT' | 'missing'

    @property
    def diff(self) -> float | None:
        return None if self.ours is None or self.paper is None else self.ours - self.paper

    @property
    def clean_diff(self) -> float | None:
        return None if self.clean is None or self.paper is None else self.clean - self.paper


@dataclass
class Report:
    title: str
    backbone: str | None
    reference: list[str]          # labels of the paper rows used
    tolerance: float
    rows: list[Row]
    params: dict                  # ours / printed / verdict
    perf: dict
    notes: list[str]
    missing: list[str]
    has_val_last: bool = False
    other_method: list[str] = field(default_factory=list)  # tasks with runs of a method the config does not train

    @property
    def out_of_tolerance(self) -> list[Row]:
        return [r for r in self.rows if r.flag == "OUT"]

    def strict_ok(self) -> bool:
        return not self.out_of_tolerance and not self.missing and not self.other_method


def _flag(diff: float | None, tol: float) -> str:
    if diff is None:
        return ""
    if abs(diff) <= ROUNDING + 1e-9:
        return "rounding"
    return "ok" if abs(diff) <= tol + 1e-9 else "OUT"


def _paper_value(refs: list[T.PaperRow], key: str) -> tuple[float | None, str | None, str | None]:
    """First printed value of ``key`` among the reference rows, else one computed from a reference row's own
    complete per-task values (marked "(computed)")."""
    for ref in refs:
        if key in ref.printed:
            return ref.values[key], ref.printed[key], f"{ref.paper} {ref.table}"
    for ref in refs:
        per_task = {t: v for t, v in ref.values.items() if t in K.VTAB or t in K.FGVC}
        v = K.aggregates(per_task).get(key)
        if v is not None:
            return v, f"{v:.2f}", f"{ref.paper} {ref.table} (computed)"
    return None, None, None


def build_report(results: dict[str, TaskResult], refs: list[T.PaperRow], tasks: list[str], tolerance: float = 1.0,
                 title: str = "", backbone: str | None = None, notes: list[str] | None = None) -> Report:
    """``tasks`` = the expected task ids (their order is the table order)."""
    rows: list[Row] = []
    ours_ts: dict[str, float] = {}
    ours_clean: dict[str, float] = {}
    ours_vs: dict[str, float] = {}
    for task in tasks:
        tr = results.get(task)
        row = Row(task, task, "task")
        if tr is not None:
            row.n = len(tr.seeds)
            row.ours, row.ours_std = tr.stat("test_selected")
            row.clean, row.clean_std = tr.stat("clean_last")
            row.val_last, _ = tr.stat("val_last")
        row.paper, row.paper_printed, row.paper_source = _paper_value(refs, task)
        row.flag = "missing" if tr is None else _flag(row.diff, tolerance)
        for dst, v in ((ours_ts, row.ours), (ours_clean, row.clean), (ours_vs, row.val_last)):
            if v is not None:
                dst[task] = v
        rows.append(row)
    vtab = any(t in K.VTAB for t in tasks)
    agg_keys = (["mean_natural", "mean_specialized", "mean_structured", "mean_19", "mean_groups"] if vtab
                else ["mean_fgvc"])
    ts_agg, clean_agg, vs_agg = K.aggregates(ours_ts), K.aggregates(ours_clean), K.aggregates(ours_vs)
    for key in agg_keys:
        row = Row(key, AGG_LABELS[key], "aggregate")
        row.ours, row.clean, row.val_last = ts_agg.get(key), clean_agg.get(key), vs_agg.get(key)
        members = K.GROUPS.get(key[len("mean_"):]) or (K.FGVC_TASKS if key == "mean_fgvc" else K.VTAB_TASKS)
        row.n, row.n_total = len([t for t in members if t in ours_ts]), len(members)
        row.paper, row.paper_printed, row.paper_source = _paper_value(refs, key)
        row.flag = _flag(row.diff, tolerance)
        rows.append(row)

    # parameters: mean over the tasks that ran, against the printed params_m (conventions differ per row)
    p_all = [v for t in tasks if t in results for v in results[t].params]
    p_nohead = [v for t in tasks if t in results for v in results[t].params_no_head]
    params: dict = {"ours_m": fmean(p_all) / 1e6 if p_all else None,
                    "ours_no_head_m": fmean(p_nohead) / 1e6 if p_nohead else None}
    printed = _paper_value(refs, "params_m")
    params["printed_m"], params["printed"], params["source"] = printed
    params["verdict"] = _params_verdict(params)
    mem = [v for t in tasks if t in results for v in results[t].peak_mem_mb]
    ips = [v for t in tasks if t in results for v in results[t].img_per_s]
    perf = {"peak_mem_mb": fmean(mem) if mem else None, "img_per_s": fmean(ips) if ips else None}
    missing = [t for t in tasks if t not in results]
    return Report(title=title, backbone=backbone, reference=[r.label for r in refs], tolerance=tolerance, rows=rows,
                  params=params, perf=perf, notes=list(notes or []), missing=missing,
                  has_val_last=any(r.val_last is not None for r in rows))


def _params_verdict(p: dict) -> str:
    printed = p["printed_m"]
    if printed is None or p["ours_m"] is None:
        return "no printed count to compare" if printed is None else "no runs"
    decimals = len(p["printed"].split(".")[1]) if "." in p["printed"] else 0
    hits = [label for label, v in (("with the head", p["ours_m"]), ("without the head", p["ours_no_head_m"]))
            if v is not None and abs(round(v, decimals) - printed) < 10 ** -decimals / 2]
    return f"matches the printed count {' and '.join(hits)}" if hits else "DIFFERS from the printed count"


# ------------------------------------------------------------------------------------------------------- rendering
def _fmt(v: float | None, std: float | None = None, nd: int = 2) -> str:
    if v is None:
        return "—"
    return f"{v:.{nd}f} ± {std:.{nd}f}" if std is not None else f"{v:.{nd}f}"


def _fmt_diff(d: float | None) -> str:
    return "—" if d is None else f"{d:+.2f}"


def _columns(report: Report) -> list[tuple[str, callable]]:
    cols = [
        ("task", lambda r: r.label),
        ("n", lambda r: f"{r.n}/{r.n_total}" if r.n_total else str(r.n) if r.n else "—"),
        ("ours: test-selected (paper protocol)", lambda r: _fmt(r.ours, r.ours_std)),
        ("paper", lambda r: r.paper_printed or "—"),
        ("Δ", lambda r: _fmt_diff(r.diff)),
        ("flag", lambda r: r.flag),
        ("ours: clean (last epoch)", lambda r: _fmt(r.clean, r.clean_std)),
        ("Δ clean", lambda r: _fmt_diff(r.clean_diff)),
    ]
    if report.has_val_last:
        cols.append(("ours: val top-1, last epoch (train800; selection score)", lambda r: _fmt(r.val_last)))
    cols.append(("paper source", lambda r: r.paper_source or ""))
    return cols


def _summary_lines(report: Report) -> list[str]:
    p, perf = report.params, report.perf
    lines = [
        "Trainable parameters (mean over tasks): ours "
        f"{_fmt(p['ours_m'], nd=4)} M with the head, {_fmt(p['ours_no_head_m'], nd=4)} M without; printed "
        f"{p['printed'] or '—'} M ({p['source'] or 'no printed count'}) — {p['verdict']}. "
        "(HTA/ARC/RLRR rows include the mean head; LoRA/Adapter rows and HTA's ablations exclude it.)",
        f"Performance (mean over runs): peak memory {_fmt(perf['peak_mem_mb'], nd=0)} MB, "
        f"training {_fmt(perf['img_per_s'], nd=1)} img/s.",
    ]
    n_out = len(report.out_of_tolerance)
    lines.append(f"Out of tolerance (|Δ| > {report.tolerance:g} pt, test-selected vs paper): "
                 + (", ".join(r.name for r in report.out_of_tolerance) if n_out else "none") + ".")
    if report.missing:
        lines.append(f"Missing results ({len(report.missing)}): {', '.join(report.missing)}.")
    return lines


def _header_lines(report: Report) -> list[str]:
    lines = [report.title] if report.title else []
    lines.append(f"Backbone: {report.backbone or 'none of the papers’ backbones (differences are not meaningful)'}; "
                 f"paper rows: {'; '.join(report.reference) or 'none'}")
    lines.append(f"Tolerance {report.tolerance:g} pt per row; |Δ| ≤ {ROUNDING} counts as rounding. "
                 "'(computed)' = a mean the paper did not print, computed from its own per-task values.")
    lines.extend(report.notes)
    return lines


def render_text(report: Report) -> str:
    cols = _columns(report)
    cells = [[fn(r) for _, fn in cols] for r in report.rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _) in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) if i in (0, len(cols) - 1) else v.rjust(w)  # noqa: E731
                                  for i, (v, w) in enumerate(zip(vals, widths))).rstrip()
    out = _header_lines(report) + ["", line([h for h, _ in cols]), line(["-" * w for w in widths])]
    for row, c in zip(report.rows, cells):
        if row.kind == "aggregate" and report.rows[report.rows.index(row) - 1].kind == "task":
            out.append(line(["-" * w for w in widths]))
        out.append(line(c))
    return "\n".join(out + [""] + _summary_lines(report)) + "\n"


def render_markdown(report: Report) -> str:
    cols = _columns(report)
    out = [f"## {report.title}" if report.title else "## Reproduction check", ""]
    out += [f"- {x}" for x in _header_lines(report)[1 if report.title else 0:]] + [""]
    out.append("| " + " | ".join(h for h, _ in cols) + " |")
    out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(cols) - 1)) + "|---|")
    for row in report.rows:
        vals = [fn(row) for _, fn in cols]
        if row.kind == "aggregate":
            vals[0] = f"**{vals[0]}**"
        if row.flag == "OUT":
            vals[5] = "**OUT**"
        out.append("| " + " | ".join(v.replace("|", "\\|") for v in vals) + " |")
    out += [""] + [f"- {x}" for x in _summary_lines(report)]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------------------- CLI
def _reference_rows(spec: dict, backbone: str | None) -> tuple[list[T.PaperRow], str | None, list[str]]:
    """Pick the config's reference rows for ``backbone`` (falling back to the first listed backbone)."""
    notes = []
    refs_by_bb: dict = spec.get("reference") or {}
    if not refs_by_bb:
        return [], backbone, ["The config lists no paper rows to compare with."]
    bb = backbone if backbone in refs_by_bb else next(iter(refs_by_bb))
    if bb != backbone:
        notes.append(f"NOTE: the runs' backbone is {backbone or 'not a paper backbone'}; comparing with the "
                     f"{bb} rows anyway.")
    rows = [T.find(r["paper"], r["table"], bb, r["method"]) for r in refs_by_bb[bb]]
    return rows, bb, notes


def _markdown_problem(path: str) -> str | None:
    """Why ``--markdown path`` cannot be written (checked before anything is printed), or None."""
    p = Path(path)
    folder = p.parent
    if p.is_dir():
        return "is a folder; pass a file name such as report.md"
    if not folder.is_dir():
        return f"folder {folder} does not exist; create it or pass a path in an existing folder"
    if not os.access(folder, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        return "not writable; pass a path in a writable folder"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("runs", help="sweep folder: every results.json below it is read")
    ap.add_argument("--config", help="reproduce/configs/<name>.yaml (default: the one named like the folder)")
    ap.add_argument("--tasks", nargs="*", help="expected tasks (default: every task of the config); "
                                               "space- or comma-separated; any alias data.tasks accepts "
                                               "(cifar100, svhn_cropped, Flowers102 ...)")
    ap.add_argument("--backbone", help="compare with this paper backbone id instead of the runs' own")
    ap.add_argument("--tolerance", type=float, default=1.0, help="flag |ours - paper| above this (points; default 1)")
    ap.add_argument("--markdown", metavar="OUT.md", help="also write the report as Markdown")
    ap.add_argument("--strict", action="store_true", help="exit 1 if a row is out of tolerance or a task is missing")
    args = ap.parse_args(argv)

    from reproduce import taskcfg

    root = Path(args.runs)
    if not root.is_dir():  # a mistyped folder would otherwise print a table of "—" and exit 0
        print(f"error: {root}: no such run folder; pass the sweep's folder $OUT/<config name> (e.g. "
              "runs/reproduce/hta_vtab), or run the sweep first", file=sys.stderr)
        return 2
    md_problem = _markdown_problem(args.markdown) if args.markdown else None
    if md_problem:
        print(f"error: --markdown {args.markdown}: {md_problem}", file=sys.stderr)
        return 2
    cfg_path = Path(args.config) if args.config else CONFIG_DIR / f"{root.name}.yaml"
    if not cfg_path.exists():
        print(f"error: no config {cfg_path}; pass --config reproduce/configs/<name>.yaml", file=sys.stderr)
        return 2
    try:
        spec = taskcfg.load(cfg_path)
    except taskcfg.ConfigError as e:
        print(f"error: --config: {e}", file=sys.stderr)
        return 2
    # split on commas and spaces, not inside "(...)": dsprites(predicted_attribute=...,num_classes=16) is one name
    names = [t for item in (args.tasks or []) for t in re.findall(r"(?:[^\s,()]|\([^)]*\))+", item)]
    try:  # any name data.tasks.resolve_task accepts (aliases, TFDS names, any case) -> the config's canonical ids
        tasks = taskcfg.select(spec, names) if names else list(spec["tasks"])
    except taskcfg.ConfigError as e:
        print(f"error: --tasks: {e} (config {cfg_path})", file=sys.stderr)
        return 2
    runs, problems = load_runs(root)
    foreign = sorted({r["dataset"] for r in runs} - set(tasks))
    runs = [r for r in runs if r["dataset"] in tasks]
    other_method = {}  # task -> methods of its runs that are not the config's (e.g. LoRA runs in an HTA folder)
    for task in tasks:
        expected = taskcfg.resolve(spec, task).get("method")
        found = sorted({str(r.get("method")) for r in runs if r["dataset"] == task} - {str(expected)})
        if found:
            other_method[task] = (found, expected)
    bbs = sorted({str(backbone_id(r.get("arch"), (r.get("pretrained") or {}).get("source"))) for r in runs})
    if len(bbs) > 1:
        print(f"error: {root} mixes backbones {bbs}; verify one sweep at a time", file=sys.stderr)
        return 2
    run_bb = None if not bbs or bbs[0] == "None" else bbs[0]
    refs, bb, notes = _reference_rows(spec, args.backbone or run_bb)
    notes += [f"NOTE: {p}" for p in problems]
    if foreign:
        notes.append(f"NOTE: ignored results of tasks outside the expected set: {', '.join(foreign)}")
    notes.append(clean_note(spec.get("selection", "paper"), cfg_path.read_text(), tasks))
    archs = sorted({str(r.get("arch")) for r in runs})
    weights = sorted({str((r.get("pretrained") or {}).get("source")) for r in runs})
    methods = sorted({str(r.get("method")) for r in runs})
    title = (f"{cfg_path.stem}: {len(runs)} run(s) in {root} — method {', '.join(methods) or '—'}, arch "
             f"{', '.join(archs) or '—'}, weights {', '.join(weights) or '—'}")
    notes += [f"WARNING: {task}: runs of method {', '.join(found)} among the results, but {cfg_path.name} trains "
              f"{expected}: they are averaged into this table against the {expected} rows; move them out of {root} "
              "(--strict fails)" for task, (found, expected) in other_method.items()]
    report = build_report(collect(runs), refs, tasks, args.tolerance, title=title, backbone=run_bb, notes=notes)
    report.other_method = list(other_method)
    if bb != run_bb and run_bb is not None:
        report.notes.append(f"Compared with {bb} rows (--backbone).")
    sys.stdout.write(render_text(report))
    if args.markdown:
        try:
            write_text_atomic(Path(args.markdown), render_markdown(report))
        except OSError as e:
            print(f"error: --markdown {args.markdown}: cannot write ({e.strerror or e}); pass a path in a writable "
                  "folder", file=sys.stderr)
            return 2
        print(f"markdown: {args.markdown}")
    if args.strict and not report.strict_ok():
        print(f"strict: {len(report.out_of_tolerance)} row(s) out of tolerance, {len(report.missing)} task(s) "
              f"missing, {len(report.other_method)} task(s) with runs of another method", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
