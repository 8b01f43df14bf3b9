"""SNELL's remaining ViT tables as one command each (docs/methods/snell.md §12): Table 5(b) (KLoRA-r vs SNELL-r),
Table A11 (LoRA-r vs KLoRA-r on all linears), Table 4 (LoRA-8 and SNELL-8 on ViT-L/16 and ViT-H/14) and Table 5(a)
(sparsifying a dense, a LoRA-8 or a KLoRA-8 update). Checked here, on the CPU: each script's rows and backbones, each
row's sweep config (valid, documented, all 19 tasks, its paper rows present), the trainable counts of the printed
configurations (meta device), that verify.py compares exactly the aggregates these tables print, the ViT-L/H s
search grid, and one smoke run of every script."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

import models
from reproduce import search, tables, taskcfg, tasks as K, verify
from test_reproduce_smoke import finished_run, make_vtab_tree

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "reproduce" / "configs"
VITB = ("vit_base_patch16_224", "vit_base_patch16_224.orig_in21k")
VITL = ("vit_large_patch16_224", "vit_large_patch16_224.orig_in21k")
VITH = ("vit_huge_patch14_224", "vit_huge_patch14_224.orig_in21k")
SCRIPTS = {  # script -> (its rows in the table's order, with their backbone (arch, weights); the default backbone)
    "snell_ablation_rank.sh": ([("snell_ablation_rank_klora8", VITB), ("snell_ablation_rank_klora16", VITB),
                                ("snell_ablation_rank_klora32", VITB), ("snell_ablation_rank_snell8", VITB),
                                ("snell_ablation_rank_snell16", VITB), ("snell_vtab", VITB)], VITB),
    "snell_lora_vs_klora.sh": ([("snell_lora_vs_klora_lora8", VITB), ("snell_ablation_rank_klora8", VITB),
                                ("snell_lora_vs_klora_lora16", VITB), ("snell_ablation_rank_klora16", VITB),
                                ("snell_lora_vs_klora_lora32", VITB), ("snell_ablation_rank_klora32", VITB)], VITB),
    "snell_vtab_large.sh": ([("snell_large_lora8_vitl", VITL), ("snell_large_lora8_vith", VITH),
                             ("snell_large_snell8_vitl", VITL), ("snell_large_snell8_vith", VITH)], VITL),
    "snell_ablation_matrix.sh": ([("snell_ablation_matrix_dense", VITB), ("snell_ablation_matrix_lora8", VITB),
                                  ("snell_ablation_matrix_klora8", VITB)], VITB),
}
BB = {VITB: "vit_b16_in21k", VITL: "vit_l16_in21k", VITH: "vit_h14_in21k"}
# config -> (table file, the paper rows it is compared with: (table, method), first the row of its own table)
REFERENCES = {
    **{f"snell_ablation_rank_klora{r}": ("snell_table5b_vtab_rank.csv", [("Table 5(b)", f"KLoRA-{r} (s=0)"),
                                                                        ("Table A11", f"KLoRA-{r} (all linears)")])
       for r in (8, 16, 32)},
    **{f"snell_ablation_rank_snell{r}": ("snell_table5b_vtab_rank.csv", [("Table 5(b)", f"SNELL-{r}"),
                                                                        ("Table 1", f"SNELL-{r}"),
                                                                        ("Table A7", f"SNELL-{r}")]) for r in (8, 16)},
    **{f"snell_lora_vs_klora_lora{r}": ("snell_tableA11_vtab_lora_vs_klora.csv",
                                        [("Table A11", f"LoRA-{r} (all linears)")]) for r in (8, 16, 32)},
    **{f"snell_large_{m.lower()}8_{b}": ("snell_table4_vtab_large.csv", [("Table 4", f"{m}-8")])
       for m in ("LoRA", "SNELL") for b in ("vitl", "vith")},
    "snell_ablation_matrix_dense": ("snell_table5a_vtab_sparsified_matrix.csv",
                                    [("Table 5(a)", "Full-rank dW + sparsify (s=0.9)")]),
    "snell_ablation_matrix_lora8": ("snell_table5a_vtab_sparsified_matrix.csv",
                                    [("Table 5(a)", "LoRA-8 merged + sparsify (s=0.9)")]),
    "snell_ablation_matrix_klora8": ("snell_table5a_vtab_sparsified_matrix.csv",
                                     [("Table 5(a)", "KLoRA-8 merged + sparsify (s=0.9)")]),
}
NEW = sorted(REFERENCES)  # the configs of these four scripts (snell_vtab is reproduce/snell_vtab.sh's)
BACKBONE = {name: bb for rows, _ in SCRIPTS.values() for name, bb in rows}
VTAB = taskcfg.load(CONFIG_DIR / "snell_vtab.yaml")  # whose per-task values the rows borrow (snell.md §8.2)


def _spec(name: str) -> dict:
    return taskcfg.load(CONFIG_DIR / f"{name}.yaml")


# ------------------------------------------------------------------------------------------- scripts and configs
def _script_vars(script: str) -> list[str]:
    """ROWS, DEFAULT_ARCH, DEFAULT_WEIGHTS and DESCRIPTION as the script sets them (its lines before `source`)."""
    body = "".join(line for line in (ROOT / "reproduce" / script).read_text().splitlines(keepends=True)
                   if not line.startswith("source "))
    p = subprocess.run(["bash", "-c", body + '\nprintf "%s\\n" "$(echo $ROWS)" "$DEFAULT_ARCH" "$DEFAULT_WEIGHTS" '
                        '"$DESCRIPTION"'], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_script_is_a_table_of_its_rows(script):
    rows, default = SCRIPTS[script]
    path = ROOT / "reproduce" / script
    assert os.access(path, os.X_OK) and path.read_text().rstrip().endswith(
        'source "$(dirname "${BASH_SOURCE[0]}")/table.sh" "$@"')
    got, arch, weights, description = _script_vars(script)
    assert (arch, weights) == default and description.startswith("SNELL")
    explicit = script == "snell_vtab_large.sh"  # each of its rows names its backbone, ViT-L ones included
    want = [f"{name}:{bb[0]}:{bb[1]}" if explicit or bb != default else name for name, bb in rows]
    assert got.split() == want
    for name, bb in rows:  # a row's backbone is the first one its config is compared with (search.py's default too)
        assert next(iter(_spec(name)["reference"])) == BB[bb] and search.default_backbone(_spec(name)) == bb
    assert all(len(line) <= 120 for line in path.read_text().splitlines())


@pytest.mark.parametrize("name", NEW)
def test_config_loads_validates_and_is_documented(name, capsys):
    path = CONFIG_DIR / f"{name}.yaml"
    spec = _spec(name)
    assert tuple(spec["tasks"]) == K.VTAB_TASKS  # every task, in table order
    assert taskcfg.validate(spec, check_options=True) == []
    assert taskcfg.undocumented(path) == []
    assert taskcfg.main([str(path), "--check"]) == 0 and capsys.readouterr().out.strip() == f"{path}: ok (19 tasks)"
    # the paper released nothing for these rows: SNELL-32's test-selected per-task values, labelled as borrowed
    assert spec["selection"] == "borrowed"
    table, refs = REFERENCES[name]
    assert list(spec["reference"]) == [BB[BACKBONE[name]]]
    assert [(r["paper"], r["table"], r["method"]) for r in spec["reference"][BB[BACKBONE[name]]]] == \
        [("SNELL", t, m) for t, m in refs]
    lines = (tables.TABLES_DIR / table).read_text().splitlines()
    own = tables.find("SNELL", refs[0][0], BB[BACKBONE[name]], refs[0][1])  # the row of its own table, as in the CSV
    assert any(line.startswith(f"SNELL,{own.table},{own.backbone},{own.method},") for line in lines)
    for t, m in refs[1:]:
        tables.find("SNELL", t, BB[BACKBONE[name]], m)
    for task in spec["tasks"]:
        cfg = taskcfg.resolve(spec, task)
        assert cfg["epochs"] >= 100 and cfg["batch_size"] in (8, 16, 32, 64)
        models.METHODS[cfg["method"]](**cfg["method_args"])  # the registered method's keyword arguments
    assert all(len(line) <= 120 for line in path.read_text().splitlines())


def test_configs_hold_what_the_tables_vary_and_borrow_the_rest():
    """Per task: batch, lr, wd and epochs are snell_vtab.yaml's (SNELL-32's scripts) everywhere but ViT-H (batch 8);
    each row sets only what its table varies: rank, s = 0 (KLoRA), s = 0.9 (Table 5(a)), the delta, LoRA on all
    linears, or SNELL-32's per-task s (SNELL-8/16); ViT-L/H SNELL-8: s from the paper's grid {0, 0.9}."""
    r = taskcfg.resolve
    for name in NEW:
        spec = _spec(name)
        for task in K.VTAB_TASKS:
            cfg, ref = r(spec, task), r(VTAB, task)
            assert (cfg["lr"], cfg["weight_decay"], cfg["epochs"]) == (ref["lr"], ref["weight_decay"], ref["epochs"])
            assert cfg["batch_size"] == (8 if name.endswith("_vith") else ref["batch_size"]), (name, task)
            for key in ("schedule", "warmup_epochs", "wd_scope", "drop_path_rate", "eval_every", "eval_last", "seed",
                        "norm", "grad_clip"):
                assert cfg[key] == ref[key], (name, key)
            args, s_ref = cfg["method_args"], ref["method_args"]["sparsity"]
            if cfg["method"] == "lora":
                assert args == {"rank": args["rank"], "targets": ["q", "k", "v", "proj", "fc1", "fc2"],
                                "shared": False, "dropout": 0.1}
                continue
            assert cfg["method"] == "snell" and args["dropout"] == 0.1
            if "klora" in name and "matrix" not in name:
                assert args["sparsity"] == 0.0
            elif "matrix" in name:
                assert args["sparsity"] == 0.9 and args["delta"] == {"dense": "dense", "lora8": "lora",
                                                                      "klora8": "kernel"}[name.rsplit("_", 1)[1]]
            elif "large" in name:
                assert args["sparsity"] == (0.0 if s_ref == 0 else 0.9)
                assert args["sparsity"] in spec["search"]["full"]["sparsity"]
            else:
                assert args["sparsity"] == s_ref
    for r_ in (8, 16, 32):
        assert r(_spec(f"snell_ablation_rank_klora{r_}"), "dtd")["method_args"]["rank"] == r_
        assert r(_spec(f"snell_lora_vs_klora_lora{r_}"), "dtd")["method_args"]["rank"] == r_
    for name in ("snell_large_snell8_vitl", "snell_large_snell8_vith"):  # the paper's s grid, for search.py
        grids = _spec(name)["search"]
        assert grids["full"] == grids["stage1"] == {"sparsity": [0.0, 0.9]} and grids["stage2"] == {}
        assert [p["sparsity"] for p in search.grid_points(grids["full"])] == [0.0, 0.9]
    assert "search" not in _spec("snell_large_lora8_vitl") and "search" not in _spec("snell_ablation_rank_snell8")


# ----------------------------------------------------------------------------------------- trainable parameters
COUNTS = {  # trainable parameters without the head, on the row's backbone (docs/methods/snell.md §7, §12)
    **{f"snell_ablation_rank_klora{r}": 165_888 * r + 768 for r in (8, 16, 32)},  # factors + cls_token
    **{f"snell_ablation_rank_snell{r}": 165_888 * r + 768 for r in (8, 16)},
    **{f"snell_lora_vs_klora_lora{r}": 165_888 * r for r in (8, 16, 32)},  # r·(n_in + n_out) per linear, no cls
    "snell_ablation_matrix_dense": 84_934_656 + 768,  # every entry of every block linear
    "snell_ablation_matrix_lora8": 1_327_104 + 768, "snell_ablation_matrix_klora8": 1_327_104 + 768,
    "snell_large_lora8_vitl": 3_538_944, "snell_large_snell8_vitl": 3_538_944 + 1024,  # 442,368·r (ViT-L/16)
    "snell_large_lora8_vith": 5_898_240, "snell_large_snell8_vith": 5_898_240 + 1280,  # 737,280·r (ViT-H/14)
    "snell_vtab": 165_888 * 32 + 768,
}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_trainable_counts_of_the_printed_configurations(name):
    spec = _spec(name)
    arch = BACKBONE[name][0]
    for task in ("cifar", "svhn"):  # svhn: s = 0 in every SNELL row that takes s per task
        cfg = taskcfg.resolve(spec, task)
        with torch.device("meta"):
            m = models.create_model(arch, cfg["method"], num_classes=K.VTAB[task][1], **cfg["method_args"])
        assert models.count_parameters(m, head=False) == COUNTS[name], (name, task)
        assert models.count_parameters(m) == COUNTS[name] + (m.embed_dim + 1) * K.VTAB[task][1]


# ------------------------------------------------------------------------------------ verify.py and the tables
def _printed(name: str) -> dict[str, tuple[str, str]]:
    """aggregate or task -> (printed value, "SNELL <table>") as verify.py should take it: the first reference that
    prints it."""
    out: dict[str, tuple[str, str]] = {}
    for table, method in REFERENCES[name][1]:
        row = tables.find("SNELL", table, BB[BACKBONE[name]], method)
        for key, value in row.printed.items():
            out.setdefault(key, (value, f"SNELL {table}"))
    return out


def _write_row(folder: Path, name: str, acc: dict[str, float]) -> None:
    spec = _spec(name)
    arch, weights = BACKBONE[name]
    for task in K.VTAB_TASKS:
        cfg = taskcfg.resolve(spec, task)
        d = folder / task / "seed0"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({
            "method": cfg["method"], "method_args": cfg["method_args"], "arch": arch, "dataset": task,
            "pretrained": {"source": weights}, "benchmark": "vtab", "protocol": "paper", "seed": 0,
            "acc_best_test": acc[task], "acc_last": acc[task] - 0.5, "params_trainable": COUNTS[name] + 1000,
            "params_trainable_no_head": COUNTS[name]}))


@pytest.mark.parametrize("name", ["snell_ablation_rank_klora8", "snell_ablation_rank_snell16",
                                  "snell_lora_vs_klora_lora32", "snell_large_snell8_vitl", "snell_large_lora8_vith",
                                  "snell_ablation_matrix_dense"])
def test_verify_compares_the_aggregates_the_tables_print(name, tmp_path, capsys):
    """Synthetic results of one row (every task at its printed group mean, or Table A7's value where the row has
    per-task values) on the row's backbone: verify.py reads the printed group means, mean_groups and mean_19 of the
    row's paper rows (each from the first reference that prints it), and our means equal them up to rounding."""
    printed = _printed(name)
    groups = {g: float(printed[f"mean_{g}"][0]) for g in K.GROUPS}
    acc = {t: float(printed[t][0]) if t in printed else groups[g] for g, ts in K.GROUPS.items() for t in ts}
    folder = tmp_path / name
    _write_row(folder, name, acc)
    out = tmp_path / "report.json"
    assert verify.main([str(folder), "--config", str(CONFIG_DIR / f"{name}.yaml"), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    rep = json.loads(out.read_text())["reports"][0]
    assert rep["backbone"] == BB[BACKBONE[name]] and rep["missing"] == [] and rep["strict_ok"]
    rows = {r["name"]: r for r in rep["rows"]}
    for key in ("mean_natural", "mean_specialized", "mean_structured", "mean_19", "mean_groups"):
        if key in printed:  # the table prints it: verify.py takes the printed value and its table
            assert (rows[key]["paper_printed"], rows[key]["paper_source"]) == printed[key], key
            assert abs(rows[key]["diff"]) <= 0.05 + 1e-9 and rows[key]["flag"] == "rounding", (key, rows[key])
        else:  # neither printed nor computable from the paper (no per-task values): nothing to compare
            assert rows[key]["paper"] is None and rows[key]["flag"] == "", key
    assert rows["mean_groups"]["ours"] == pytest.approx(K.mean_groups(acc))
    assert rows["mean_19"]["ours"] == pytest.approx(K.mean_19(acc))
    tasks_printed = [t for t in K.VTAB_TASKS if t in printed]
    assert [t for t in K.VTAB_TASKS if rows[t]["paper"] is not None] == tasks_printed  # A7 where the row has it
    for table, method in REFERENCES[name][1]:
        assert f"SNELL {table}, {method} ({BB[BACKBONE[name]]})" in text
    assert verify.CLEAN_NOTES["borrowed"] in text and f"{COUNTS[name] / 1e6:.4f} M without" in text


def test_the_two_mean_conventions_of_one_klora_experiment_agree():
    """Table 5(b)'s KLoRA-r mean_19 and Table A11's KLoRA-r group means are one experiment (hence one config): the
    19-task mean of A11's group means is 5(b)'s value to the printed precision (72.76 vs 72.7 at r = 32, the group
    means being rounded)."""
    for r in (8, 16, 32):
        a11 = tables.find("SNELL", "Table A11", "vit_b16_in21k", f"KLoRA-{r} (all linears)").values
        m19 = sum(a11[f"mean_{g}"] * len(ts) for g, ts in K.GROUPS.items()) / 19
        assert abs(m19 - tables.find("SNELL", "Table 5(b)", "vit_b16_in21k", f"KLoRA-{r} (s=0)").values["mean_19"]) \
            < 0.07


# ------------------------------------------------------------------------------------------- search.py on ViT-L/H
def test_search_selects_s_from_the_papers_grid(tmp_path):
    """search.py on a ViT-L SNELL-8 row: two trials per task (s = 0 and 0.9) on the row's backbone, the better val
    top-1 wins and is written into the config (selection: partial until every task is searched)."""
    cfg = tmp_path / "snell_large_snell8_vitl.yaml"
    cfg.write_text((CONFIG_DIR / "snell_large_snell8_vitl.yaml").read_text())
    for s, score in ((0.0, 71.0), (0.9, 70.0)):  # finished trials: nothing trains
        d = tmp_path / "runs" / "snell_large_snell8_vitl_search" / "cifar" / search.trial_name({"sparsity": s})
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({"epochs": 200, "history": [{"epoch": 200, "val_acc": score}]}))
    (tmp_path / "vtab" / "cifar").mkdir(parents=True)
    for split in ("train800", "val200", "test"):
        (tmp_path / "vtab" / "cifar" / f"{split}.txt").write_text("")
    assert search.main(["--config", str(cfg), "--tasks", "cifar", "--out", str(tmp_path / "runs"), "--data-root",
                        str(tmp_path / "vtab"), "--weights", "none"]) == 0
    new = taskcfg.load(cfg)
    summary = json.loads((tmp_path / "runs" / "snell_large_snell8_vitl_search" / "cifar" / "search.json").read_text())
    assert len(summary["trials"]) == 2 and summary["chosen"] == {"sparsity": 0.0}
    assert taskcfg.resolve(new, "cifar")["method_args"]["sparsity"] == 0.0 and new["selection"] == "partial"
    assert taskcfg.resolve(new, "dtd") == taskcfg.resolve(_spec("snell_large_snell8_vitl"), "dtd")


def test_large_rows_train_on_their_own_backbone(tmp_path):
    """reproduce/table.sh's per-row backbone: without ARCH / WEIGHTS in the environment, the ViT-L rows' train.py
    commands take ViT-L/16 and the ViT-H rows' ViT-H/14 (dry run: nothing is written)."""
    env = {**os.environ, "OUT": str(tmp_path / "out"), "TASKS": "dtd", "VTAB_ROOT": str(tmp_path / "nowhere")}
    env.pop("ARCH", None), env.pop("WEIGHTS", None)
    p = subprocess.run([str(ROOT / "reproduce" / "snell_vtab_large.sh"), "--dry-run"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    train = [line for line in p.stdout.splitlines() if line.startswith("python train.py")]
    assert len(train) == 4 and not (tmp_path / "out").exists()
    for line, (name, (arch, weights)) in zip(train, SCRIPTS["snell_vtab_large.sh"][0]):
        assert f"/{name}/dtd/seed0/config.yaml " in line and f" --arch {arch} --pretrained {weights} " in line


# ------------------------------------------------------------------------------------------------ smoke runs
TRAINED = {  # the rows the smoke runs train: the new kinds of run (the two new deltas, LoRA on all six linears); the
    # other rows get finished (synthetic) runs, which a sweep skips as any finished run and still tables. Every row's
    # options are train.py's (test_config_loads_validates_and_is_documented); a train.py run costs ~5 s of imports
    "snell_ablation_rank.sh": set(),
    "snell_lora_vs_klora.sh": {"snell_lora_vs_klora_lora8"},
    "snell_vtab_large.sh": set(),
    "snell_ablation_matrix.sh": {"snell_ablation_matrix_dense", "snell_ablation_matrix_lora8"},
}
MICRO_COUNTS = {"snell_ablation_rank_klora8": 18_496, "snell_lora_vs_klora_lora8": 18_432,
                "snell_large_snell8_vith": 18_496, "snell_ablation_matrix_dense": 98_368,
                "snell_ablation_matrix_lora8": 18_496}  # vit_micro_patch8 (2 blocks, D = 64), without the head


def test_smoke_run_of_every_script_prints_every_rows_table(tmp_path):
    """The four scripts at once (each its own OUT and data cache), TASKS=cifar, one epoch, the 2-block micro ViT at
    32 px on a generated VTAB tree: every row runs through reproduce/sweep.sh and ends in its own table against its
    paper row; the trained rows (the new delta parameterisations among them) write their results."""
    make_vtab_tree(tmp_path / "vtab", ["cifar"])
    procs = {}
    for script, (rows, _) in SCRIPTS.items():
        out = tmp_path / script.removesuffix(".sh")
        for name, _ in rows:
            if name not in TRAINED[script]:
                finished_run(out / name, taskcfg.resolve(_spec(name), "cifar"), seed=0)
        env = {**os.environ, "TASKS": "cifar", "EPOCHS": "1", "ARCH": "vit_micro_patch8", "WEIGHTS": "none",
               "IMG_SIZE": "32", "VTAB_ROOT": str(tmp_path / "vtab"), "OUT": str(out),
               "VIT_PEFT_CACHE": str(out / "cache"), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
        procs[script] = subprocess.Popen([str(ROOT / "reproduce" / script)], cwd=ROOT, env=env, text=True,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for script, p in procs.items():
        stdout, _ = p.communicate(timeout=300)
        assert p.returncode == 0, (script, stdout[-3000:])
        rows, _ = SCRIPTS[script]
        out = tmp_path / script.removesuffix(".sh")
        for name, _ in rows:
            table = stdout[stdout.index(f"{name}: 1 run(s) in {out / name}"):]
            for t, m in REFERENCES.get(name, (None, [("Table 1", "SNELL-32")]))[1]:
                assert f"SNELL {t}, {m} (" in table.split("Out of tolerance")[0], (script, name, t, m)
            assert "mean_groups = mean of the 3 group means" in table
            if name in TRAINED[script]:
                res = json.loads((out / name / "cifar" / "seed0" / "results.json").read_text())
                cfg = taskcfg.resolve(_spec(name), "cifar", epochs=1)
                assert (res["method"], res["epochs"], res["batch_size"]) == (cfg["method"], 1, cfg["batch_size"])
                assert {k: res["method_args"][k] for k in cfg["method_args"]} == \
                    {k: list(v) if isinstance(v, tuple) else v for k, v in cfg["method_args"].items()}
                assert res["params_trainable_no_head"] == MICRO_COUNTS[name]
            else:
                assert f"{out / name}/cifar/seed0/results.json), skipped" in stdout
        assert stdout.count("== " + _script_vars(script)[3] + ": row ") == len(rows)
