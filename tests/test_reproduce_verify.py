"""reproduce/: the paper tables and the verification table (docs/benchmarks.md §7, paper_tables/README.md)."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from reproduce import tables, tasks as K, verify

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------------ the tables
def test_tables_are_listed_and_load():
    ours = sorted(p.name for p in tables.TABLES_DIR.glob("*.csv"))
    assert len(ours) == 14
    listed = (tables.TABLES_DIR / "README.md").read_text()
    assert all(f"`{name}`" in listed for name in ours)  # each table's source and reading notes are in the README
    rows = tables.load()
    hta = tables.find("HTA", "Table 1", "vit_b16_in21k", "HTA")
    assert len([t for t in hta.printed if t in K.VTAB]) == 19
    assert hta.printed["mean_19"] == "74.7" and hta.printed["params_m"] == "0.22"
    assert ("SNELL", "Table 5(b)", "vit_b16_in21k", "SNELL-32") in rows
    with pytest.raises(KeyError, match="Table 1"):
        tables.find("HTA", "Table 1", "vit_b16_in21k", "HTA*")


# The printed aggregates that do not equal the mean of their own row's per-task values (|diff| > 0.05): exactly the
# inconsistencies listed in paper_tables/README.md (plus MLP-4's mean_19, which follows from its wrong Structured).
KNOWN_INCONSISTENT = {
    ("HTA", "Table 1", "Bias", "mean_19"), ("HTA", "Table 1", "RLRR", "mean_natural"),
    ("HTA", "Table 2", "VPT-Shallow", "mean_fgvc"), ("HTA", "Table 2", "RLRR", "mean_fgvc"),
    ("HTA", "App. Table 4", "Bias", "mean_19"), ("HTA", "App. Table 4", "VPT-Deep", "mean_19"),
    ("HTA", "App. Table 4", "RLRR", "mean_19"),
    ("HTA", "App. Table 5", "MLP-4", "mean_structured"), ("HTA", "App. Table 5", "MLP-4", "mean_19"),
    ("HTA", "App. Table 5", "VPT-Shallow", "mean_specialized"), ("HTA", "App. Table 5", "VPT-Shallow", "mean_19"),
    ("HTA", "App. Table 5", "VPT-Deep", "mean_19"),
    ("SNELL", "Table 1", "VPT-Shallow", "mean_fgvc"), ("SNELL", "Table 1", "Adapter-8", "mean_fgvc"),
    ("SNELL", "Table 1", "Partial-1", "mean_fgvc"), ("SNELL", "Table 1", "SPT-LoRA", "mean_fgvc"),
}


def test_paper_tables_reproduce_their_printed_means():
    checked, bad = 0, set()
    for (paper, table, _, method), row in tables.load().items():
        computed = K.aggregates({t: v for t, v in row.values.items() if t in K.VTAB or t in K.FGVC})
        for key, value in computed.items():
            if key in row.printed:
                checked += 1
                if abs(value - row.values[key]) > verify.ROUNDING + 1e-9:
                    bad.add((paper, table, method, key))
    assert checked > 150
    assert bad == KNOWN_INCONSISTENT


@pytest.mark.parametrize("paper,table,method,sums,groups,m19,mg", [
    ("HTA", "Table 1", "HTA", (576.7, 344.0, 498.3), (82.39, 86.00, 62.29), 74.68, 76.89),
    ("HTA", "Table 1", "LoRA", (556.4, 338.2, 478.2), (79.49, 84.55, 59.78), 72.25, 74.60),
    ("SNELL", "Table A7", "SNELL-16", (576.7, 344.3, 493.3), (82.39, 86.08, 61.66), 74.44, 76.71),
    ("HTA", "Table 1", "ARC", (571.3, 343.1, 479.6), (81.61, 85.78, 59.95), 73.37, 75.78),
])
def test_both_vtab_mean_conventions_match_the_worked_examples(paper, table, method, sums, groups, m19, mg):
    """docs/benchmarks.md §7 worked examples: Σ per group, group means, mean_19 and mean_groups."""
    acc = {t: v for t, v in tables.find(paper, table, "vit_b16_in21k", method).values.items() if t in K.VTAB}
    for g, s, m in zip(("natural", "specialized", "structured"), sums, groups):
        assert sum(acc[t] for t in K.GROUPS[g]) == pytest.approx(s, abs=1e-9)
        assert K.group_means(acc)[f"mean_{g}"] == pytest.approx(m, abs=0.005 + 1e-9)  # printed to 2 decimals
    assert K.mean_19(acc) == pytest.approx(m19, abs=0.005 + 1e-9)
    assert K.mean_groups(acc) == pytest.approx(mg, abs=0.005 + 1e-9)
    assert K.mean_groups(acc) - K.mean_19(acc) > 2  # the conventions differ by 2-3 points


def test_snell16_table1_means_follow_from_table_a7():
    a7 = {t: v for t, v in tables.find("SNELL", "Table A7", "vit_b16_in21k", "SNELL-16").values.items()
          if t in K.VTAB}
    t1 = tables.find("SNELL", "Table 1", "vit_b16_in21k", "SNELL-16").values
    for key, value in K.aggregates(a7).items():
        if key in t1:
            assert abs(value - t1[key]) <= verify.ROUNDING, key
    assert tables.find("SNELL", "Table 5(b)", "vit_b16_in21k", "SNELL-16").values["mean_19"] == round(K.mean_19(a7), 1)


def test_means_need_every_task():
    acc = {t: 50.0 for t in K.VTAB_TASKS[:-1]}
    assert K.mean_19(acc) is None and K.mean_groups(acc) is None
    assert set(K.group_means(acc)) == {"mean_natural", "mean_specialized"}
    assert K.mean_fgvc({t: 90.0 for t in K.FGVC}) == 90.0


def test_verification_reads_the_data_packages_table_without_torch():
    # one task table (data/tasks.py); verify.py reads it where only Python is installed, no torch imported
    import subprocess
    import sys

    code = ("import sys; from reproduce import verify, tasks as K; assert 'torch' not in sys.modules, 'torch'; "
            "print(len(K.VTAB), *(len(g) for g in K.GROUPS.values()), len(K.FGVC))")
    p = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.split() == ["19", "7", "4", "8", "5"], p.stderr


# ---------------------------------------------------------------------------------------------------- verify.py
def _result(task, best, last=None, seed=42, protocol="paper", params=None, arch="vit_base_patch16_224",
            source="vit_base_patch16_224.orig_in21k", val_selected=None):
    C = K.VTAB[task][1] if task in K.VTAB else K.FGVC[task]
    return {"method": "hta", "method_args": {"rank": 1}, "arch": arch, "pretrained": {"source": source, "sha256": None},
            "dataset": task, "benchmark": K.benchmark_of(task), "protocol": protocol, "seed": seed,
            "acc_best_test": best if protocol == "paper" else None, "acc_last": best - 0.3 if last is None else last,
            "acc_val_last": val_selected, "params_trainable": params or 184_320 + 769 * C,
            "params_trainable_no_head": 184_320, "peak_mem_mb": 1000.0, "train_img_per_s": 500.0}


def _write(root: Path, res: dict) -> None:
    d = root / res["dataset"] / f"seed{res['seed']}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "results.json").write_text(json.dumps(res))


OFFSETS = {"cifar": +2.0, "dtd": -0.5, "svhn": +0.04}  # OUT at tolerance 1, ok, rounding


@pytest.fixture
def hta_sweep(tmp_path):
    paper = tables.find("HTA", "Table 1", "vit_b16_in21k", "HTA").values
    root = tmp_path / "hta_vtab"
    for t in K.VTAB_TASKS:
        _write(root, _result(t, paper[t] + OFFSETS.get(t, 0.0)))
    return root, paper


def test_report_differences_flags_and_both_means(hta_sweep):
    root, paper = hta_sweep
    runs, problems = verify.load_runs(root)
    assert len(runs) == 19 and not problems
    refs = [tables.find("HTA", "Table 1", "vit_b16_in21k", "HTA")]
    rep = verify.build_report(verify.collect(runs), refs, list(K.VTAB_TASKS), tolerance=1.0)
    rows = {r.name: r for r in rep.rows}
    assert rows["cifar"].diff == pytest.approx(2.0) and rows["cifar"].flag == "OUT"
    assert rows["dtd"].diff == pytest.approx(-0.5) and rows["dtd"].flag == "ok"
    assert rows["svhn"].flag == "rounding" and rows["caltech101"].flag == "rounding"
    assert rows["cifar"].clean == pytest.approx(paper["cifar"] + 2.0 - 0.3)  # acc_last
    assert [r.name for r in rep.out_of_tolerance] == ["cifar"] and not rep.missing
    shift = sum(OFFSETS.values())
    per_task = {t: paper[t] for t in K.VTAB}
    assert rows["mean_19"].ours == pytest.approx(K.mean_19(per_task) + shift / 19)
    assert rows["mean_19"].paper == 74.7 and rows["mean_19"].paper_source == "HTA Table 1"
    # HTA prints no mean of group means: it is computed from the paper's own per-task values and labelled so
    assert rows["mean_groups"].paper == pytest.approx((576.7 / 7 + 344.0 / 4 + 498.3 / 8) / 3)
    assert rows["mean_groups"].paper_source == "HTA Table 1 (computed)"
    natural_shift = (2.0 - 0.5 + 0.04) / 7
    assert rows["mean_natural"].ours == pytest.approx(K.group_means(per_task)["mean_natural"] + natural_shift)
    assert rows["mean_groups"].ours == pytest.approx(K.mean_groups(per_task) + natural_shift / 3)
    assert rows["mean_natural"].n == 7 and rows["mean_19"].n_total == 19
    # parameters: mean of 184,320 + 769·C = 222,365 -> "0.22" with the head
    assert rep.params["ours_m"] * 1e6 == pytest.approx(184_320 + 769 * 940 / 19)
    assert "matches the printed count with the head" in rep.params["verdict"]
    assert not rep.strict_ok()


def test_cli_text_markdown_and_strict(hta_sweep, tmp_path, capsys):
    root, _ = hta_sweep
    md = tmp_path / "out.md"
    assert verify.main([str(root), "--markdown", str(md)]) == 0  # config inferred from the folder name
    text = capsys.readouterr().out
    for needle in ("test-selected (paper protocol)", "clean (last epoch)", "mean_19 = plain mean of the 19 tasks",
                   "mean_groups = mean of the 3 group means", "Backbone: vit_b16_in21k", "76.89",
                   "Out of tolerance (|Δ| > 1 pt, test-selected vs paper): cifar."):
        assert needle in text, needle
    assert "| cifar | 1 |" in md.read_text() and "**OUT**" in md.read_text()
    assert verify.main([str(root), "--strict"]) == 1
    assert verify.main([str(root), "--strict", "--tolerance", "2.5"]) == 0
    (root / "kitti" / "seed42" / "results.json").unlink()
    assert verify.main([str(root), "--strict", "--tolerance", "2.5"]) == 1  # a missing task fails --strict
    assert "Missing results (1): kitti" in capsys.readouterr().out
    assert verify.main([str(root), "--strict", "--tolerance", "2.5", "--tasks", "cifar,dtd"]) == 0


def test_missing_run_folder_is_one_error_line_exit_2(hta_sweep, tmp_path, capsys):
    """A mistyped sweep folder is bad input (it printed a table of "—" and exited 0); an existing folder with tasks
    missing keeps its table, with --strict deciding the exit status."""
    root, _ = hta_sweep
    typo = tmp_path / "hta_vtb"
    for argv in ([str(typo)], [str(typo), "--config", str(ROOT / "reproduce/configs/hta_vtab.yaml"), "--strict"]):
        assert verify.main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1, captured
        assert captured.err.startswith(f"error: {typo}: no such run folder; pass the sweep's folder")
    (root / "kitti" / "seed42" / "results.json").unlink()
    assert verify.main([str(root)]) == 0 and "Missing results (1): kitti" in capsys.readouterr().out
    empty = tmp_path / "empty" / "hta_vtab"
    empty.mkdir(parents=True)
    assert verify.main([str(empty)]) == 0 and verify.main([str(empty), "--strict"]) == 1


def test_unwritable_markdown_is_one_error_line_and_writes_nothing(hta_sweep, tmp_path, capsys, monkeypatch):
    root, _ = hta_sweep
    for md, why in ((tmp_path / "no" / "dir" / "t.md", "does not exist"), (tmp_path, "is a folder")):
        assert verify.main([str(root), "--markdown", str(md)]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1, captured  # checked before the table
        assert captured.err.startswith(f"error: --markdown {md}: ") and why in captured.err
    assert not (tmp_path / "no").exists()
    md = tmp_path / "report.md"  # a write that fails after the check: one line, exit 2, no partial or temp file
    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", full_disk)  # util.files renames the finished temporary file with os.replace
        assert verify.main([str(root), "--markdown", str(md)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --markdown {md}: cannot write (No space left on device); pass a path in a writable folder\n"
    assert sorted(tmp_path.iterdir()) == [root]
    assert verify.main([str(root), "--markdown", str(md)]) == 0 and md.read_text().startswith("## hta_vtab")


def test_seeds_are_averaged_and_clean_runs_get_their_own_column(tmp_path):
    root = tmp_path / "snell_fgvc"
    for seed, acc in ((0, 89.0), (1, 90.0), (2, 91.0)):
        _write(root, _result("cub", acc, seed=seed))
    _write(root / "clean", _result("cub", 0.0, seed=7, protocol="clean", val_selected=88.0))
    refs = [tables.find("SNELL", "Table 1", "vit_b16_in21k", "SNELL-32")]
    rep = verify.build_report(verify.collect(verify.load_runs(root)[0]), refs, list(K.FGVC_TASKS), tolerance=1.0)
    cub = rep.rows[0]
    assert (cub.n, cub.ours, cub.ours_std) == (3, pytest.approx(90.0), pytest.approx(1.0))  # n: the 3 seeds
    assert cub.val_last == 88.0 and rep.has_val_last
    assert cub.paper == tables.find("SNELL", "Table 1", "vit_b16_in21k", "SNELL-32").values["cub"]
    assert rep.missing == ["nabirds", "oxford_flowers", "stanford_dogs", "stanford_cars"]
    assert [r.name for r in rep.rows[5:]] == ["mean_fgvc"] and rep.rows[5].ours is None
    text = verify.render_text(rep)
    assert "90.00 ± 1.00" in text and "val top-1, last epoch (train800; selection score)" in text


def test_partial_reference_rows_and_backbones(tmp_path, capsys):
    """SNELL-32 VTAB: per-task only flowers (Table A7), groups from Table 1, mean_19 from Table 5(b)."""
    root = tmp_path / "snell_vtab"
    for t in K.VTAB_TASKS:
        _write(root, _result(t, 70.0, seed=0))
    assert verify.main([str(root)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line and line.split()[0] in K.VTAB}
    assert "SNELL Table A7" in lines["oxford_flowers102"] and "—" in lines["cifar"]
    assert "SNELL Table 5(b)" in next(line for line in out.splitlines() if line.startswith("mean_19"))
    assert "SNELL Table 1" in next(line for line in out.splitlines() if line.startswith("mean_groups"))
    # mixed backbones in one sweep are refused
    _write(tmp_path / "mixed", _result("cifar", 70.0))
    _write(tmp_path / "mixed", _result("dtd", 70.0, source="vit_base_patch16_224.augreg_in21k"))
    assert verify.main([str(tmp_path / "mixed"), "--config", str(ROOT / "reproduce/configs/hta_vtab.yaml")]) == 2


@pytest.mark.parametrize("arch,source,expected", [
    ("vit_base_patch16_224", "vit_base_patch16_224.orig_in21k", "vit_b16_in21k"),
    ("vit_base_patch16_224", "/w/ViT-B_16.npz", "vit_b16_in21k"),
    ("vit_base_patch16_224", "vit_base_patch16_224.augreg_in21k", "vit_b16_augreg_in21k"),
    ("vit_large_patch16_224", "vit_large_patch16_224.orig_in21k", "vit_l16_in21k"),
    ("vit_tiny_patch16_224", "none", None),
    ("vit_base_patch16_224", None, None),
    ("vit_base_patch16_224", "vit_base_patch16_224.augreg2_in21k_ft_in1k", None),
    ("vit_base_patch16_224", "/w/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz",
     "vit_b16_augreg_in21k"),
])
def test_backbone_id(arch, source, expected):
    assert verify.backbone_id(arch, source) == expected


def test_runs_of_another_method_are_named_per_task_and_fail_strict(hta_sweep, capsys):
    # LoRA runs dropped into an HTA sweep folder are not HTA's numbers: a warning names each such task, and
    # --strict fails even when every row is within tolerance
    root, paper = hta_sweep
    for t in K.VTAB_TASKS:  # every row within tolerance, so only the method check can fail --strict
        _write(root, _result(t, paper[t]))
    lora = {**_result("dtd", paper["dtd"], seed=7), "method": "lora", "method_args": {"rank": 8}}
    _write(root, lora)
    assert verify.main([str(root)]) == 0
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if "runs of method" in line]
    assert len(warnings) == 1 and "dtd: runs of method lora" in warnings[0] and "trains hta" in warnings[0]
    assert verify.main([str(root), "--strict"]) == 1
    assert "1 task(s) with runs of another method" in capsys.readouterr().err
    (root / "dtd" / "seed7" / "results.json").unlink()
    assert verify.main([str(root), "--strict"]) == 0


# ------------------------------------------------------------------------------------- --json, --csv, --plot, --help
@pytest.fixture
def built(monkeypatch):
    """The reports main() builds (each built once), to compare its files and its plot with."""
    reports, real = [], verify.build_report
    monkeypatch.setattr(verify, "build_report", lambda *a, **k: reports.append(real(*a, **k)) or reports[-1])
    return reports


def _row_line(text: str, label: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(label + " ") or line == label)


def test_json_and_csv_hold_every_number_of_the_table(hta_sweep, tmp_path, capsys, built):
    root, paper = hta_sweep
    _write(root, _result("dtd", paper["dtd"] - 1.5, seed=43))  # two seeds: a std
    _write(root / "clean", _result("cifar", 0.0, seed=7, protocol="clean", val_selected=88.0))  # the val column
    js, cs = tmp_path / "t.json", tmp_path / "t.csv"
    assert verify.main([str(root), "--json", str(js), "--csv", str(cs)]) == 0
    out = capsys.readouterr().out
    assert f"json: {js}\ncsv: {cs}\n" in out and not list(tmp_path.glob(".t.*"))  # written, no temporary left
    (rep,) = built
    doc = json.loads(js.read_text())
    (d,) = doc["reports"]
    fields = verify.ROW_FIELDS
    assert d["rows"] == [{f: getattr(r, f) for f in fields} for r in rep.rows]  # unrounded, every row
    assert [r["name"] for r in d["rows"]] == list(K.VTAB_TASKS) + ["mean_natural", "mean_specialized",
                                                                   "mean_structured", "mean_19", "mean_groups"]
    rows = {r["name"]: r for r in d["rows"]}
    assert rows["dtd"]["n"] == 2 and rows["dtd"]["ours_std"] == pytest.approx(1.0 / 2 ** 0.5)  # -0.5 and -1.5
    assert rows["cifar"]["val_last"] == 88.0 and d["has_val_last"] and rows["cifar"]["flag"] == "OUT"
    assert rows["mean_groups"]["paper_source"] == "HTA Table 1 (computed)" and rows["mean_19"]["n_total"] == 19
    assert d["params"] == rep.params and d["perf"] == rep.perf and d["notes"] == rep.notes and d["notes"]
    assert (d["folder"], d["config"], d["methods"], d["tolerance"]) == (str(root), "hta_vtab", ["hta"], 1.0)
    assert d["out_of_tolerance"] == ["cifar"] and d["missing"] == [] and d["strict_ok"] is False
    # the printed table shows the same numbers, rounded
    for r in d["rows"]:
        line = _row_line(out, r["label"])
        cells = [verify._fmt(r["ours"], r["ours_std"]), r["paper_printed"], verify._fmt_diff(r["diff"]), r["flag"],
                 verify._fmt(r["clean"], r["clean_std"]), verify._fmt_diff(r["clean_diff"]), r["paper_source"]]
        if r["val_last"] is not None:
            cells.append(verify._fmt(r["val_last"]))
        assert all(c in line for c in cells), (line, cells)
        assert (f"{r['n']}/{r['n_total']}" if r["n_total"] else str(r["n"])) in line.split()
    for x in d["summary"] + d["notes"]:
        assert x in out
    assert f"ours {d['params']['ours_m']:.4f} M with the head, {d['params']['ours_no_head_m']:.4f} M without" in out
    assert f"peak memory {d['perf']['peak_mem_mb']:.0f} MB, training {d['perf']['img_per_s']:.1f} img/s" in out
    # the CSV: the same values, unrounded, plus header / summary / note records
    with open(cs, newline="", encoding="utf-8") as f:
        recs = list(csv.DictReader(f))
    assert tuple(recs[0]) == verify.CSV_COLUMNS
    table = [r for r in recs if r["kind"] in ("task", "aggregate")]
    assert [r["name"] for r in table] == [r.name for r in rep.rows]
    for rec, row in zip(table, rep.rows):
        for f in fields:
            want = getattr(row, f)
            got = rec[f]
            if want is None:
                assert got == "", (row.name, f)
            elif isinstance(want, (int, float)):
                assert float(got) == want, (row.name, f)
            else:
                assert got == want, (row.name, f)
        assert (rec["folder"], rec["config"]) == (str(root), "hta_vtab")
    summary = {r["name"]: r for r in recs if r["kind"] == "summary"}
    assert float(summary["params_ours_m"]["value"]) == rep.params["ours_m"]
    assert float(summary["params_ours_no_head_m"]["value"]) == rep.params["ours_no_head_m"]
    assert float(summary["params_printed_m"]["value"]) == 0.22 and summary["params_printed_m"]["text"] == "0.22"
    assert summary["params_verdict"]["text"] == rep.params["verdict"]
    assert float(summary["peak_mem_mb"]["value"]) == rep.perf["peak_mem_mb"]
    assert float(summary["img_per_s"]["value"]) == rep.perf["img_per_s"]
    assert summary["out_of_tolerance"]["text"] == "cifar" and summary["missing"]["text"] == ""
    assert [r["text"] for r in recs if r["kind"] == "note"] == rep.notes
    header = {r["name"]: r for r in recs if r["kind"] == "header"}
    assert float(header["tolerance"]["value"]) == 1.0 and header["backbone"]["text"] == "vit_b16_in21k"


def _arc_sweep(tmp_path: Path, tasks=K.VTAB_TASKS) -> Path:
    paper = tables.find("HTA", "Table 1", "vit_b16_in21k", "ARC").values
    root = tmp_path / "arc_vtab"
    for t in tasks:
        _write(root, {**_result(t, paper[t] - 0.7), "method": "arc", "params_trainable": 170_000 + 769 * 47,
                      "params_trainable_no_head": 170_000})
    return root


def test_plot_png_and_its_values_are_the_tables(hta_sweep, tmp_path, capsys, built):
    import matplotlib  # noqa: F401  (a requirement: --plot draws with it)

    hta, _ = hta_sweep
    arc = _arc_sweep(tmp_path)
    png, js = tmp_path / "cmp.png", tmp_path / "cmp.json"
    assert verify.main([str(hta), str(arc), "--plot", str(png), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert out.index("hta_vtab: 19 run(s)") < out.index("arc_vtab: 19 run(s)") and f"plot: {png}\n" in out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) > 30_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 800 and height >= 3 * 400  # two per-task panels and the accuracy-vs-parameters panel
    hta_rep, arc_rep = built
    drawn = verify.plot(built, tmp_path / "again.png")  # what plot() draws is plot_data() of the same reports
    assert drawn == verify.plot_data(built)
    reports = json.loads(js.read_text())["reports"]
    for panel, rep, d in zip(drawn["panels"], built, reports):
        assert panel["folder"] == rep.folder and panel["tolerance"] == 1.0
        assert [(p["name"], p["diff"], p["clean_diff"]) for p in panel["points"]] == \
            [(r.name, r.diff, r.clean_diff) for r in rep.rows] == \
            [(r["name"], r["diff"], r["clean_diff"]) for r in d["rows"]]  # table order, the table's differences
        xs = [p["x"] for p in panel["points"]]
        assert xs[:19] == list(range(19)) and xs[19] == 20  # the means after a gap
        assert [(g["key"], g["x0"], g["x1"]) for g in panel["groups"]] == \
            [("mean_natural", 0, 6), ("mean_specialized", 7, 10), ("mean_structured", 11, 18)]
        rows = {r.name: r for r in rep.rows}
        assert all(g["diff"] == rows[g["key"]].diff for g in panel["groups"])
    (s,) = drawn["scatter"]
    assert s["key"] == "mean_19" and not s["not_plotted"]
    assert [(p["label"], p["params_m"], p["acc"]) for p in s["ours"]] == \
        [(", ".join(rep.methods), rep.params["ours_m"], rep.rows[K.VTAB_TASKS.__len__() + 3].ours)
         for rep in (hta_rep, arc_rep)]
    assert [p["label"] for p in s["ours"]] == ["hta", "arc"]
    assert [(p["params_m"], p["acc"], p["computed"]) for p in s["paper"]] == [
        (0.22, 74.7, False), (tables.find("HTA", "Table 1", "vit_b16_in21k", "ARC").values["params_m"],
                              tables.find("HTA", "Table 1", "vit_b16_in21k", "ARC").values["mean_19"], False)]
    assert s["paper"][0]["label"] == "HTA (HTA Table 1)" and s["paper"][1]["label"] == "ARC (HTA Table 1)"
    for p, d in zip(s["ours"], reports):
        assert p["acc"] == next(r["ours"] for r in d["rows"] if r["name"] == "mean_19")
        assert p["params_m"] == d["params"]["ours_m"]


def test_plot_without_a_complete_mean_says_what_is_not_plotted(hta_sweep, tmp_path, built, capsys):
    hta, _ = hta_sweep
    arc = _arc_sweep(tmp_path, tasks=("cifar", "dtd"))
    png = tmp_path / "p.png"
    assert verify.main([str(hta), str(arc), "--plot", str(png)]) == 0 and png.stat().st_size > 20_000
    (s,) = verify.plot_data(built)["scatter"]
    assert [p["label"] for p in s["ours"]] == ["hta"]
    assert s["not_plotted"] == [{"folder": str(arc), "label": "arc", "reason": "mean_19 needs all 19 tasks, 2 have "
                                 "results"}]
    assert len(s["paper"]) == 2  # the papers' points are drawn all the same
    assert verify.plot_data(built[:1])["scatter"] == []  # one folder: only its per-task panel


def test_bad_output_paths_are_one_error_line_before_the_table(hta_sweep, tmp_path, capsys, monkeypatch):
    root, _ = hta_sweep
    cases = [(["--plot", str(tmp_path / "no" / "p.png")], "--plot", "does not exist; create it"),
             (["--plot", str(tmp_path / "p.svg")], "--plot", "not a .png file name; pass a name such as report.png"),
             (["--json", str(tmp_path)], "--json", "is a folder; pass a file name such as report.json"),
             (["--csv", str(tmp_path / "no" / "t.csv")], "--csv", "does not exist")]
    for extra, flag, why in cases:
        assert verify.main([str(root), *extra]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1, captured
        assert captured.err.startswith(f"error: {flag} {extra[1]}: ") and why in captured.err, captured.err
    monkeypatch.setattr(verify, "_have_matplotlib", lambda: False)
    assert verify.main([str(root), "--plot", str(tmp_path / "p.png")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ("error: --plot: matplotlib is not installed; pip install "
                                                   "matplotlib (requirements.txt), or leave out --plot\n")
    assert sorted(tmp_path.iterdir()) == [root]  # nothing written


def test_several_folders_errors_and_strict(hta_sweep, tmp_path, capsys):
    hta, paper = hta_sweep
    arc = _arc_sweep(tmp_path)
    typo = tmp_path / "arc_vtb"
    assert verify.main([str(hta), str(typo)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"error: {typo}: no such run folder; pass the sweep's")
    assert verify.main([str(hta), str(hta)]) == 2
    assert capsys.readouterr().err == f"error: {hta}: given twice; pass each sweep folder once\n"
    assert verify.main([str(hta), str(arc), "--strict"]) == 1  # cifar is OUT in the HTA sweep
    assert capsys.readouterr().err == ("strict: 1 row(s) out of tolerance, 0 task(s) missing, 0 task(s) with runs "
                                       "of another method (hta_vtab)\n")
    assert verify.main([str(hta), str(arc), "--strict", "--tolerance", "2.5"]) == 0
    md = tmp_path / "both.md"
    assert verify.main([str(hta), str(arc), "--markdown", str(md)]) == 0
    assert md.read_text().count("## hta_vtab") == 1 and md.read_text().count("## arc_vtab") == 1


def test_help_prints_the_description_once(capsys):
    with pytest.raises(SystemExit) as e:
        verify.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for part in ("Compare a sweep's ``results.json`` files", "What is printed, per task then per aggregate",
                 "--tolerance 0.5 --markdown snell_fgvc.md --strict", "Several seeds of one task are averaged"):
        assert out.count(part) == 1, part
    assert "--json OUT.json" in out and "--csv OUT.csv" in out and "--plot OUT.png" in out


def test_verify_does_not_import_matplotlib():
    import subprocess
    import sys

    code = ("import sys; sys.modules['matplotlib'] = None; from reproduce import verify; "
            "print(verify._have_matplotlib())")  # importable, and --plot is refused cleanly, without matplotlib
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "False", p.stderr
    code = "import sys; from reproduce import verify; print('matplotlib' in sys.modules)"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "False", p.stderr


# ------------------------------------------------------------------------------------------ the clean-column notes
def test_every_selection_kind_has_its_clean_note():
    from reproduce import taskcfg

    assert set(taskcfg.SELECTIONS) == set(verify.CLEAN_NOTES)


def test_hta_fgvc_note_does_not_claim_nothing_was_test_selected(tmp_path, capsys):
    """hta_fgvc.yaml takes ARC's per-dataset values, which ARC selected on the test set: its clean column is not
    free of test-set selection, and the note says so (``selection: borrowed``)."""
    from reproduce import taskcfg

    cfg = ROOT / "reproduce/configs/hta_fgvc.yaml"
    assert taskcfg.load(cfg)["selection"] == "borrowed"
    root = tmp_path / "hta_fgvc"
    for t in K.FGVC_TASKS:
        _write(root, _result(t, 85.0))
    assert verify.main([str(root)]) == 0
    out = capsys.readouterr().out
    note = verify.CLEAN_NOTES["borrowed"]
    assert note in out and "nothing was selected on the test set" not in out
    assert "another method's" in note and "selected on the test set" in note and "not clean" in note
    # project defaults (hta_vtab: nothing released, nothing tuned) keep their note
    assert "nothing was selected on the test set" in verify.clean_note("default", "", ["cifar"])


@pytest.mark.parametrize("arch,source,want", [
    ("vit_base_patch16_224", "vit_base_patch16_224.orig_in21k", "vit_b16_in21k"),
    ("vit_base_patch16_224", "/w/ViT-B_16.npz", "vit_b16_in21k"),
    ("vit_base_patch16_224", "vit_base_patch16_224.augreg_in21k", "vit_b16_augreg_in21k"),
    ("vit_base_patch16_224", "vit_base_patch16_224.mae", "vit_b16_mae"),
    ("vit_base_patch16_224", "/w/mae_pretrain_vit_base.pth", "vit_b16_mae"),
    ("vit_base_patch16_224", "/w/linear-vit-b-300ep.pth.tar", "vit_b16_mocov3"),
    ("vit_base_patch16_224", "/w/vit-b-300ep.pth.tar", "vit_b16_mocov3"),
    ("vit_large_patch16_224", "vit_large_patch16_224.orig_in21k", "vit_l16_in21k"),
    ("vit_large_patch16_224", "/w/mae_pretrain_vit_base.pth", None),  # a ViT-B file cannot be a ViT-L backbone
    ("vit_base_patch16_224", "vit_base_patch16_224.augreg_in21k_ft_in1k", None),
    ("vit_micro_patch8", "none", None),
])
def test_backbone_ids_of_the_papers_weights(arch, source, want):
    # the id that picks a config's reference rows: SNELL Table 2's self-supervised ViT-B/16s included
    assert verify.backbone_id(arch, source) == want
