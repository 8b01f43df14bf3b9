"""The published tables in ``reproduce/paper_tables/*.csv`` (paper_tables/README.md).

Every CSV has the header ``paper,table,backbone,method,task,value``. A *row* of a published table is the set of CSV
lines sharing (paper, table, backbone, method); ``load()`` returns them as ``PaperRow`` objects keyed that way, so
matching follows the README's consumer rule "match on (paper, table, backbone, method, task)". Values are kept both as
floats and as the printed strings (``printed``), because a printed "74.7" and a computed 74.68 are different things.
"""
from __future__ import annotations

import csv
import dataclasses
from functools import lru_cache
from pathlib import Path

__all__ = ["TABLES_DIR", "HEADER", "PaperRow", "load", "find"]

TABLES_DIR = Path(__file__).resolve().parent / "paper_tables"
HEADER = ("paper", "table", "backbone", "method", "task", "value")

Key = tuple[str, str, str, str]  # (paper, table, backbone, method)


@dataclasses.dataclass(frozen=True)
class PaperRow:
    paper: str
    table: str
    backbone: str
    method: str
    printed: dict[str, str]  # task or pseudo-task -> the number as printed

    @property
    def key(self) -> Key:
        return (self.paper, self.table, self.backbone, self.method)

    @property
    def values(self) -> dict[str, float]:
        return {t: float(v) for t, v in self.printed.items()}

    @property
    def label(self) -> str:
        return f"{self.paper} {self.table}, {self.method} ({self.backbone})"


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != HEADER:
            raise ValueError(f"{path}: header is {reader.fieldnames}, expected {','.join(HEADER)}")
        return list(reader)


@lru_cache(maxsize=4)
def _load(directory: str) -> dict[Key, PaperRow]:
    rows: dict[Key, dict[str, str]] = {}
    files = sorted(Path(directory).glob("*.csv"))
    if not files:
        raise FileNotFoundError(f"no paper tables (*.csv) in {directory}")
    for path in files:
        for line in _read(path):
            key = (line["paper"], line["table"], line["backbone"], line["method"])
            cells = rows.setdefault(key, {})
            if line["task"] in cells:
                raise ValueError(f"{path.name}: {key} lists {line['task']!r} twice")
            float(line["value"])  # every value must parse; fail here, not in a comparison later
            cells[line["task"]] = line["value"]
    return {k: PaperRow(*k, printed=v) for k, v in rows.items()}


def load(directory: str | Path = TABLES_DIR) -> dict[Key, PaperRow]:
    """All published rows, keyed by (paper, table, backbone, method)."""
    return _load(str(Path(directory).resolve()))


def find(paper: str, table: str, backbone: str, method: str, directory: str | Path = TABLES_DIR) -> PaperRow:
    """The one row matching exactly; ``KeyError`` listing the near candidates otherwise."""
    rows = load(directory)
    key = (paper, table, backbone, method)
    if key in rows:
        return rows[key]
    near = sorted(f"{k[1]} / {k[2]} / {k[3]}" for k in rows if k[0] == paper and (k[1] == table or k[3] == method))
    raise KeyError(f"no paper row {key}; rows of {paper} with that table or method: {near}")
