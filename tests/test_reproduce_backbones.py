"""The Swin-B and ConvNeXt-B tables as scripts (docs/backbones.md): a CPU smoke run of householder_vtab_swin.sh,
arc_vtab_swin.sh, snell_vtab_swin.sh and snell_vtab_convnext.sh on a generated tree, each row's verification table
carrying the paper's numbers."""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

from reproduce import taskcfg
from test_reproduce_smoke import finished_run, make_vtab_tree

ROOT = Path(__file__).resolve().parents[1]
CONFIG_NAME, ROWS = re.compile(r"^CONFIG_NAME=(\S+)$", re.M), re.compile(r'^ROWS="([^"]*)"$', re.M)
SWIN_MICRO, CONVNEXT_MICRO = "swin_micro_patch4_window4", "convnext_micro"


def _printed(csv_name: str, backbone: str) -> dict[str, dict[str, float]]:
    """Printed values per row label and task, from reproduce/paper_tables/."""
    out: dict[str, dict[str, float]] = {}
    with open(ROOT / "reproduce" / "paper_tables" / csv_name) as f:
        for r in csv.DictReader(f):
            if r["backbone"] == backbone:
                out.setdefault(r["method"], {})[r["task"]] = float(r["value"])
    return out


HTA_CSV, SNELL_CSV = "hta_apptable5_vtab_swinb.csv", "snell_table3_vtab_swin_convnext.csv"
# Table 3's rows in its order (ConvNeXt's VPT-Deep is VPT's prompt-pad, docs/backbones.md §4)
TABLE3 = {"full": "Full", "vpt_deep": "VPT-Deep", "adapter8": "Adapter-8", "linear": "Linear", "lora8": "LoRA-8",
          "snell8": "SNELL-8"}
SMOKE = {  # script -> (ARCH, the rows it runs as (config, paper csv, backbone id, row label))
    "householder_vtab_swin.sh": (SWIN_MICRO, [("hta_vtab_swin", HTA_CSV, "swin_b_in21k", "HTA")]),
    "arc_vtab_swin.sh": (SWIN_MICRO, [("arc_vtab_swin", HTA_CSV, "swin_b_in21k", "ARC")]),
    "snell_vtab_swin.sh": (SWIN_MICRO, [(f"snell_swin_{r}", SNELL_CSV, "swin_b_in21k", label)
                                        for r, label in TABLE3.items()]),
    "snell_vtab_convnext.sh": (CONVNEXT_MICRO, [(f"snell_convnext_{r}", SNELL_CSV, "convnext_b_in21k", label)
                                                for r, label in TABLE3.items()]),
}
# one trained row per script (the others' training is tests/test_backbones.py's test_every_supported_pair_trains)
TRAINED = {"hta_vtab_swin", "arc_vtab_swin", "snell_swin_vpt_deep", "snell_convnext_vpt_deep"}


