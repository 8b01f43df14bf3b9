"""The cut of docs/ARCHITECTURE.md, enforced: imports flow util <- models, data <- engine <- scripts <- reproduce,
no entry script imports another, bench.py measures through the registry only, train.py stays short, and the
options, flags and results.json keys users rely on stay what they are."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("train", "eval", "bench")


def imports(path: Path) -> set[str]:
    """Every module a file imports (top level or inside functions), absolute names; relative ones as '.name'."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            out.add(base)
            if node.module is None or node.level:  # from . import x
                out |= {f"{base}.{a.name}" if node.module else f"{base}{a.name}" for a in node.names}
    return out


def files(*patterns: str) -> list[Path]:
    return sorted(p for pattern in patterns for p in ROOT.glob(pattern))


def _top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("package,forbidden", [
    ("util", {"models", "data", "engine", "reproduce", *SCRIPTS, "torch"}),
    ("models", {"data", "engine", "reproduce", *SCRIPTS}),
    ("data", {"models", "engine", "reproduce", *SCRIPTS}),
    ("engine", {"reproduce", *SCRIPTS}),
])
def test_imports_flow_one_way(package, forbidden):
    bad = {str(p.relative_to(ROOT)): sorted(m for m in imports(p) if _top(m) in forbidden)
           for p in files(f"{package}/**/*.py")}
    assert not {k: v for k, v in bad.items() if v}


def test_no_entry_script_imports_another_and_reproduce_imports_no_training_script():
    for script in SCRIPTS:
        assert not {_top(m) for m in imports(ROOT / f"{script}.py")} & set(SCRIPTS), script
    for p in files("reproduce/*.py", "engine/*.py"):
        assert not {_top(m) for m in imports(p)} & {"train", "eval"}, p.name


def test_bench_measures_through_the_registry_only():
    mods = imports(ROOT / "bench.py")
    assert not [m for m in mods if _top(m) == "reproduce"]
    assert not [m for m in mods if m.startswith("models.methods")], mods


def test_train_py_is_a_short_client():
    assert len((ROOT / "train.py").read_text().splitlines()) <= 200
    assert {"engine", "engine.data", "models"} <= imports(ROOT / "train.py")  # the loop lives in engine/


def test_the_torch_free_modules_stay_torch_free():
    # reproduce/verify.py and taskcfg read configs and results where only Python is installed
    import subprocess
    import sys

    code = ("import sys; import engine.config, data.tasks, reproduce.verify, reproduce.taskcfg, util.files; "
            "print('torch' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "False", p.stderr


# Each option of train.py: flags and config keys users and sweeps rely on, and the keys of results.json.
FLAGS = ["--method", "--recipe", "--method-args", "--dataset", "--data-root", "--cache-dir", "--arch", "--model",
         "--pretrained", "--img-size", "--epochs", "--batch-size", "--eval-batch-size", "--lr", "--optimizer", "--opt",
         "--momentum", "--scale-lr", "--weight-decay", "--wd-scope", "--no-decay", "--warmup-epochs", "--schedule",
         "--sched", "--min-lr-factor", "--grad-clip", "--clip-grad", "--drop-rate", "--drop-path-rate", "--norm",
         "--fgvc-aug", "--fgvc-interpolation",
         "--fgvc-source", "--data-workers", "--color-jitter", "--seed", "--precision", "--protocol", "--eval-every",
         "--eval-last", "--eval-merged", "--eval-initial", "--device", "--compile", "--out", "--output", "--config",
         "--resume", "--overwrite", "--stop-after-epochs"]
ALIASES = ("--model", "--opt", "--sched", "--clip-grad", "--output")  # timm's names for the same options
RESULT_KEYS = ["method", "method_args", "recipe", "arch", "pretrained", "dataset", "benchmark", "splits",
               "split_regenerated", "num_classes", "protocol", "seed", "precision", "compile", "epochs", "lr", "peak_lr", "optimizer",
               "weight_decay", "batch_size", "img_size", "norm", "color_jitter", "train_aug", "train_source",
               "acc_last", "acc_initial", "acc_best_test", "acc_best_test_epoch", "acc_best_test_note",
               "acc_val_last", "params_trainable", "params_trainable_no_head", "peak_mem_mb", "train_img_per_s",
               "train_time_s", "wall_s", "world_size", "device", "device_name", "versions", "git_commit", "history"]


def test_flags_and_results_keys_are_the_documented_ones(tmp_path, cache):
    from engine import config as C
    from test_train import FAST, run

    parser = C.build_parser()
    assert [s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"] == FLAGS
    out = tmp_path / "run"
    run(["--method", "linear", "--dataset", "demo", *FAST, "--epochs", "1", "--out", out], cache)
    assert list(json.loads((out / "results.json").read_text())) == RESULT_KEYS
    options = [f[2:].replace("-", "_") for f in FLAGS[:-4] if f not in ALIASES]
    assert list(json.loads((out / "config.json").read_text())) == options
