"""bench.py on the CPU with a tiny ViT: every row measured side by side, method variants built as named, ratios
consistent, JSON written; and reproduce/bench_gpu.sh wired end to end."""
import gc
import json
import re
import warnings

import pytest
import torch

import bench
from engine.variants import parse_variant, split_variants, variant_name
import models

MICRO = ["--device", "cpu", "--arch", "vit_micro_patch8", "--img-size", "32", "--batch-size", "8",
         "--eval-batch-size", "8", "--precision", "fp32", "--steps", "2", "--warmup", "1"]
ALL_LINEARS = "lora:targets=q,k,v,proj,fc1,fc2"


def test_cpu_bench_reports_every_row_with_ratios(tmp_path):
    out = tmp_path / "bench.json"
    rows_asked = f"hta,hta:impl=lowrank,{ALL_LINEARS},snell:dropout=0:drop_path=0:select=sort,adapter"
    code = bench.main([*MICRO, "--methods", rows_asked, "--eval-loop", "hta", "--eval-loop-images", "20",
                       "--profile", "hta", "--json", str(out)])
    assert code == 0
    rep = json.loads(out.read_text())
    assert "partial" not in rep  # the per-row snapshots are replaced by the full report
    rows = rep["rows"]
    assert list(rows) == ["floor", "full", "hta", "hta:impl=lowrank", ALL_LINEARS,
                          "snell:dropout=0:drop_path=0:select=sort", "adapter"]
    assert rows["floor"]["x_floor"] == 1.0 and rows["full"]["x_full"] == 1.0
    for name, r in rows.items():
        assert r["img_per_s"] > 0 and abs(r["x_floor"] - r["img_per_s"] / rows["floor"]["img_per_s"]) < 1e-9
    assert "merged_img_per_s" in rows["hta"] and "merged_img_per_s" not in rows["adapter"]  # adapter can't merge
    assert rows["hta"]["params_no_head"] == 2 * 4 * (3 + 2) * 64  # 2 blocks × q,k,v,proj × (3 + 2r)·D
    # the variants' arguments reached the models: LoRA on all six linears has the count of that LoRA
    lora_all = models.create_model("vit_micro_patch8", "lora", num_classes=100, img_size=32,
                                   targets=("q", "k", "v", "proj", "fc1", "fc2"))
    assert rows[ALL_LINEARS]["params_no_head"] == models.count_parameters(lora_all, head=False)
    assert rows[ALL_LINEARS]["params_no_head"] > 2 * models.count_parameters(
        models.create_model("vit_micro_patch8", "lora", num_classes=100, img_size=32), head=False)
    assert rep["device"] and rep["torch"] and rep["floor_again_img_per_s"] > 0  # the run's drift, measured
    prof = rows["hta"]["profile"]  # only the row asked for; on the CPU no device time, top ops by host time
    assert [n for n, r in rows.items() if "profile" in r] == ["hta"] and prof["device_ms"] is None
    assert prof["wall_ms"] > 0 and 0 < prof["host_ms"] and len(prof["top"]) == 8
    assert any(t["op"] in ("aten::mm", "aten::addmm") for t in prof["top"])
    # device-independent columns: an adapter method dispatches more ops than the floor; activations are saved
    assert all(r["ops_per_step"] > rows["floor"]["ops_per_step"] for n, r in rows.items() if n != "floor")
    assert all(r["saved_mib"] > r["saved_mib_per_sample"] > 0 for r in rows.values())
    # train.py's evaluation loop, timed for the one row asked for, against plain inference
    assert [n for n, r in rows.items() if "eval_loop_img_per_s" in r] == ["hta"]
    assert rows["hta"]["eval_loop_x_plain"] == rows["hta"]["eval_loop_img_per_s"] / rows["floor"]["eval_img_per_s"]


def test_variants_split_parse_and_name_round_trip():
    text = f"hta:impl=lowrank,{ALL_LINEARS},snell:dropout=0:drop_path=0,full"
    assert split_variants(text) == ["hta:impl=lowrank", ALL_LINEARS, "snell:dropout=0:drop_path=0", "full"]
    assert parse_variant(ALL_LINEARS) == ("lora", {"targets": ("q", "k", "v", "proj", "fc1", "fc2")})
    assert parse_variant("snell:dropout=0:batch_weights=false:select=null") == (
        "snell", {"dropout": 0, "batch_weights": False, "select": None})
    for name in split_variants(text) + ["hta:rank=1:dropout=0.1", "snell:batch_weights=false:select=null"]:
        assert variant_name(*parse_variant(name)) == name


