"""Compare a sweep's ``results.json`` files with the published tables (docs/benchmarks.md §6–7,
paper_tables/README.md "Consumer rules").

    python reproduce/verify.py runs/reproduce/hta_vtab                      # config inferred from the folder name
    python reproduce/verify.py runs/reproduce/snell_fgvc --config reproduce/configs/snell_fgvc.yaml \\
        --tolerance 0.5 --markdown snell_fgvc.md --strict
    python reproduce/verify.py runs/reproduce/hta_vtab runs/reproduce/arc_vtab --json t.json --csv t.csv --plot t.png

What is printed, per task then per aggregate:

* **ours, test-selected (paper protocol)** — ``acc_best_test`` of the ``protocol: paper`` runs: the maximum test top-1
  over the evaluated epochs, i.e. model selection on the test set, which is what the papers report (§6.1);
* **paper** — the printed value of the matching row (matched on paper, table, backbone, method, task), and the
  difference ours − paper, flagged when it exceeds ``--tolerance`` (|Δ| ≤ 0.05 is rounding);
* **ours, clean (last epoch)** — ``acc_last`` of the same runs: test top-1 at the last epoch after training on
  train800val200 (FGVC: train), step 3 of the clean protocol (§6.2). It is fully clean only when the config's
  hyper-parameters were selected on val200 (``selection: val`` in the config, e.g. after ``reproduce/search.py``;
  ``selection: partial``: only for the tasks the note names, those with a ``# source: reproduce/search.py`` line);
  otherwise the header says where the hyper-parameters come from: the papers' test-selected recipes (``paper``),
  another method's test-selected recipe (``borrowed``) or project defaults (``default``);
* ``protocol: clean`` runs of train.py (the selection runs of §6.2 step 1: train800, scored by val200 top-1 at the last
  epoch, ``acc_val_last``) add a column "val top-1, last epoch" when present — a selection score, not a test result;
* the three group means and **both** VTAB overall means, labelled: ``mean_19`` (plain mean of the 19 tasks; HTA's
  "Mean Total", SNELL Tables A7 and 5(b)) and ``mean_groups`` (mean of the three group means; SNELL Tables 1, 4, 5(a),
  A11). A convention the paper did not print is computed from the paper's own per-task values where it has them
  and marked "(computed)" — the printed value is never replaced;
* trainable parameters, ours with and without the head (mean over tasks), against the printed ``params_m``;
* mean peak memory and training img/s.

Several seeds of one task are averaged (mean ± sample std). Means over a group are only formed when every task of the
group has a result. Several sweep folders give one table each, in the order given (``--config``, ``--tasks`` and
``--backbone`` apply to each). ``--strict`` exits 1 when a row is out of tolerance or an expected task has no result.

Files (each written atomically, after the table): ``--markdown`` the tables as Markdown; ``--json`` every number of
the tables (``{"reports": [...]}``, one object per folder: rows, parameter and performance summary, notes; unrounded);
``--csv`` the same as one flat table (a ``kind`` column: header, task, aggregate, summary, note); ``--plot FILE.png``
(needs matplotlib) ours − paper per task and mean with the ±tolerance band, both protocols, one panel per folder, and
with several folders the mean accuracy against trainable parameters (log scale) with the reference rows' printed
points (``plot_data()`` returns what is drawn). Bad input (no such run folder, a config that does not load, an
unwritable output path, ``--plot`` without matplotlib) is one error line and exit 2, before any table.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import io
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
from util.files import atomic_path, write_text_atomic  # noqa: E402

__all__ = ["backbone_id", "load_runs", "TaskResult", "collect", "Row", "Report", "build_report", "render_text",
           "render_markdown", "report_dict", "render_json", "CSV_COLUMNS", "render_csv", "plot_data", "plot",
           "clean_note", "main", "ROUNDING"]

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
    "borrowed": "Clean column: last-epoch test top-1 with per-task hyper-parameters taken from another method's "
                "recipe on the same tasks (see the config's comments), which that method's authors selected on the "
                "test set: not tuned on this method's test results, but not clean in its selection either "
                "(reproduce/search.py has not been run).",
    "default": "Clean column: last-epoch test top-1 with project defaults (the paper released no per-task values and "
               "reproduce/search.py has not been run): nothing was selected on the test set.",
    "val": "Clean column: last-epoch test top-1 with hyper-parameters selected on val200 by reproduce/search.py "
           "(docs/benchmarks.md §6.2).",
    "partial": "Clean column: last-epoch test top-1; hyper-parameters selected on val200 by reproduce/search.py "
               "(docs/benchmarks.md §6.2) only for {searched}; {rest} keep the config's other values (project "
               "defaults, or test-selected recipes of the paper or of another method, see the config's comments), so "
               "their clean numbers are not val-selected.",
}


def clean_note(selection: str, config_text: str, tasks: list[str]) -> str:
    """The note on the clean column for the reported ``tasks`` (docs/benchmarks.md §6.2). Under ``selection:
    partial`` (or a ``val`` config that search.py left only partly searched) it names which tasks were val-selected,
    read from their ``# source: reproduce/search.py`` comments (taskcfg.searched_tasks); when all reported tasks were,
    the ``val`` note applies to the whole table."""
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
    name = s.replace("\\", "/").rsplit("/", 1)[-1]
    # Swin-B and ConvNeXt-B IN-22k: timm's names or the released files SNELL loads (docs/backbones.md §5)
    if arch == "swin_base_patch4_window7_224" and ("in22k" in s or name == "swin_base_patch4_window7_224_22k.pth") \
            and "in1k" not in s:
        return "swin_b_in21k"
    if arch == "convnext_base" and ("fb_in22k" == s.rsplit(".", 1)[-1] or name == "convnext_base_22k_224.pth"):
        return "convnext_b_in21k"
    family = {"vit_base_patch16_224": "b16", "vit_large_patch16_224": "l16", "vit_huge_patch14_224": "h14"}.get(
        arch or "")
    if family is None:
        return None
    # the self-supervised ViT-B/16s of SNELL Table 2
    if family == "b16" and (s == "vit_base_patch16_224.mae" or name == "mae_pretrain_vit_base.pth"):
        return "vit_b16_mae"
    if family == "b16" and name in ("linear-vit-b-300ep.pth.tar", "vit-b-300ep.pth.tar"):
        return "vit_b16_mocov3"
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
    paper_methods: list[str] = field(default_factory=list)  # the reference rows' method names (plot labels)
    folder: str = ""              # the sweep folder (main); "" for a report built directly
    config: str = ""              # the config's stem (main)
    methods: list[str] = field(default_factory=list)  # methods of the runs (main)

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
                  has_val_last=any(r.val_last is not None for r in rows),
                  paper_methods=list(dict.fromkeys(r.method for r in refs)))


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


# ---------------------------------------------------------------------------------------------- JSON, CSV and plot
ROW_FIELDS = ("name", "label", "kind", "n", "n_total", "ours", "ours_std", "clean", "clean_std", "val_last", "paper",
              "paper_printed", "paper_source", "diff", "clean_diff", "flag")


def report_dict(report: Report) -> dict:
    """Every number of the printed table of ``report``, unrounded (``--json``; ``render_csv`` flattens the same)."""
    return {
        "folder": report.folder, "config": report.config, "title": report.title, "methods": list(report.methods),
        "backbone": report.backbone, "reference": list(report.reference), "tolerance": report.tolerance,
        "rounding": ROUNDING, "has_val_last": report.has_val_last,
        "rows": [{f: getattr(r, f) for f in ROW_FIELDS} for r in report.rows],
        "params": dict(report.params), "perf": dict(report.perf),
        "out_of_tolerance": [r.name for r in report.out_of_tolerance], "missing": list(report.missing),
        "other_method": list(report.other_method), "strict_ok": report.strict_ok(),
        "notes": list(report.notes), "summary": _summary_lines(report),
    }


def render_json(reports: list[Report]) -> str:
    return json.dumps({"reports": [report_dict(r) for r in reports]}, indent=1, ensure_ascii=False) + "\n"


CSV_COLUMNS = ("folder", "config") + ROW_FIELDS + ("value", "text")


def _csv_records(report: Report) -> list[dict]:
    """One record per table row (kind task / aggregate), and kind header / summary / note records whose number is in
    ``value`` and whose words are in ``text``."""
    d = report_dict(report)
    recs = [{"kind": "header", "name": "title", "text": d["title"]},
            {"kind": "header", "name": "backbone", "text": d["backbone"]},
            {"kind": "header", "name": "reference", "text": "; ".join(d["reference"])},
            {"kind": "header", "name": "tolerance", "value": d["tolerance"]},
            {"kind": "header", "name": "rounding", "value": d["rounding"]}]
    recs += d["rows"]
    p, perf = d["params"], d["perf"]
    recs += [{"kind": "summary", "name": "params_ours_m", "value": p["ours_m"]},
             {"kind": "summary", "name": "params_ours_no_head_m", "value": p["ours_no_head_m"]},
             {"kind": "summary", "name": "params_printed_m", "value": p["printed_m"], "text": p["printed"],
              "paper_source": p["source"]},
             {"kind": "summary", "name": "params_verdict", "text": p["verdict"]},
             {"kind": "summary", "name": "peak_mem_mb", "value": perf["peak_mem_mb"]},
             {"kind": "summary", "name": "img_per_s", "value": perf["img_per_s"]},
             {"kind": "summary", "name": "out_of_tolerance", "text": ", ".join(d["out_of_tolerance"])},
             {"kind": "summary", "name": "missing", "text": ", ".join(d["missing"])},
             {"kind": "summary", "name": "other_method", "text": ", ".join(d["other_method"])}]
    recs += [{"kind": "note", "name": str(i), "text": note} for i, note in enumerate(d["notes"], 1)]
    return [{"folder": d["folder"], "config": d["config"], **r} for r in recs]


def render_csv(reports: list[Report]) -> str:
    """The tables as one CSV (``CSV_COLUMNS``): numbers unrounded (``repr``), an empty cell for none."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for report in reports:
        for rec in _csv_records(report):
            w.writerow({k: "" if rec.get(k) is None else rec[k] for k in CSV_COLUMNS})
    return buf.getvalue()


