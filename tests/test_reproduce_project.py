"""reproduce/project.py: a sweep's projected wall time and the performance targets, from bench.py's JSON."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.variants import parse_variant
from reproduce import project, taskcfg

ROOT = Path(__file__).resolve().parents[1]
HTA_VTAB = taskcfg.load(ROOT / "reproduce" / "configs" / "hta_vtab.yaml")
CFG_ROW = project.config_variant(HTA_VTAB)
VTAB_TEST_IMAGES = 387_904  # the 19 test splits (docs/benchmarks.md §1)


def test_config_variant_names_the_bench_row_of_the_configured_method():
    assert CFG_ROW == "hta:rank=1:dropout=0.1"
    assert parse_variant(CFG_ROW) == ("hta", HTA_VTAB["defaults"]["method_args"])


def test_target_verdicts_compare_each_measurement_with_its_limit():
    rows = {"floor": {"x_floor": 1.0, "x_full": 2.0, "peak_mem_gib": 3.4},
            "hta": {"x_floor": 0.86, "x_full": 1.7, "merged_x_plain": 0.96, "eval_loop_x_plain": 0.95},
            "lora": {"x_floor": 0.84, "x_full": 1.6, "merged_x_plain": 0.99},
            project.LORA_ALL: {"x_floor": 0.5, "x_full": 0.9, "peak_mem_gib": 5.0},
            "snell": {"x_floor": 0.5, "x_full": 0.91, "peak_mem_gib": 5.1}}
    got = {(v["target"], v["row"]): v["met"] for v in project.target_verdicts(rows, "hta", {"total_min": 29.9})}
    assert got == {("training >= 0.85 x floor", "hta"): True, ("training >= 0.85 x floor", "lora"): False,
                   ("merged inference >= 0.97 x plain", "hta"): False,
                   ("merged inference >= 0.97 x plain", "lora"): True,
                   ("evaluation loop >= 0.9 x plain", "hta"): True,
                   ("SNELL training >= 0.9 x full", "snell"): True,
                   ("SNELL peak memory <= LoRA on all linears (GiB)", "snell"): False,
                   ("sweep projected <= 30 min", "hta"): True}


def test_projection_uses_each_tasks_batch_size_and_adds_compile_time():
    # configs/hta_vtab.yaml trains every task at batch 32: each task is projected at the throughput of its own
    # batch size, and under --compile with each task's compile time; a batch size no run measured is refused
    at32 = {"img_per_s": 1000.0, "warmup_extra_s": 45.0, "eval_loop_img_per_s": 8000.0}
    eager = project.projection(HTA_VTAB, {32: at32, 64: {"img_per_s": 2000.0}})
    assert eager["train_img_per_s_by_batch"] == {32: 1000.0, 64: 2000.0}
    assert eager["train_s"] == 19 * 100 * 1000 / 1000.0 and eager["compile_s"] == 0.0  # 19 tasks × 100 epochs
    assert eager["eval_images"] == 100 * VTAB_TEST_IMAGES == 38_790_400  # the test split every epoch
    assert eager["total_min"] == (eager["train_s"] + 38_790_400 / 8000.0) / 60
    assert eager["total_min_19_evals"] == (eager["train_s"] + 19 * VTAB_TEST_IMAGES / 8000.0) / 60
    comp = project.projection(HTA_VTAB, {32: at32}, "reduce-overhead")
    assert comp["compile_s"] == 19 * 2 * 45.0  # 1,000 = 31 × 32 + 8: two batch shapes per task, each compiled
    assert comp["total_min"] - eager["total_min"] == pytest.approx(comp["compile_s"] / 60)
    with pytest.raises(ValueError, match="batch 32, and no bench run measured that batch size"):
        project.projection(HTA_VTAB, {64: {"img_per_s": 2000.0, "eval_loop_img_per_s": 8000.0}})
    with pytest.raises(ValueError, match="no evaluation speed"):
        project.projection(HTA_VTAB, {32: {"img_per_s": 1000.0}})


def _report(batch, rows, compile_mode="none"):
    return {"device": "test-device", "args": {"batch_size": batch, "precision": "bf16", "compile": compile_mode},
            "rows": rows}


def test_cli_projects_from_bench_files_and_refuses_what_is_not_one(tmp_path, capsys):
    r64 = {"floor": {"x_floor": 1.0, "x_full": 2.0}, CFG_ROW: {"img_per_s": 2000.0, "x_floor": 0.9, "x_full": 1.8,
                                                                 "eval_loop_img_per_s": 8000.0}}
    (tmp_path / "b64.json").write_text(json.dumps(_report(64, r64)))
    (tmp_path / "b32.json").write_text(json.dumps(_report(32, {CFG_ROW: {"img_per_s": 1000.0}})))
    out = tmp_path / "project.json"
    assert project.main([str(tmp_path / "b64.json"), str(tmp_path / "b32.json"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1000 img/s at batch 32" in printed and "met    training >= 0.85 x floor" in printed
    saved = json.loads(out.read_text())
    assert saved["projection"]["row"] == CFG_ROW and saved["projection"]["train_s"] == 19 * 100 * 1000 / 1000.0
    # the config's batch size not measured: one line naming the command that would measure it, exit 2
    assert project.main([str(tmp_path / "b64.json")]) == 2
    assert "run bench.py --batch-size 32 on this row too" in capsys.readouterr().err
    (tmp_path / "partial.json").write_text(json.dumps({**_report(64, r64), "partial": True}))
    for bad in ("partial.json", "missing.json"):
        assert project.main([str(tmp_path / bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {tmp_path / bad}") and err.count("\n") == 1
    assert project.main(["--variant-of", str(ROOT / "reproduce/configs/hta_vtab.yaml")]) == 0
    assert capsys.readouterr().out.strip() == CFG_ROW
