"""train.py --recipe NAME: a paper's values for the dataset given, under --config and flags; recorded in results.json;
and the note that --method hta|arc|snell alone trains with generic defaults."""
from __future__ import annotations

import json

import pytest

from engine import config as C
from engine import recipes
from test_reproduce_smoke import make_vtab_tree
from test_train import run

TINY = ["--arch", "vit_micro_patch8", "--img-size", "32", "--pretrained", "none", "--epochs", "1"]


@pytest.fixture(scope="module")
def vtab(tmp_path_factory):
    root = tmp_path_factory.mktemp("vtab")
    make_vtab_tree(root, ["dtd"])
    return root


def _build(*args):
    return C.build(C.build_parser().parse_args(["--device", "cpu", *map(str, args)]))


def test_a_recipe_gives_its_values_for_the_task_and_flags_override_them(vtab):
    cfg = _build("--recipe", "snell_vtab", "--dataset", "dtd", "--data-root", vtab)
    want = recipes.values_for("snell_vtab", "dtd")  # the task's own row: batch 64, 200 epochs
    assert (cfg.method, cfg.batch_size, cfg.epochs, cfg.lr, cfg.schedule) == (
        "snell", 64, 200, want["lr"], "per_epoch_timm") and want["batch_size"] == 64 and cfg.recipe == "snell_vtab"
    assert cfg.method_args == {k: tuple(v) if isinstance(v, list) else v for k, v in want["method_args"].items()}
    cfg = _build("--recipe", "snell_vtab", "--dataset", "describable_textures", "--data-root", vtab, "--lr", "0.5",
                 "--method-args", "dropout=0")  # any alias of the task; flags and method arguments override
    assert cfg.lr == 0.5 and cfg.method_args["dropout"] == 0 and cfg.method_args["rank"] == want["method_args"]["rank"]


def test_the_recipe_reaches_the_run_and_results_json(vtab, cache, tmp_path):
    out = tmp_path / "run"
    p = run(["--recipe", "hta_vtab", "--dataset", "dtd", "--data-root", vtab, *TINY, "--out", out], cache)
    assert "note:" not in p.stderr  # a recipe: nothing to warn about
    res = json.loads((out / "results.json").read_text())
    saved = json.loads((out / "config.json").read_text())
    assert res["recipe"] == saved["recipe"] == "hta_vtab"
    assert (saved["lr"], saved["wd_scope"], saved["grad_clip"], saved["norm"]) == (0.01, "all", 1.0, "half")
    assert res["method"] == "hta" and res["method_args"]["dropout"] == 0.1 and res["epochs"] == 1


@pytest.mark.parametrize("args,fragment", [
    (["--recipe", "hta_fgvc", "--dataset", "dtd"], "--recipe hta_fgvc is a FGVC recipe and dtd is a VTAB task; for "
                                                   "VTAB use arc_vtab or hta_vtab or snell_vtab"),
    (["--recipe", "hta_vtab", "--dataset", "demo"], "(the demo tasks have no paper recipe)"),
    (["--recipe", "nope", "--dataset", "dtd"], "--recipe nope: no such recipe; choose one of arc_fgvc, arc_vtab"),
])
def test_a_recipe_that_does_not_fit_is_one_line(args, fragment, vtab, cache, tmp_path):
    p = run([*args, "--data-root", vtab, *TINY, "--out", tmp_path / "run"], cache, expect=2)
    assert fragment in p.stderr and p.stderr.count("\n") == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("method,note", [("hta", "--recipe hta_vtab"), ("arc_att", "--recipe arc_vtab"),
                                         ("snell", "--recipe snell_vtab"), ("lora", None)])
def test_a_paper_method_without_recipe_says_the_defaults_are_generic(method, note, vtab):
    cfg = _build("--method", method, "--dataset", "dtd", "--data-root", vtab)
    got = C.generic_defaults_note(cfg, from_file=False)
    if note is None:
        assert got is None
    else:
        assert got.startswith(f"note: --method {method} with train.py's generic defaults") and note in got
        assert C.generic_defaults_note(cfg, from_file=True) is None  # a --config is the user's recipe
    demo = _build("--method", method, "--dataset", "demo")
    assert C.generic_defaults_note(demo, from_file=False) is None  # `python train.py` prints what it always did


def test_timm_style_flag_aliases(tmp_path):
    cfg = _build("--model", "vit_micro_patch8", "--opt", "sgd", "--sched", "per_epoch_timm", "--clip-grad", "1",
                 "--output", tmp_path / "o")
    assert (cfg.arch, cfg.optimizer, cfg.schedule, cfg.grad_clip, cfg.out) == (
        "vit_micro_patch8", "sgd", "per_epoch_timm", 1.0, str(tmp_path / "o"))