GROUP_NAMES = {"mean_natural": "Natural", "mean_specialized": "Specialized", "mean_structured": "Structured",
               "mean_fgvc": "FGVC"}


def _overall_key(report: Report) -> str:
    return "mean_19" if any(r.name in K.VTAB for r in report.rows if r.kind == "task") else "mean_fgvc"


def plot_data(reports: list[Report]) -> dict:
    """What ``plot`` draws, taken from the reports' rows unchanged: ``panels`` (one per report: ours − paper per task
    and mean, test-selected ``diff`` and clean ``clean_diff``, the tolerance, the group spans with their mean's
    differences) and, with several reports, ``scatter`` (per overall mean: ours test-selected against the mean
    trainable parameters with the head, the reference rows' printed mean against their printed count, and the
    folders that have no mean to plot)."""
    panels = []
    for rep in reports:
        tasks = [r for r in rep.rows if r.kind == "task"]
        aggs = [r for r in rep.rows if r.kind == "aggregate"]
        points = [{"x": x, "name": r.name, "kind": r.kind, "diff": r.diff, "clean_diff": r.clean_diff, "flag": r.flag}
                  for x, r in enumerate(tasks)]
        points += [{"x": len(tasks) + 1 + i, "name": r.name, "kind": r.kind, "diff": r.diff,
                    "clean_diff": r.clean_diff, "flag": r.flag} for i, r in enumerate(aggs)]  # a gap before the means
        groups = []
        for r in aggs:
            if r.name not in GROUP_NAMES:
                continue
            members = K.GROUPS.get(r.name[len("mean_"):]) or K.FGVC_TASKS
            xs = [p["x"] for p in points if p["kind"] == "task" and p["name"] in members]
            if xs:
                groups.append({"key": r.name, "label": GROUP_NAMES[r.name], "x0": min(xs), "x1": max(xs),
                               "diff": r.diff, "clean_diff": r.clean_diff})
        panels.append({"folder": rep.folder, "config": rep.config, "backbone": rep.backbone,
                       "tolerance": rep.tolerance, "n_tasks": len(tasks), "points": points, "groups": groups})
    scatter: dict[str, dict] = {}
    if len(reports) > 1:
        labels = [", ".join(rep.methods) or rep.config or "?" for rep in reports]
        for rep, label in zip(reports, labels):
            key = _overall_key(rep)
            s = scatter.setdefault(key, {"key": key, "label": AGG_LABELS[key], "ours": [], "paper": [],
                                         "not_plotted": []})
            row = next((r for r in rep.rows if r.name == key), None)
            if labels.count(label) > 1:
                label = f"{label} ({Path(rep.folder).name or rep.config})"
            if row is None or row.ours is None or rep.params["ours_m"] is None:
                why = (f"{key} needs all {row.n_total} tasks, {row.n} have results" if row is not None and row.n_total
                       and row.n < row.n_total else "no result or parameter count")
                s["not_plotted"].append({"folder": rep.folder, "label": label, "reason": why})
            else:
                s["ours"].append({"folder": rep.folder, "label": label, "params_m": rep.params["ours_m"],
                                  "acc": row.ours})
            if row is not None and row.paper is not None and rep.params["printed_m"] is not None:
                point = {"label": f"{'/'.join(rep.paper_methods) or '?'} ({row.paper_source})",
                         "params_m": rep.params["printed_m"], "acc": row.paper,
                         "computed": "(computed)" in (row.paper_source or "")}
                if point not in s["paper"]:
                    s["paper"].append(point)
    return {"panels": panels, "scatter": list(scatter.values())}


