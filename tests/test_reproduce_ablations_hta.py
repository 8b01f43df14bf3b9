"""HTA's ablation tables as one command each (docs/methods/hta.md §9): reproduce/householder_ablation_placement.sh
(Table 5 / App. Table 6) and reproduce/householder_ablation_rank.sh (Fig. 2 / App. Table 7), one sweep config per
row through reproduce/table.sh.

The configs' methods counted on the meta device (the exact counts of docs/methods/hta.md §4 and
docs/methods/baselines.md §4-5 against the printed params_m), the configs loaded, validated, documented and tied to
their paper rows in the table's order, and a CPU smoke run of each script (TASKS=cifar, one epoch, the 2-block micro
ViT on a generated tree; both scripts at once) printing every row's verification table with the paper's numbers."""
from __future__ import annotations

import csv
import os
import re
import subprocess
from pathlib import Path
from statistics import fmean

import pytest
import torch

import models
from data.tasks import num_classes
from reproduce import tables, taskcfg, tasks as K, verify

from test_reproduce_smoke import finished_run, make_vtab_tree

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "reproduce" / "configs"
ARCH, WEIGHTS = "vit_base_patch16_224", "vit_base_patch16_224.orig_in21k"
PLACEMENT_CSV = "hta_apptable6_vtab_placement_ablation.csv"
RANK_CSV = "hta_apptable7_vtab_rank_ablation.csv"

# config -> (paper table, method as in the CSV, trainable parameters without the head on ViT-B/16)
PLACEMENT = {
    "hta_ablation_placement_lora_qv": ("App. Table 6", "LoRA (Wq+Wv)", 294_912),
    "hta_ablation_placement_hta_qv": ("App. Table 6", "HTA (Wq+Wv)", 92_160),
    "hta_ablation_placement_hta_qv_fc": ("App. Table 6", "HTA (Wq+Wv+WFC1+WFC2)", 294_912),
    "hta_ablation_placement_adapter_ffn": ("App. Table 6", "Adapter (WFC1+WFC2)", 156_768),
    "hta_ablation_placement_hta_ffn_adapter": ("App. Table 6", "HTA (WFC1+WFC2)", 46_080),
}
RANK = {f"hta_ablation_rank_r{r}": ("App. Table 7", f"HTA (rank {r})", n)
        for r, n in ((0, 110_592), (1, 184_320), (2, 258_048), (4, 405_504))}
ROWS = {**PLACEMENT, **RANK}
SCRIPTS = {"householder_ablation_placement.sh": (list(PLACEMENT), PLACEMENT_CSV),
           "householder_ablation_rank.sh": (list(RANK), RANK_CSV)}
MEAN_HEAD = 769 * fmean(num_classes(t) for t in K.VTAB_TASKS)  # (D + 1)·C averaged over the 19 tasks, 38,045.3


def _spec(name: str) -> dict:
    return taskcfg.load(CONFIGS / f"{name}.yaml")


def _meta_model(cfg: dict, task: str = "cifar"):
    with torch.device("meta"):
        return models.create_model(ARCH, cfg["method"], num_classes=num_classes(task), **cfg["method_args"])


def _script_rows(script: str) -> list[str]:
    """The script's ROWS, read from its ROWS= / ROWS+= lines (config names, no per-row arch or weights)."""
    text = (ROOT / "reproduce" / script).read_text()
    return " ".join(re.findall(r'^ROWS\+?="([^"]*)"$', text, re.MULTILINE)).split()