@pytest.mark.parametrize("args,message", [
    (["--methods", "hta,nope"], "unknown method 'nope'"),
    (["--methods", "hta:rnak=2"], "bad arguments for method 'hta'"),
    (["--methods", "lora:rank=0"], "lora: rank must be an integer >= 1, got 0"),
    (["--methods", "hta:rank"], "is not key=value"),
    (["--methods", "hta,lora,hta"], "hta is listed twice"),
    (["--methods", "full"], "full is listed twice"),
    (["--methods", "lora", "--profile", "arc"], "--profile: arc not among the rows"),
    (["--methods", "lora", "--eval-loop", "hta"], "--eval-loop: hta is not among the rows"),
    (["--methods", "hta", "--eval-loop-images", "0"], "--eval-loop-images must be >= 1"),
])
def test_bad_rows_are_refused_before_anything_is_measured(args, message, capsys):
    assert bench.main(["--device", "cpu", "--arch", "vit_micro_patch8", "--img-size", "32", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "  measured" not in err and err.count("\n") == 1, err


def test_gpu_script_runs_end_to_end_on_the_cpu(tmp_path):
    # reproduce/bench_gpu.sh is what a short GPU lease runs; a CPU smoke run with a tiny ViT proves it is wired up:
    # eager rows (with HTA as configured added), its row at the config's batch size, the projection and the
    # targets written, and a compiled part cut by its limit without losing the eager results (the script's exit
    # code is the eager run's).
    import os
    import subprocess
    from pathlib import Path

    from reproduce.project import config_variant
    from reproduce.taskcfg import load

    root = Path(bench.__file__).resolve().parent
    cfg_row = config_variant(load(root / "reproduce" / "configs" / "hta_vtab.yaml"))
    env = {**os.environ, "OUT": str(tmp_path / "out"), "DEVICE": "cpu", "ARCH": "vit_micro_patch8", "IMG_SIZE": "32",
           "BATCH": "8", "EVAL_BATCH": "8", "STEPS": "1", "WARMUP": "1", "METHODS": "hta,snell", "EVAL_LOOP_IMAGES": "16",
           "COMPILED_METHODS": "lora", "COMPILE_LIMIT": "1"}
    proc = subprocess.run(["bash", str(root / "reproduce" / "bench_gpu.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = tmp_path / "out"
    rep = json.loads((out / "eager.json").read_text())
    assert list(rep["rows"]) == ["floor", "full", "hta", "snell", cfg_row]
    assert [n for n, r in rep["rows"].items() if "profile" in r] == ["floor", "snell", cfg_row]  # default list, cut
    assert rep["args"]["eval_loop_images"] == 16 and rep["rows"][cfg_row]["eval_loop_img_per_s"] > 0
    at_cfg = json.loads((out / "eager_cfg_batch.json").read_text())
    assert at_cfg["args"]["batch_size"] == 32 and list(at_cfg["rows"]) == ["floor", "full", cfg_row]
    project = json.loads((out / "eager_project.json").read_text())
    assert project["projection"]["total_min"] > 0 and set(project["projection"]["train_img_per_s_by_batch"]) == {
        "8", "32"}
    assert {v["target"] for v in project["targets"]} >= {"training >= 0.85 x floor", "sweep projected <= 30 min"}
    # cut by COMPILE_LIMIT (124) on any machine where importing torch alone takes a second; 0 if it ever finished
    assert re.search(r"compiled exit (124|0)\b", proc.stdout) and (out / "env.txt").exists()


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on every live object touches deprecated torch aliases
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_saved_bytes_measurement_keeps_nothing_alive():
    """The saved-tensor hooks must not keep a forward's graph: a hook returning the saved tensor itself made every
    saved output hold its own grad_fn (a cycle through C++ that gc never frees), so each bench row's activations
    stayed allocated and every later row's peak memory included them (docs/PERFORMANCE.md, run T0654)."""
    torch.manual_seed(0)
    model = models.create_model("vit_micro_patch8", "snell", num_classes=10, img_size=32).train()
    x = torch.randn(4, 3, 32, 32)
    bench._saved_bytes(lambda: model(x))  # warm-up: lazily created state (e.g. caches) is not a leak
    before = _live_tensors()
    for _ in range(3):
        assert bench._saved_bytes(lambda: model(x)) > x.numel() * 4  # it does measure the activations
    assert _live_tensors() == before