def plot(reports: list[Report], path: str | Path) -> dict:
    """Draw ``plot_data(reports)`` into the PNG ``path`` (matplotlib's Agg canvas, imported here only; written
    atomically). Returns the plotted data."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.transforms import blended_transform_factory

    data = plot_data(reports)
    n_x = max([len(p["points"]) + 1 for p in data["panels"]] + [12])
    n_axes = len(data["panels"]) + len(data["scatter"])
    fig = Figure(figsize=(max(11.0, 0.42 * n_x + 4), 4.4 * n_axes), layout="constrained")  # + 4: the legends
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_axes, 1, squeeze=False)[:, 0]
    for ax, panel in zip(axes, data["panels"]):
        _draw_panel(ax, panel, blended_transform_factory(ax.transData, ax.transAxes))
    for ax, s in zip(axes[len(data["panels"]):], data["scatter"]):
        _draw_scatter(ax, s)
    with atomic_path(Path(path), ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return data


def _draw_panel(ax, panel: dict, x_data_y_axes) -> None:
    tol, pts = panel["tolerance"], panel["points"]
    ax.axhspan(-tol, tol, color="tab:green", alpha=0.18, lw=0, label=f"±tolerance ({tol:g} pt)")
    ax.axhline(0, color="0.35", lw=0.8)
    for i, g in enumerate(panel["groups"]):
        if i % 2 == 0:
            ax.axvspan(g["x0"] - 0.5, g["x1"] + 0.5, color="0.5", alpha=0.07, lw=0)
        ax.text((g["x0"] + g["x1"]) / 2, 0.98, g["label"], transform=x_data_y_axes, ha="center", va="top", fontsize=8)
        for key, color, style in (("diff", "tab:blue", "--"), ("clean_diff", "tab:orange", ":")):
            if g[key] is not None:
                ax.hlines(g[key], g["x0"] - 0.4, g["x1"] + 0.4, colors=color, linestyles=style, lw=1.2)
    ax.axvline(panel["n_tasks"], color="0.5", ls=":", lw=0.8)  # tasks | means
    for key, marker, label in (("diff", "o", "test-selected (paper protocol) − paper"),
                               ("clean_diff", "s", "clean (last epoch) − paper")):
        xs = [p["x"] for p in pts if p[key] is not None]
        ys = [p[key] for p in pts if p[key] is not None]
        style = ({"color": "tab:blue"} if key == "diff" else {"facecolors": "none", "edgecolors": "tab:orange"})
        ax.scatter(xs, ys, marker=marker, s=30, zorder=3, label=label, **style)
    if panel["groups"]:
        ax.plot([], [], color="0.3", ls="--", lw=1.2, label="group mean − paper (dashed; clean: dotted)")
    ax.set_xticks([p["x"] for p in pts])
    ax.set_xticklabels([p["name"] for p in pts], rotation=60, ha="right", fontsize=8)
    for tick, p in zip(ax.get_xticklabels(), pts):
        if p["kind"] == "aggregate":
            tick.set_fontweight("bold")
        if p["diff"] is None and p["clean_diff"] is None:
            tick.set_color("0.6")
    ax.set_xlim(-0.7, pts[-1]["x"] + 0.7 if pts else 1)
    bb = panel["backbone"] or "not a paper backbone: differences not meaningful"
    ax.set_title(f"{panel['config'] or 'report'}: {panel['folder']} ({bb})", fontsize=9)
    ax.set_ylabel("ours − paper (points)")
    ax.margins(y=0.18)  # room for the group names
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))


def _draw_scatter(ax, s: dict) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    for points, kw in ((s["paper"], {"marker": "o", "color": "0.35", "label": "papers, printed (hollow: computed)"}),
                       (s["ours"], {"marker": "*", "s": 140, "color": "tab:red", "label": "ours, test-selected"})):
        for i, p in enumerate(points):
            style = dict(kw, label=kw["label"] if i == 0 else None)
            if p.get("computed"):
                style.update(facecolors="none", edgecolors=style.pop("color"))
            ax.scatter([p["params_m"]], [p["acc"]], zorder=3, **style)
            ax.annotate(p["label"], (p["params_m"], p["acc"]), textcoords="offset points", fontsize=8,
                        xytext=(7, 4) if kw["marker"] == "o" else (7, -11))  # papers above, ours below
    xs = [p["params_m"] for p in s["paper"] + s["ours"]]
    ys = [p["acc"] for p in s["paper"] + s["ours"]]
    if xs:
        ax.set_xlim(min(xs) / 3, max(xs) * 3)
        ax.set_ylim(min(ys) - 5, max(ys) + 5)
    else:
        ax.set_xlim(0.01, 10)
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    if s["not_plotted"]:
        ax.text(0.01, 0.02, "not plotted: " + "; ".join(f"{p['label']} ({p['reason']})" for p in s["not_plotted"]),
                transform=ax.transAxes, fontsize=8, va="bottom", wrap=True)
    ax.set_xlabel("trainable parameters, M (log scale; ours: mean over tasks, with the head; papers: as printed)")
    ax.set_ylabel(f"{s['key']} (%)")
    ax.set_title(f"accuracy against trainable parameters: {s['label']}", fontsize=9)
    if s["paper"] or s["ours"]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))


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


class _BadInput(Exception):
    """One error line (``error: <message>``), exit 2."""


OUTPUTS = (("markdown", "report.md"), ("json", "report.json"), ("csv", "report.csv"), ("plot", "report.png"))


def _output_problem(path: str, example: str = "report.md") -> str | None:
    """Why an output file ``path`` cannot be written (checked before anything is printed), or None."""
    p = Path(path)
    folder = p.parent
    if p.is_dir():
        return f"is a folder; pass a file name such as {example}"
    if not folder.is_dir():
        return f"folder {folder} does not exist; create it or pass a path in an existing folder"
    if not os.access(folder, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        return "not writable; pass a path in a writable folder"
    return None


def _check_outputs(args) -> None:
    for name, example in OUTPUTS:
        path = getattr(args, name)
        if not path:
            continue
        problem = _output_problem(path, example)
        if problem:
            raise _BadInput(f"--{name} {path}: {problem}")
    if args.plot:
        if Path(args.plot).suffix.lower() != ".png":
            raise _BadInput(f"--plot {args.plot}: not a .png file name; pass a name such as report.png")
        if not _have_matplotlib():
            raise _BadInput("--plot: matplotlib is not installed; pip install matplotlib (requirements.txt), or "
                            "leave out --plot")


def _have_matplotlib() -> bool:
    """Whether matplotlib can be imported (looked up, not imported: verify.py stays usable without it)."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):  # e.g. a None or spec-less entry in sys.modules
        return False