# ------------------------------------------------------------------------------------------------ counts (meta)
def test_placement_counts_exact_and_against_the_printed_params():
    """docs/methods/hta.md §4 and §9: 294,912 / 92,160 / 294,912 / 156,768 / 46,080 without the head; App. Table 6
    prints them without the head, and all but HTA (Wq+Wv+WFC1+WFC2) (0.29 exactly, printed 0.28) match."""
    for name, (table, method, exact) in PLACEMENT.items():
        cfg = taskcfg.resolve(_spec(name), "cifar")
        model = _meta_model(cfg)
        assert models.count_parameters(model, head=False) == exact, name
        printed = tables.find("HTA", table, "vit_b16_in21k", method).printed["params_m"]
        verdict = verify._params_verdict({"ours_m": (exact + MEAN_HEAD) / 1e6, "ours_no_head_m": exact / 1e6,
                                          "printed_m": float(printed), "printed": printed})
        if name == "hta_ablation_placement_hta_qv_fc":  # the known inconsistency (paper_tables/README.md)
            assert (printed, f"{exact / 1e6:.2f}", verdict) == ("0.28", "0.29", "DIFFERS from the printed count")
        else:
            assert verdict == "matches the printed count without the head", (name, verdict)
    by = {n: taskcfg.resolve(_spec(n), "cifar") for n in PLACEMENT}  # what each row is in our methods
    assert by["hta_ablation_placement_hta_qv"]["method_args"]["targets"] == ["q", "v"]
    assert by["hta_ablation_placement_hta_qv_fc"]["method_args"]["targets"] == ["q", "v", "fc1", "fc2"]
    assert by["hta_ablation_placement_hta_ffn_adapter"]["method_args"]["placement"] == "ffn_adapter"
    assert [by[n]["method"] for n in PLACEMENT] == ["lora_qv", "hta", "hta", "adapter", "hta"]
    assert {by[n]["method_args"]["rank"] for n in PLACEMENT if by[n]["method"] == "hta"} == {1}


def test_rank_counts_exact_and_against_the_printed_params():
    """App. Table 7 prints the counts with the mean VTAB head: 0.15 / 0.22 / 0.30 / 0.44 (docs/methods/hta.md §4)."""
    for name, (table, method, exact) in RANK.items():
        spec = _spec(name)
        cfg = taskcfg.resolve(spec, "cifar")
        assert cfg["method_args"]["rank"] == int(name[-1]) and "targets" not in cfg["method_args"]  # HTA-D3
        model = _meta_model(cfg)
        assert models.count_parameters(model, head=False) == exact, name
        assert models.count_parameters(model) == exact + 769 * 100  # cifar's head, (D + 1)·C
        printed = tables.find("HTA", table, "vit_b16_in21k", method).printed["params_m"]
        verdict = verify._params_verdict({"ours_m": (exact + MEAN_HEAD) / 1e6, "ours_no_head_m": exact / 1e6,
                                          "printed_m": float(printed), "printed": printed})
        assert verdict == "matches the printed count with the head", (name, verdict)


def test_rank_1_row_is_the_table_1_recipe_and_row():
    """The rank-1 row of App. Table 7 is Table 1's HTA row: same printed values, and the config resolves to
    hta_vtab.yaml's values for every task (so finished householder_vtab.sh runs are that row)."""
    r1, vtab = _spec("hta_ablation_rank_r1"), _spec("hta_vtab")
    for task in K.VTAB_TASKS:
        assert taskcfg.resolve(r1, task) == taskcfg.resolve(vtab, task), task
    assert tables.find("HTA", "App. Table 7", "vit_b16_in21k", "HTA (rank 1)").printed == \
        tables.find("HTA", "Table 1", "vit_b16_in21k", "HTA").printed


