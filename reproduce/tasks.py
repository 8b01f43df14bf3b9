"""The task lists the sweeps loop over and the aggregates the papers print (docs/benchmarks.md §1, §3, §7).

The tables themselves are ``data/tasks.py``'s (plain Python: ``verify.py`` runs anywhere a ``results.json`` can be
read, without torch); here they are arranged as the sweeps and the verification read them:

* ``VTAB`` — the 19 canonical ids (NOAH folder names) in table order, with their group and class count;
* ``FGVC`` — the 5 dataset ids with class counts;
* ``mean_19`` (plain mean of the 19 tasks) and ``mean_groups`` (mean of the three group means) are the two VTAB "mean"
  conventions of docs/benchmarks.md §7; ``mean_fgvc`` is the plain FGVC mean.
"""
from __future__ import annotations

import sys
from pathlib import Path
from statistics import fmean
from typing import Mapping

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import tasks as _D  # noqa: E402

__all__ = ["VTAB", "FGVC", "GROUPS", "VTAB_TASKS", "FGVC_TASKS", "benchmark_of", "group_of", "group_means",
           "mean_19", "mean_groups", "mean_fgvc", "aggregates"]

# task id -> (group, number of classes); order = the papers' table order
VTAB: dict[str, tuple[str, int]] = {t: (_D.VTAB_GROUPS[t], _D.VTAB_NUM_CLASSES[t]) for t in _D.VTAB_TASKS}
FGVC: dict[str, int] = {t: _D.FGVC_NUM_CLASSES[t] for t in _D.FGVC_DATASETS}

GROUPS: dict[str, tuple[str, ...]] = {
    g: tuple(t for t, (grp, _) in VTAB.items() if grp == g) for g in ("natural", "specialized", "structured")
}
VTAB_TASKS: tuple[str, ...] = tuple(VTAB)
FGVC_TASKS: tuple[str, ...] = tuple(FGVC)


def benchmark_of(task: str) -> str:
    """'vtab' or 'fgvc' for a canonical id; ``KeyError`` for anything else (no alias guessing here)."""
    if task in VTAB:
        return "vtab"
    if task in FGVC:
        return "fgvc"
    raise KeyError(f"unknown task {task!r}; VTAB ids: {', '.join(VTAB)}; FGVC ids: {', '.join(FGVC)}")


def group_of(task: str) -> str:
    return VTAB[task][0]


def group_means(acc: Mapping[str, float]) -> dict[str, float]:
    """``mean_<group>`` for every group whose tasks are all in ``acc`` (a group with a missing task has no mean)."""
    return {f"mean_{g}": fmean(acc[t] for t in tasks) for g, tasks in GROUPS.items() if all(t in acc for t in tasks)}


def mean_19(acc: Mapping[str, float]) -> float | None:
    """Plain mean of the 19 VTAB tasks (HTA "Mean Total"; SNELL Tables A7, 5(b)); None unless all 19 are present."""
    return fmean(acc[t] for t in VTAB) if all(t in acc for t in VTAB) else None


def mean_groups(acc: Mapping[str, float]) -> float | None:
    """Mean of the three group means (SNELL Tables 1, 4, 5(a), A11; FacT, SSF); None unless all 19 are present."""
    g = group_means(acc)
    return fmean(g.values()) if len(g) == len(GROUPS) else None


def mean_fgvc(acc: Mapping[str, float]) -> float | None:
    return fmean(acc[t] for t in FGVC) if all(t in acc for t in FGVC) else None


def aggregates(acc: Mapping[str, float]) -> dict[str, float]:
    """Every aggregate computable from ``acc`` (task -> accuracy), keyed like the paper tables' pseudo-tasks."""
    out: dict[str, float] = dict(group_means(acc))
    for name, fn in (("mean_19", mean_19), ("mean_groups", mean_groups), ("mean_fgvc", mean_fgvc)):
        v = fn(acc)
        if v is not None:
            out[name] = v
    return out
