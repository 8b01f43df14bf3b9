"""The repository explains itself: every document the code, configs, scripts and docs cite is in it, every cited
section exists there, and nothing points to a path outside the checkout."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXT = (".py", ".yaml", ".sh", ".md", ".txt", ".ini", ".csv")
# "docs/methods/hta.md §5.2", "snell.md §8.2-8.3", "benchmarks.md §6, §7", "arc.md#initialisation"
CITATION = re.compile(r"(?P<file>[\w./-]*[\w-]+\.md)(?P<secs>(?:,? ?§ ?\d+(?:\.\d+)*(?:[–-]\d+(?:\.\d+)*)?)+|#[\w-]+)")


def tracked() -> list[Path]:
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / n for n in names if n.endswith(TEXT) and (ROOT / n).is_file() and n != "tests/test_docs.py"]


def _resolve(name: str, citing: Path) -> Path | None:
    """A cited document: a path from the repository root, or from the citing file's folder, or a bare file name
    that exactly one tracked markdown file carries."""
    for base in (ROOT, citing.parent):
        if (base / name).is_file():
            return (base / name).resolve()
    if "/" not in name:
        found = [p for p in tracked() if p.name == name]
        if len(found) == 1:
            return found[0]
    return None


def _slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _sections(doc: Path) -> tuple[set[str], set[str]]:
    """(section numbers, GitHub anchors) of a markdown file: numbered headings ("## 5.", "### 5.2 ...") and numbered
    rows of a table ("| 10.2 | ..."), and the slug of every heading."""
    numbers, anchors = set(), set()
    for line in doc.read_text().splitlines():
        m = re.match(r"#+\s+(.*)", line)
        if m:
            anchors.add(_slug(m.group(1)))
            n = re.match(r"(\d+(?:\.\d+)*)\.?\s", m.group(1) + " ")
            if n:
                numbers.add(n.group(1))
        row = re.match(r"\|\s*\**(\d+(?:\.\d+)+)\**\s*\|", line)
        if row:
            numbers.add(row.group(1))
    return numbers, anchors


def citations():
    for path in tracked():
        if path.suffix == ".csv":
            continue
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for m in CITATION.finditer(line):
                if m.group("file").startswith(("http", "www.")):
                    continue
                yield path, lineno, m.group("file"), m.group("secs")


def test_every_cited_document_and_section_is_in_the_repository():
    cited = list(citations())
    assert len(cited) > 400  # the code, configs and docs cite their sources throughout
    problems = []
    for path, lineno, name, secs in cited:
        doc = _resolve(name, path)
        where = f"{path.relative_to(ROOT)}:{lineno}: {name}{secs}"
        if doc is None:
            problems.append(f"{where}: no such document in the repository")
            continue
        numbers, anchors = _sections(doc)
        if secs.startswith("#"):
            if secs[1:] not in anchors:
                problems.append(f"{where}: no heading with that anchor")
            continue
        for sec in re.findall(r"§ ?(\d+(?:\.\d+)*)", secs):
            if sec not in numbers and sec.split(".")[0] not in numbers:
                problems.append(f"{where}: no section {sec}")
            elif sec not in numbers:
                problems.append(f"{where}: section {sec.split('.')[0]} has no subsection {sec}")
    assert not problems, "\n".join(problems[:30])


@pytest.mark.parametrize("pattern", [r"\.\./shared", r"/work/", r"(?<![\w.])specs/", r"~/shared"])
def test_nothing_points_outside_the_repository(pattern):
    bad = [f"{p.relative_to(ROOT)}:{i}" for p in tracked() if not p.name.startswith("bench_")
           for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if re.search(pattern, line)]
    assert not bad, bad[:20]


def test_relative_links_in_the_docs_resolve():
    bad = []
    for path in tracked():
        if path.suffix != ".md":
            continue
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if not target.startswith(("http://", "https://", "mailto:")) and not (path.parent / target).exists():
                bad.append(f"{path.relative_to(ROOT)}: {target}")
    assert not bad, bad