def _sweep_report(root: Path, args, names: list[str]) -> Report:
    """The report of one sweep folder (``_BadInput`` for a config that does not load, unknown tasks, mixed
    backbones)."""
    from reproduce import taskcfg

    cfg_path = Path(args.config) if args.config else CONFIG_DIR / f"{root.name}.yaml"
    if not cfg_path.exists():
        raise _BadInput(f"no config {cfg_path}; pass --config reproduce/configs/<name>.yaml")
    try:
        spec = taskcfg.load(cfg_path)
    except taskcfg.ConfigError as e:
        raise _BadInput(f"--config: {e}") from None
    try:  # any name data.tasks.resolve_task accepts (aliases, TFDS names, any case) -> the config's canonical ids
        tasks = taskcfg.select(spec, names) if names else list(spec["tasks"])
    except taskcfg.ConfigError as e:
        raise _BadInput(f"--tasks: {e} (config {cfg_path})") from None
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
        raise _BadInput(f"{root} mixes backbones {bbs}; verify one sweep at a time")
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
    report.folder, report.config, report.methods = str(root), cfg_path.stem, methods
    if bb != run_bb and run_bb is not None:
        report.notes.append(f"Compared with {bb} rows (--backbone).")
    return report


def _write_outputs(args, reports: list[Report]) -> None:
    """The requested files, each written atomically after the tables (a failed write: ``_BadInput``)."""
    writers = {"markdown": lambda p: write_text_atomic(p, "\n".join(render_markdown(r) for r in reports)),
               "json": lambda p: write_text_atomic(p, render_json(reports)),
               "csv": lambda p: write_text_atomic(p, render_csv(reports)),
               "plot": lambda p: plot(reports, p)}
    for name, _ in OUTPUTS:
        path = getattr(args, name)
        if not path:
            continue
        try:
            writers[name](Path(path))
        except OSError as e:
            raise _BadInput(f"--{name} {path}: cannot write ({e.strerror or e}); pass a path in a writable "
                            "folder") from None
        print(f"{name}: {path}")


