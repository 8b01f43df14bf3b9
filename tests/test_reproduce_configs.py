"""reproduce/: sweep configs, the per-task config writer, the sweep scripts' dry runs, preflight messages and the HTA
search's selection and config rewriting (docs/methods/hta.md §5, docs/methods/arc.md §7, docs/methods/snell.md §8, docs/benchmarks.md §6)."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from engine import config as C
from reproduce import preflight, search, taskcfg, tasks as K, verify

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "reproduce" / "configs").glob("*.yaml"))
SCRIPTS = {"householder_vtab.sh": "hta_vtab", "householder_vtab_large.sh": "hta_vtab_large",
           "householder_fgvc.sh": "hta_fgvc", "arc_vtab.sh": "arc_vtab", "arc_fgvc.sh": "arc_fgvc",
           "snell_vtab.sh": "snell_vtab", "snell_fgvc.sh": "snell_fgvc", "householder_vtab_swin.sh": "hta_vtab_swin",
           "arc_vtab_swin.sh": "arc_vtab_swin"}


def script_configs(path: Path) -> list[str]:
    """The sweep configs a paper script runs: its CONFIG_NAME (sweep.sh), or its ROWS (table.sh: CONFIG[:ARCH[:W]])."""
    text = path.read_text()
    one = re.findall(r"^CONFIG_NAME=(\S+)$", text, re.M)
    rows = " ".join(re.findall(r'^ROWS\+?="([^"]*)"$', text, re.M)).split()
    return one + [row.split(":")[0] for row in rows]


def test_every_script_has_its_configs_and_every_config_a_script():
    scripts = sorted(p for p in (ROOT / "reproduce").glob("*.sh") if p.name not in ("sweep.sh", "table.sh",
                                                                                     "bench_gpu.sh"))
    used = []
    for path in scripts:
        names = script_configs(path)
        assert names and os.access(path, os.X_OK), path.name
        assert len(set(names)) == len(names), path.name  # a table lists each row once
        used += names
    # every config is run by a script (a row shared by two tables, e.g. KLoRA-r of SNELL 5(b) and A11, by both)
    assert set(used) == {p.stem for p in CONFIGS}
    assert all(script_configs(ROOT / "reproduce" / s) == [n] for s, n in SCRIPTS.items())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_complete_documented_and_accepted_by_train(path):
    spec = taskcfg.load(path)
    expected = K.VTAB_TASKS if spec["benchmark"] == "vtab" else K.FGVC_TASKS
    assert tuple(spec["tasks"]) == expected  # every task, in table order
    assert taskcfg.validate(spec, check_options=True) == []  # lr, wd, batch, epochs, method + args; train.py's options
    assert taskcfg.undocumented(path) == []  # every value carries '# source:'
    for task in spec["tasks"]:
        cfg = taskcfg.resolve(spec, task)
        assert "method_args" in cfg and cfg["epochs"] >= 100 and cfg["batch_size"] in (8, 16, 32, 64)
    import models

    for task in spec["tasks"]:  # the method arguments are the registered method's keyword arguments
        cfg = taskcfg.resolve(spec, task)
        models.METHODS[cfg["method"]](**cfg["method_args"])
    from reproduce import tables

    for backbone, rows in spec["reference"].items():  # every reference row exists in paper_tables/
        for r in rows:
            tables.find(r["paper"], r["table"], backbone, r["method"])


def test_config_values_follow_the_specs():
    snell = taskcfg.load(ROOT / "reproduce/configs/snell_vtab.yaml")  # docs/methods/snell.md §8.2
    r = lambda spec, t: taskcfg.resolve(spec, t)  # noqa: E731
    assert (r(snell, "patch_camelyon")["lr"], r(snell, "patch_camelyon")["weight_decay"]) == (7e-4, 0.05)
    assert r(snell, "dtd")["method_args"] == {"rank": 32, "sparsity": 0.995, "dropout": 0.1}
    assert (r(snell, "dmlab")["batch_size"], r(snell, "dmlab")["weight_decay"]) == (8, 1e-4)
    assert r(snell, "dmlab")["method_args"]["sparsity"] == 0.0
    assert [r(snell, t)["epochs"] for t in ("cifar", "patch_camelyon", "smallnorb_ele")] == [200, 100, 200]
    assert r(snell, "cifar")["schedule"] == "per_epoch_timm" and r(snell, "cifar")["wd_scope"] == "matrices"
    sf = taskcfg.load(ROOT / "reproduce/configs/snell_fgvc.yaml")  # docs/methods/snell.md §8.3, r = 32
    assert (r(sf, "stanford_dogs")["lr"], r(sf, "stanford_dogs")["weight_decay"]) == (3e-4, 0.005)
    assert r(sf, "oxford_flowers")["method_args"]["sparsity"] == 0.8
    af = taskcfg.load(ROOT / "reproduce/configs/arc_fgvc.yaml")  # docs/methods/arc.md §7.3
    assert [(r(af, t)["lr"], r(af, t)["weight_decay"], r(af, t)["method_args"]["dropout"], r(af, t)["drop_rate"])
            for t in K.FGVC_TASKS] == [(1e-3, 0.05, 0.1, 0.1), (2e-4, 0.05, 0.1, 0.1), (2.5e-3, 0.01, 0.1, 0.1),
                                        (2.5e-4, 0.05, 0.1, 0.0), (5e-3, 0.05, 0.0, 0.1)]
    av = taskcfg.load(ROOT / "reproduce/configs/arc_vtab.yaml")  # docs/methods/arc.md §7.1
    assert {(r(av, t)["lr"], r(av, t)["weight_decay"], r(av, t)["batch_size"]) for t in K.VTAB} == {(0.01, 0.0, 32)}
    # no per-task values were released for ViT: defaults, not the paper's selection, and the documented lr x wd x
    # dropout grid for search.py (docs/methods/arc.md §7.4)
    assert av["selection"] == "default" and set(av["search"]["full"]) == {"lr", "weight_decay", "dropout"}
    assert len(search.grid_points(av["search"]["full"])) == 75 and len(search.grid_points(av["search"]["stage1"])) == 25
    for name in ("hta_vtab", "hta_vtab_large", "hta_fgvc"):  # docs/methods/hta.md §5
        h = taskcfg.load(ROOT / f"reproduce/configs/{name}.yaml")
        # FGVC: ARC's per-dataset values, which ARC selected on the test set (docs/methods/arc.md §7.3)
        assert h["selection"] == ("borrowed" if name == "hta_fgvc" else "default")
        assert len(search.grid_points(h["search"]["full"])) == 525
        assert {(r(h, t)["epochs"], r(h, t)["warmup_epochs"], r(h, t)["method_args"]["rank"]) for t in h["tasks"]} \
            == {(100, 10, 1)}


def test_task_config_file_and_epochs_override(tmp_path):
    spec = taskcfg.load(ROOT / "reproduce/configs/snell_vtab.yaml")
    out = tmp_path / "run" / "config.yaml"
    assert taskcfg.main([str(ROOT / "reproduce/configs/snell_vtab.yaml"), "patch_camelyon", "--out", str(out),
                         "--epochs", "20"]) == 0
    flat = yaml.safe_load(out.read_text())
    assert flat["epochs"] == 20 and flat["warmup_epochs"] == 2 and flat["batch_size"] == 16  # 10 of 100 -> 2 of 20
    assert flat["method_args"] == {"rank": 32, "sparsity": 0.15, "dropout": 0.1} and flat["lr"] == 7e-4
    assert taskcfg.resolve(spec, "cifar", epochs=20)["warmup_epochs"] == 1  # 10 of 200 -> 1 of 20
    assert set(flat) <= set(C.OPTIONS)
    assert taskcfg.resolve(spec, "cifar", epochs=1)["warmup_epochs"] == 0
    assert taskcfg.select(spec, "cifar100, dtd,cifar") == ["cifar", "dtd"]  # aliases resolve
    with pytest.raises(taskcfg.ConfigError, match="not in this config"):
        taskcfg.select(spec, "cub")
    bad = tmp_path / "bad.yaml"
    bad.write_text("benchmark: vtab\ndefaults:\n  lr: 0.1\n  batch_size: 32   # source: x\n  method_args:\n"
                   "    rank: 1# source: no blank before '#'\ntasks:\n  cifar: {}\n")
    assert taskcfg.undocumented(bad) == [f"{bad}:3: lr: 0.1", f"{bad}:6: rank: 1# source: no blank before '#'",
                                         f"{bad}:8: cifar: {{}}"]
    bad.write_text("benchmark: vtab\ndefaults:\n  lr: 0.1\n  batch_size: 32\ntasks:\n"
                   "  cifar: {}\n")
    assert taskcfg.validate(taskcfg.load(bad)) == ["cifar: no value for method", "cifar: no value for method_args",
                                                   "cifar: no value for weight_decay", "cifar: no value for epochs"]
    bad.write_text("benchmark: vtab\ndefaults: {}\ntasks:\n  cifar100: {}\n")
    with pytest.raises(taskcfg.ConfigError, match="unknown vtab task"):
        taskcfg.load(bad)


def _sweep(script: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "reproduce" / script), *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_dry_run_prints_the_exact_commands(tmp_path):
    done = tmp_path / "out" / "snell_vtab" / "cifar" / "seed1"
    done.mkdir(parents=True)
    (done / "results.json").write_text("{}")
    p = _sweep("snell_vtab.sh", {"OUT": str(tmp_path / "out"), "TASKS": "cifar dtd", "SEEDS": "2", "EPOCHS": "3",
                                 "VTAB_ROOT": str(tmp_path / "nowhere"), "PRECISION": "bf16"}, "--dry-run")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    run = tmp_path / "out" / "snell_vtab" / "dtd" / "seed0"
    assert (f"python -m reproduce.taskcfg reproduce/configs/snell_vtab.yaml dtd --out {run}/config.yaml --epochs 3"
            in lines)
    assert (f"python train.py --config {run}/config.yaml --dataset dtd --data-root {tmp_path}/nowhere --arch "
            "vit_base_patch16_224 --pretrained vit_base_patch16_224.orig_in21k --img-size 224 --precision bf16 "
            f"--protocol paper --seed 0 --out {run}") in lines
    assert sum("python train.py" in line for line in lines) == 3  # cifar seed 0, dtd seeds 0 and 1
    assert any("cifar seed 1: done" in line and "skipped" in line for line in lines)
    assert lines[-1].startswith(f"python reproduce/verify.py {tmp_path}/out/snell_vtab --config "
                                "reproduce/configs/snell_vtab.yaml --tasks cifar dtd")
    assert "VTAB-1k is not there" in p.stderr and not run.exists()  # a dry run writes nothing


def test_compile_knob_reaches_train_py_and_bad_knobs_stop_the_sweep_before_any_run(tmp_path):
    env = {"OUT": str(tmp_path / "out"), "TASKS": "dtd", "VTAB_ROOT": str(tmp_path / "nowhere")}
    p = _sweep("householder_vtab.sh", {**env, "COMPILE": "reduce-overhead"}, "--dry-run")
    assert p.returncode == 0, p.stderr
    train = [line for line in p.stdout.splitlines() if line.startswith("python train.py")]
    assert len(train) == 1 and train[0].endswith(" --compile reduce-overhead")
    plain = _sweep("householder_vtab.sh", env, "--dry-run")  # default: the command earlier runs recorded
    assert [line for line in plain.stdout.splitlines() if "train.py" in line][0] == train[0].replace(
        " --compile reduce-overhead", "")
    for knob, value in (("COMPILE", "cudagraphs"), ("PRECISION", "fp16"), ("PROTOCOL", "test")):
        bad = _sweep("householder_vtab.sh", {**env, knob: value})
        choices = " ".join(C.CHOICES[knob.lower()])  # train.py's own list, not a copy in the script
        assert bad.returncode == 2 and f"{knob}={value}: use one of {choices}" in bad.stderr, (knob, bad.stderr)
        assert "train.py" not in bad.stdout and not (tmp_path / "out").exists()


def test_reused_run_folders_are_checked_against_the_config(tmp_path):
    """A finished or unfinished run is reused as it is; its train command names config.yaml, not its content, so a
    sweep config edited since (e.g. by search.py) must be reported rather than silently mixed into the table."""
    cfg = tmp_path / "snell_vtab.yaml"
    cfg.write_text((ROOT / "reproduce/configs/snell_vtab.yaml").read_text())
    run = tmp_path / "out" / "snell_vtab" / "dtd" / "seed0"
    assert taskcfg.main([str(cfg), "dtd", "--out", str(run / "config.yaml")]) == 0
    (run / "results.json").write_text("{}")
    env = {"OUT": str(tmp_path / "out"), "TASKS": "dtd", "CONFIG": str(cfg), "VTAB_ROOT": str(tmp_path / "nowhere")}
    p = _sweep("snell_vtab.sh", env, "--dry-run")
    assert p.returncode == 0 and "dtd seed 0: done" in p.stdout and "WARNING" not in p.stdout, p.stdout
    cfg.write_text(cfg.read_text().replace("{sparsity: 0.995}", "{sparsity: 0.5}"))
    p = _sweep("snell_vtab.sh", env, "--dry-run")
    assert p.returncode == 0 and "WARNING: that run used other hyper-parameters" in p.stdout, p.stdout
    (run / "results.json").rename(run / "train_state.pt")  # an interrupted run is resumed: same check
    p = _sweep("snell_vtab.sh", env, "--dry-run")
    assert "resuming" in p.stdout and "WARNING: that run used other hyper-parameters" in p.stdout, p.stdout


def test_missing_data_or_weights_say_how_to_get_them(tmp_path):
    p = _sweep("householder_fgvc.sh", {"OUT": str(tmp_path), "FGVC_ROOT": str(tmp_path / "fgvc"), "TASKS": "cub"})
    assert p.returncode == 3 and "data.fgvc_splits" in p.stderr and "XiN0919/FGVC" in p.stderr
    assert not (tmp_path / "hta_fgvc").exists()
    assert "ViT-B_16.npz" in preflight.check_weights(str(tmp_path / "ViT-B_16.npz"))[0][0]
    assert "ambiguous" in preflight.check_weights("vit_base_patch16_224_in21k")[0][0]
    assert preflight.check_weights("none") == ([], ["WEIGHTS=none: random initialisation — only meaningful for "
                                                    "smoke runs"])
    (tmp_path / "vtab" / "Flowers102").mkdir(parents=True)  # an alias folder is found, its missing files reported
    (tmp_path / "vtab" / "Flowers102" / "train800val200.txt").write_text("")
    problems = preflight.check_data("vtab", tmp_path / "vtab", ["oxford_flowers102"])
    assert len(problems) == 1 and "missing split file(s) test.txt" in problems[0]
    assert "prepare_vtab" in problems[0]


def test_fgvc_preflight_needs_every_json_the_loader_reads(tmp_path):
    """data/fgvc.py reads train, val and test.json for any split (its global class map), so a missing val.json must
    stop a paper-protocol sweep in preflight (exit 3, nothing written), not fail every train.py run."""
    from data.tasks import FGVC_JSON_SPLITS, split_files

    assert split_files("fgvc", "paper") == split_files("fgvc", "clean") == FGVC_JSON_SPLITS == ("train", "val", "test")
    cub = tmp_path / "fgvc" / "cub"
    cub.mkdir(parents=True)
    for s in ("train", "test"):
        (cub / f"{s}.json").write_text("{}")
    for protocol in ("paper", "clean"):
        problems = preflight.check_data("fgvc", tmp_path / "fgvc", ["cub"], protocol)
        assert len(problems) == 1 and "missing split file(s) val.json" in problems[0], problems
    p = _sweep("householder_fgvc.sh", {"OUT": str(tmp_path / "out"), "FGVC_ROOT": str(tmp_path / "fgvc"),
                                       "TASKS": "cub", "WEIGHTS": "none"})
    assert p.returncode == 3 and "missing split file(s) val.json" in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()
    (cub / "val.json").write_text("{}")
    assert preflight.check_data("fgvc", tmp_path / "fgvc", ["cub"], "paper") == []


def test_a_config_option_train_py_rejects_stops_the_sweep_before_any_run(tmp_path):
    # each of its runs would otherwise fail in train.py one by one ("failed runs (19)")
    cfg = tmp_path / "bogus.yaml"
    cfg.write_text((ROOT / "reproduce/configs/hta_vtab.yaml").read_text().replace(
        "  seed: 42 ", "  bogus_key: 1                # source: test\n  seed: 42 ", 1))
    out = tmp_path / "out"
    p = _sweep("householder_vtab.sh", {"CONFIG": str(cfg), "OUT": str(out), "VTAB_ROOT": str(tmp_path)}, "--dry-run")
    assert p.returncode == 2 and p.stdout == "" and not out.exists(), (p.stdout, p.stderr)
    assert p.stderr.strip() == (f"error: {cfg}: 'bogus_key' is not a train.py option (19 tasks); fix the config "
                                "(names and choices: python train.py --help)")


def test_invalid_yaml_config_is_one_error_line(tmp_path):
    """A config that is not YAML: taskcfg raises its ConfigError naming the file and the line; the sweep script, its
    dry run and verify.py each print one error line and exit non-zero, no traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("benchmark: vtab\ntasks: [a, b\n  c: {\n")
    with pytest.raises(taskcfg.ConfigError, match=r"bad\.yaml: not valid YAML at line \d+, column \d+"):
        taskcfg.load(bad)
    p = subprocess.run(["python", "-m", "reproduce.taskcfg", str(bad), "--get", "benchmark"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stdout == "" and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith(f"error: {bad}: not valid YAML")
    for args in (("--dry-run",), ()):
        p = _sweep("householder_vtab.sh", {"CONFIG": str(bad), "OUT": str(tmp_path / "out")}, *args)
        assert p.returncode == 2 and p.stdout == "", (p.stdout, p.stderr)
        assert p.stderr.splitlines() == [p.stderr.strip()] and "not valid YAML" in p.stderr, p.stderr
    runs = tmp_path / "runs"
    runs.mkdir()
    p = subprocess.run(["python", "reproduce/verify.py", str(runs), "--config", str(bad)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stdout == "" and p.stderr.startswith("error: --config: "), p.stderr
    assert len(p.stderr.splitlines()) == 1 and "Traceback" not in p.stderr


# ------------------------------------------------------------------------------------------------------- search.py
def test_choose_prefers_score_then_smaller_lr():
    pts = [({"lr": 0.01}, 80.0), ({"lr": 0.001}, 80.0), ({"lr": 0.1}, 79.0), ({"lr": 0.001, "x": 1}, 80.0)]
    assert search.choose(pts) == ({"lr": 0.001}, 80.0)
    assert search.val_score({"epochs": 2, "history": [{"epoch": 1, "val_acc": 90.0}, {"epoch": 2, "val_acc": 50.0}]}) \
        == 50.0  # the last epoch, not the best
    with pytest.raises(ValueError, match="protocol clean"):
        search.val_score({"epochs": 2, "history": [{"epoch": 2, "test_acc": 1.0}]})


def _finished_trials(spec: dict, tmp_path: Path, task: str, stem: str = "hta_vtab") -> tuple[list, list]:
    """results.json of every staged-search trial of ``task`` (so a search trains nothing), and its VTAB split files.
    Best: lr 0.005, wd 0.001 in stage 1 (the tie at lr 0.01 loses), then batch 16 / dropout 0 (val top-1 68)."""
    def score(p):
        s = 60.0 + (5 if (p["lr"], p["weight_decay"]) in ((0.005, 0.001), (0.01, 0.001)) else 0)
        return s + (3 if (p["batch_size"], p["dropout"]) == (16, 0) else 0)

    s1 = search.grid_points(spec["search"]["stage1"])
    best = {"lr": 0.005, "weight_decay": 0.001, "batch_size": 32, "dropout": 0.1}
    s2 = [{k: p[k] for k in best} for p in search.grid_points(spec["search"]["stage2"],
                                                               {"lr": 0.005, "weight_decay": 0.001})]
    for p in s1 + s2:
        d = tmp_path / "runs" / f"{stem}_search" / task / search.trial_name(p)
        d.mkdir(parents=True, exist_ok=True)
        (d / "results.json").write_text(json.dumps({"epochs": 100, "history": [{"epoch": 100,
                                                                                "val_acc": score(p)}]}))
    vtab = tmp_path / "vtab" / task
    vtab.mkdir(parents=True, exist_ok=True)
    for s in ("train800", "val200", "test"):
        (vtab / f"{s}.txt").write_text("")
    return s1, s2


def _search(cfg: Path, tmp_path: Path, task: str) -> int:
    return search.main(["--config", str(cfg), "--tasks", task, "--out", str(tmp_path / "runs"), "--data-root",
                        str(tmp_path / "vtab"), "--weights", "none"])


def test_search_selects_on_val_and_writes_the_config(tmp_path, monkeypatch):
    """The staged search over already finished trials (their results.json exist, so nothing trains): stage 1 picks
    the lr/wd, stage 2 the batch/dropout around it; the rewritten config is valid and documented. Only dtd of the 19
    tasks is searched, so the config says ``selection: partial`` and verify.py calls only dtd val-selected."""
    cfg = tmp_path / "hta_vtab.yaml"
    cfg.write_text((ROOT / "reproduce/configs/hta_vtab.yaml").read_text())
    spec = taskcfg.load(cfg)
    out = tmp_path / "runs" / "hta_vtab_search" / "dtd"
    s1, s2 = _finished_trials(spec, tmp_path, "dtd")
    assert _search(cfg, tmp_path, "dtd") == 0
    new = taskcfg.load(cfg)
    assert new["selection"] == "partial"  # the other 18 tasks still run the defaults
    assert taskcfg.searched_tasks(cfg.read_text()) == ["dtd"]
    assert "# status (reproduce/search.py): 1 of 19 tasks selected on val (dtd); the other 18" in cfg.read_text()
    note = verify.clean_note(new["selection"], cfg.read_text(), list(new["tasks"]))
    assert "only for dtd;" in note and "the other tasks (cifar, caltech101," in note and "not val-selected" in note
    assert verify.clean_note(new["selection"], cfg.read_text(), ["dtd"]) == verify.CLEAN_NOTES["val"]
    chosen = taskcfg.resolve(new, "dtd")
    assert (chosen["lr"], chosen["weight_decay"], chosen["batch_size"], chosen["method_args"]) == \
        (0.005, 0.001, 16, {"rank": 1, "dropout": 0})
    assert taskcfg.resolve(new, "cifar") == taskcfg.resolve(spec, "cifar")  # other tasks untouched
    assert taskcfg.undocumented(cfg) == [] and "val top-1 68.00" in cfg.read_text()
    assert "    method_args: {dropout: 0} # source: reproduce/search.py" in cfg.read_text()
    assert "# search: reproduce/search.py, reduced staged grid" in cfg.read_text()
    summary = json.loads((out / "search.json").read_text())
    assert len(summary["trials"]) == len(s1) + len(s2) - 1  # the stage-1 anchor is not run twice
    assert summary["chosen"] == {"lr": 0.005, "weight_decay": 0.001, "batch_size": 16, "dropout": 0}


def test_search_of_every_task_sets_selection_val_and_verify_says_so(tmp_path, capsys):
    """Searching the tasks one by one: ``partial`` after the first, ``val`` once every task of the config has
    search-selected values; verify.py's clean-column note follows (docs/benchmarks.md §6.2)."""
    text = (ROOT / "reproduce/configs/hta_vtab.yaml").read_text()
    head, tasks = text.split("\ntasks:", 1)
    keep = [line for line in tasks.splitlines()[1:] if line.startswith(("  cifar:", "  dtd:"))]
    cfg = tmp_path / "hta_two.yaml"
    cfg.write_text(head + "\ntasks:\n" + "\n".join(keep) + "\n")
    spec = taskcfg.load(cfg)
    assert list(spec["tasks"]) == ["cifar", "dtd"] and spec["selection"] == "default"
    for task in ("cifar", "dtd"):
        _finished_trials(spec, tmp_path, task, stem="hta_two")
    assert _search(cfg, tmp_path, "dtd") == 0
    assert taskcfg.load(cfg)["selection"] == "partial"
    assert _search(cfg, tmp_path, "cifar") == 0
    new = taskcfg.load(cfg)
    assert new["selection"] == "val" and taskcfg.searched_tasks(cfg.read_text()) == ["cifar", "dtd"]
    assert cfg.read_text().count("# status (reproduce/search.py):") == 1  # rewritten, not appended
    assert "# status (reproduce/search.py): every task (2) selected on val" in cfg.read_text()
    assert taskcfg.resolve(new, "cifar")["lr"] == 0.005 and taskcfg.undocumented(cfg) == []
    runs = tmp_path / "sweep"
    (runs / "cifar" / "seed42").mkdir(parents=True)
    (runs / "cifar" / "seed42" / "results.json").write_text(json.dumps({
        "dataset": "cifar", "protocol": "paper", "seed": 42, "arch": "vit_base_patch16_224", "acc_best_test": 70.0,
        "acc_last": 69.0, "pretrained": {"source": "vit_base_patch16_224.orig_in21k"}}))
    capsys.readouterr()
    assert verify.main([str(runs), "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert verify.CLEAN_NOTES["val"] in out and "only for" not in out


def test_search_refuses_to_score_stale_trials(tmp_path):
    """A trial folder is named by its grid point only: a trial run with other EPOCHS, weights ... must not be scored
    by a later search (it would choose the hyper-parameters from, e.g., 1-epoch smoke trials)."""
    import argparse
    import shlex

    spec = taskcfg.load(ROOT / "reproduce/configs/hta_vtab.yaml")
    args = argparse.Namespace(python="python", arch="vit_tiny_patch16_224", weights="none", img_size=32,
                              precision="fp32", epochs=1, dry_run=True)
    runner = search.Runner(args, spec, str(tmp_path / "vtab"))
    point = {"lr": 0.01, "weight_decay": 0, "batch_size": 32, "dropout": 0.1}
    folder = tmp_path / search.trial_name(point)
    folder.mkdir()
    cfg = search.apply_point(taskcfg.resolve(spec, "dtd", 1), point)
    (folder / "config.yaml").write_text("# header\n" + taskcfg.dump(cfg))
    (folder / "command.txt").write_text(shlex.join(["/other/python", *runner.command("dtd", folder)[1:]]) + "\n")
    (folder / "results.json").write_text(json.dumps({"epochs": 1, "history": [{"epoch": 1, "val_acc": 70.0}]}))
    assert runner.trial("dtd", point, folder) == 70.0  # same settings (the interpreter path aside): reused
    args.epochs = None
    with pytest.raises(SystemExit, match="other hyper-parameters"):
        runner.trial("dtd", point, folder)
    args.epochs, args.weights = 1, "vit_base_patch16_224.orig_in21k"
    with pytest.raises(SystemExit, match="another command"):
        runner.trial("dtd", point, folder)


@pytest.mark.parametrize("script,name", sorted(SCRIPTS.items()))
def test_search_defaults_to_the_backbone_its_sweep_trains(script, name):
    # a search must select hyper-parameters on the backbone the sweep then trains (it used ViT-B for the ViT-L
    # config unless --arch was given)
    text = (ROOT / "reproduce" / script).read_text()
    want = tuple(re.search(rf"^{key}=(\S+)$", text, re.M).group(1) for key in ("DEFAULT_ARCH", "DEFAULT_WEIGHTS"))
    assert search.default_backbone(taskcfg.load(ROOT / "reproduce" / "configs" / f"{name}.yaml")) == want


def test_a_searched_task_keeps_its_other_per_task_values(tmp_path):
    # SNELL's configs set batch, lr, wd and epochs per task: a search over the sparsity alone must change the
    # sparsity and leave the rest of the task's entry (each value with its own source)
    path = ROOT / "reproduce" / "configs" / "snell_vtab.yaml"
    spec = taskcfg.load(path)
    before = taskcfg.resolve(spec, "cifar")
    chosen = {"cifar": {"point": {"sparsity": 0.0, "lr": 0.002}, "score": 71.5, "n": 2, "method_keys": ["sparsity"]}}
    out = tmp_path / "snell_vtab.yaml"
    out.write_text(search.rewrite_config(path.read_text(), chosen, "searched in a test"))
    new = taskcfg.load(out)
    after = taskcfg.resolve(new, "cifar")
    assert after["method_args"]["sparsity"] == 0.0 and after["lr"] == 0.002  # the search's values
    assert {k: v for k, v in after.items() if k not in ("lr", "method_args")} == \
        {k: v for k, v in before.items() if k not in ("lr", "method_args")}  # batch 16, epochs 200, ... kept
    assert {k: v for k, v in after["method_args"].items() if k != "sparsity"} == \
        {k: v for k, v in before["method_args"].items() if k != "sparsity"}
    assert taskcfg.resolve(new, "dtd") == taskcfg.resolve(spec, "dtd") and taskcfg.undocumented(out) == []
    assert taskcfg.searched_tasks(out.read_text()) == ["cifar"] and new["selection"] == "partial"