def test_new_table_scripts_smoke_run_with_the_printed_numbers(tmp_path):
    """All four scripts at once on a generated tree, each row ending in its verification table against its printed
    row: one row of each trains one epoch of the micro Swin / ConvNeXt (HTA with the reductions, ARC on the stream,
    VPT-Deep on Swin, the prompt-pad on ConvNeXt), the others are finished (synthetic) runs the sweep skips."""
    make_vtab_tree(tmp_path / "vtab", ["cifar"])
    for script, (_, rows) in SMOKE.items():
        for config, *_ in rows:
            if config not in TRAINED:
                cfg = taskcfg.resolve(taskcfg.load(ROOT / "reproduce" / "configs" / f"{config}.yaml"), "cifar")
                finished_run(tmp_path / "runs" / script / config, cfg, seed=cfg["seed"])
    env = {**os.environ, "TASKS": "cifar", "EPOCHS": "1", "WEIGHTS": "none", "IMG_SIZE": "32",
           "VTAB_ROOT": str(tmp_path / "vtab"), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    procs = {s: subprocess.Popen([str(ROOT / "reproduce" / s)], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True,
                                 env={**env, "ARCH": arch, "OUT": str(tmp_path / "runs" / s),
                                      "VIT_PEFT_CACHE": str(tmp_path / "cache" / s)})
             for s, (arch, _) in SMOKE.items()}
    outputs = {s: p.communicate(timeout=300)[0] for s, p in procs.items()}
    for script, (_, rows) in SMOKE.items():
        out = outputs[script]
        assert procs[script].returncode == 0, out[-3000:]
        text = (ROOT / "reproduce" / script).read_text()
        configs = CONFIG_NAME.findall(text) or [c for line in ROWS.findall(text) for c in line.split()]
        assert configs == [row[0] for row in rows]  # the table's order
        for config, csv_name, backbone, label in rows:
            seed = taskcfg.resolve(taskcfg.load(ROOT / "reproduce" / "configs" / f"{config}.yaml"), "cifar")["seed"]
            assert (tmp_path / "runs" / script / config / "cifar" / f"seed{seed}" / "results.json").is_file()
            table = out[out.index(f"{config}: 1 run(s)"):]
            table = table[:table.index("Out of tolerance")]
            table_name = "App. Table 5" if csv_name.startswith("hta") else "Table 3"
            paper = "HTA" if csv_name.startswith("hta") else "SNELL"
            assert f"paper rows: {paper} {table_name}, {label} ({backbone})" in table, table
            lines = {line.split("(")[0].split("=")[0].strip(): line for line in table.splitlines()}
            printed = _printed(csv_name, backbone)[label]
            for key, group in (("mean Natural", "mean_natural"), ("mean Specialized", "mean_specialized"),
                               ("mean Structured", "mean_structured")):
                assert f" {printed[group]:.1f} " in lines[key], (config, key, lines[key])
            if paper == "HTA":  # per task and the 19-task mean are printed too
                cifar = next(line for line in table.splitlines() if line.startswith("cifar "))
                assert f" {printed['cifar']:.1f} " in cifar and f" {printed['mean_19']:.1f} " in lines["mean_19"]
            else:
                assert f" {printed['mean_groups']:.1f} " in lines["mean_groups"], (config, lines["mean_groups"])
    # eval.py rebuilds the trained Swin runs: HTA (fused qkv, reductions) merged, ARC's stream adapter refused
    hta_run = tmp_path / "runs" / "householder_vtab_swin.sh" / "hta_vtab_swin" / "cifar" / "seed42"
    arc_run = tmp_path / "runs" / "arc_vtab_swin.sh" / "arc_vtab_swin" / "cifar" / "seed42"
    ev = {**env, "VIT_PEFT_CACHE": str(tmp_path / "cache" / "householder_vtab_swin.sh")}
    data = ["--data-root", str(tmp_path / "vtab")]
    ok = subprocess.run([sys.executable, "eval.py", "--run", str(hta_run), "--merge", *data], cwd=ROOT, env=ev,
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "cifar test:" in ok.stdout, ok.stderr[-2000:]
    bad = subprocess.run([sys.executable, "eval.py", "--run", str(arc_run), "--merge", *data], cwd=ROOT, env=ev,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "residual stream" in bad.stderr and "drop --merge" in bad.stderr, bad.stderr


def test_preflight_points_offline_swin_and_convnext_users_to_their_release_files(monkeypatch, tmp_path):
    """Offline with an empty hub cache, a sweep stops before any run; the message names where the weights come from
    for the backbone asked (not Google's ViT .npz)."""
    import huggingface_hub.constants

    from reproduce import preflight

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for weights in ("swin_base_patch4_window7_224.ms_in22k", "convnext_base.fb_in22k"):
        problems, notes = preflight.check_weights(weights)
        assert notes == [] and len(problems) == 1 and weights in problems[0]
        assert "docs/benchmarks.md §5" in problems[0] and "ViT-B_16.npz" not in problems[0]
    problems, _ = preflight.check_weights("vit_base_patch16_224.orig_in21k")
    assert "ViT-B_16.npz" in problems[0]