def main(argv: list[str] | None = None) -> int:
    head, _, rest = __doc__.partition("\n\n")
    ap = ArgumentParser(description=head, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=rest)
    ap.add_argument("runs", nargs="+", help="sweep folder(s): every results.json below each is read; several folders "
                                            "give one table each (and with --plot the accuracy-vs-parameters panel)")
    ap.add_argument("--config", help="reproduce/configs/<name>.yaml (default: the one named like the folder)")
    ap.add_argument("--tasks", nargs="*", help="expected tasks (default: every task of the config); "
                                               "space- or comma-separated; any alias data.tasks accepts "
                                               "(cifar100, svhn_cropped, Flowers102 ...)")
    ap.add_argument("--backbone", help="compare with this paper backbone id instead of the runs' own")
    ap.add_argument("--tolerance", type=float, default=1.0, help="flag |ours - paper| above this (points; default 1)")
    ap.add_argument("--markdown", metavar="OUT.md", help="also write the report as Markdown")
    ap.add_argument("--json", metavar="OUT.json", help="also write every number of the report as JSON "
                                                       "({\"reports\": [...]}, one per folder; unrounded)")
    ap.add_argument("--csv", metavar="OUT.csv", help="also write every number of the report as one CSV (columns: "
                                                     "folder, config, kind, the row fields, value, text)")
    ap.add_argument("--plot", metavar="OUT.png", help="also draw ours - paper per task with the tolerance band "
                                                      "(and, with several folders, accuracy against trainable "
                                                      "parameters); needs matplotlib")
    ap.add_argument("--strict", action="store_true", help="exit 1 if a row is out of tolerance or a task is missing")
    args = ap.parse_args(argv)

    try:
        roots = [Path(r) for r in args.runs]
        for root in roots:
            if not root.is_dir():  # a mistyped folder would otherwise print a table of "—" and exit 0
                raise _BadInput(f"{root}: no such run folder; pass the sweep's folder $OUT/<config name> (e.g. "
                                "runs/reproduce/hta_vtab), or run the sweep first")
        seen = [r.resolve() for r in roots]
        twice = next((r for i, r in enumerate(roots) if seen[i] in seen[:i]), None)
        if twice is not None:
            raise _BadInput(f"{twice}: given twice; pass each sweep folder once")
        _check_outputs(args)
        # split on commas and spaces, not inside "(...)": dsprites(predicted_attribute=...,num_classes=16) is one name
        names = [t for item in (args.tasks or []) for t in re.findall(r"(?:[^\s,()]|\([^)]*\))+", item)]
        reports = [_sweep_report(root, args, names) for root in roots]
        sys.stdout.write("\n".join(render_text(r) for r in reports))
        _write_outputs(args, reports)
    except _BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failing = [r for r in reports if not r.strict_ok()]
    if args.strict and failing:
        n_out, n_missing, n_other = (sum(len(getattr(r, a)) for r in reports)
                                     for a in ("out_of_tolerance", "missing", "other_method"))
        print(f"strict: {n_out} row(s) out of tolerance, {n_missing} task(s) missing, {n_other} task(s) with runs of "
              "another method" + (f" ({', '.join(r.config for r in failing)})" if len(reports) > 1 else ""),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