# ------------------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("name", list(ROWS))
def test_config_loads_validates_is_documented_and_names_its_row(name, capsys):
    path = CONFIGS / f"{name}.yaml"
    spec = taskcfg.load(path)
    assert spec["benchmark"] == "vtab" and spec["selection"] == "default"
    assert tuple(spec["tasks"]) == K.VTAB_TASKS  # all 19, in table order
    assert taskcfg.validate(spec, check_options=True) == []
    assert taskcfg.undocumented(path) == []
    assert taskcfg.main([str(path), "--check"]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: ok (19 tasks)"
    assert all(len(line) <= 120 for line in path.read_text().splitlines())
    for task in spec["tasks"]:  # one recipe for every task: the paper gives none per task
        cfg = taskcfg.resolve(spec, task)
        assert cfg == taskcfg.resolve(spec, "cifar")
        assert cfg["epochs"] == 100 and cfg["warmup_epochs"] == 10 and cfg["batch_size"] in (32, 64)
        models.METHODS[cfg["method"]](**cfg["method_args"])
    table, method, _ = ROWS[name]
    assert spec["reference"] == {"vit_b16_in21k": [{"paper": "HTA", "table": table, "method": method}]}
    row = tables.find("HTA", table, "vit_b16_in21k", method)
    # what verify.py compares: every task, the printed group means and mean_19, the printed count
    assert set(row.printed) == set(K.VTAB_TASKS) | {"mean_natural", "mean_specialized", "mean_structured", "mean_19",
                                                    "params_m"}
    rep = verify.build_report({}, [row], list(K.VTAB_TASKS))
    assert all(r.paper is not None for r in rep.rows)
    assert {r.name: r.paper_source for r in rep.rows}["mean_groups"] == f"HTA {table} (computed)"


def test_baseline_rows_take_the_baselines_recipe():
    """docs/methods/baselines.md §4-5: LoRA r 8 on q, v and NOAH's FFN adapter (dim 8), lr 5e-3, wd 1e-4, batch 64;
    the HTA rows keep hta_vtab.yaml's defaults (docs/methods/hta.md §5.2)."""
    lora = taskcfg.resolve(_spec("hta_ablation_placement_lora_qv"), "cifar")
    adapter = taskcfg.resolve(_spec("hta_ablation_placement_adapter_ffn"), "cifar")
    assert lora["method_args"] == {"targets": ["q", "v"], "rank": 8, "dropout": 0.0}
    assert adapter["method_args"] == {"dim": 8, "positions": ["ffn"], "init": "xavier", "dropout": 0.0}
    vtab = taskcfg.resolve(_spec("hta_vtab"), "cifar")
    for cfg in (lora, adapter):
        assert (cfg["lr"], cfg["weight_decay"], cfg["batch_size"], cfg["epochs"]) == (5e-3, 1e-4, 64, 100)
        rest = {k: v for k, v in vtab.items() if k not in ("method", "method_args", "lr", "weight_decay", "batch_size")}
        assert {k: cfg[k] for k in rest} == rest and set(cfg) == set(vtab)
    for name in PLACEMENT:
        cfg = taskcfg.resolve(_spec(name), "cifar")
        if cfg["method"] == "hta":
            assert {k: v for k, v in cfg.items() if k != "method_args"} == \
                {k: v for k, v in vtab.items() if k != "method_args"}
            assert cfg["method_args"]["dropout"] == vtab["method_args"]["dropout"]


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_script_lists_its_rows_in_the_tables_order(script):
    path = ROOT / "reproduce" / script
    text = path.read_text()
    assert os.access(path, os.X_OK)
    assert all(len(line) <= 120 for line in text.splitlines())
    assert f"DEFAULT_ARCH={ARCH}\n" in text and f"DEFAULT_WEIGHTS={WEIGHTS}\n" in text and "\nDESCRIPTION=" in text
    assert text.rstrip().endswith('source "$(dirname "${BASH_SOURCE[0]}")/table.sh" "$@"')
    names, csv_name = SCRIPTS[script]
    assert _script_rows(script) == names
    with open(ROOT / "reproduce" / "paper_tables" / csv_name, newline="", encoding="utf-8") as f:
        printed_order = list(dict.fromkeys(line["method"] for line in csv.DictReader(f)))
    assert [ROWS[n][1] for n in names] == printed_order


def test_rank_script_dry_run_uses_the_default_backbone_and_each_rows_config(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "TASKS": "cifar", "VTAB_ROOT": str(tmp_path / "nowhere")}
    p = subprocess.run([str(ROOT / "reproduce/householder_ablation_rank.sh"), "--dry-run"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    for name in RANK:
        run = tmp_path / "out" / name / "cifar" / "seed42"
        assert (f"python train.py --config {run}/config.yaml --dataset cifar --data-root {tmp_path}/nowhere --arch "
                f"{ARCH} --pretrained {WEIGHTS} --img-size 224 --precision fp32 --protocol paper --seed 42 "
                f"--out {run}") in lines
        assert (f"python reproduce/verify.py {tmp_path}/out/{name} --config reproduce/configs/{name}.yaml --tasks "
                "cifar --tolerance 1.0") in lines
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------------------------------------- smoke runs
# the rows the smoke runs train (HTA on q, v; HTA as the FFN adapter; rank 0); the other rows get finished
# (synthetic) runs, which a sweep skips as any finished run and still tables (a train.py run costs seconds of imports)
TRAINED = {"hta_ablation_placement_hta_qv", "hta_ablation_placement_hta_ffn_adapter", "hta_ablation_rank_r0"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Both scripts at once (each its own OUT and cache) on one generated tree: TASKS=cifar, 1 epoch, micro ViT."""
    root = tmp_path_factory.mktemp("ablations")
    make_vtab_tree(root / "vtab", ["cifar"])
    for s, (names, _) in SCRIPTS.items():
        for name in set(names) - TRAINED:
            finished_run(root / s / "runs" / name, taskcfg.resolve(_spec(name), "cifar"), seed=42)
    env = {**os.environ, "TASKS": "cifar", "EPOCHS": "1", "ARCH": "vit_micro_patch8", "WEIGHTS": "none",
           "IMG_SIZE": "32", "VTAB_ROOT": str(root / "vtab"), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    procs = {s: subprocess.Popen([str(ROOT / "reproduce" / s)], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True,
                                 env={**env, "OUT": str(root / s / "runs"), "VIT_PEFT_CACHE": str(root / s / "cache")})
             for s in SCRIPTS}
    done = {}
    for s, p in procs.items():
        out, err = p.communicate(timeout=300)
        done[s] = (p.returncode, out, err, root / s / "runs")
    return done


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_smoke_run_prints_every_rows_table_with_the_papers_numbers(script, smoke):
    rc, out, err, runs = smoke[script]
    assert rc == 0, out[-3000:] + err[-3000:]
    names, _ = SCRIPTS[script]
    starts = []
    for name in names:
        table, method, _ = ROWS[name]
        cfg = taskcfg.resolve(_spec(name), "cifar")
        res = verify.load_runs(runs / name)[0]
        assert len(res) == 1 and (res[0]["dataset"], res[0]["method"], res[0]["epochs"]) == ("cifar", cfg["method"], 1)
        assert ("acc_initial" in res[0]) == (name in TRAINED)  # trained here, or a finished run the sweep skipped
        title = f"{name}: 1 run(s) in {runs / name} — method {cfg['method']}"
        assert out.count(title) == 1, name
        starts.append(out.index(title))
        part = out[starts[-1]:]
        part = part[:part.index("Out of tolerance")]
        assert f"paper rows: HTA {table}, {method} (vit_b16_in21k)" in part
        printed = tables.find("HTA", table, "vit_b16_in21k", method).printed
        cifar = next(line for line in part.splitlines() if line.startswith("cifar "))
        assert f" {printed['cifar']} " in cifar and f"HTA {table}" in cifar, (name, cifar)
        mean_19 = next(line for line in part.splitlines() if line.startswith("mean_19 = "))
        assert f" {printed['mean_19']} " in mean_19, (name, mean_19)
        assert f"printed {printed['params_m']} M (HTA {table})" in part
    assert starts == sorted(starts)  # the rows in the table's order
    assert "failed runs" not in err
