"""train.py / eval.py end to end on the generated demo tasks (CPU, tiny ViT, seconds per run)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eval as E
import train as T
from engine import config as C
from engine import loop as L
from engine.errors import RunError

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--arch", "vit_micro_patch8", "--img-size", "32", "--pretrained", "none", "--batch-size", "50",
        "--eval-every", "1"]


class Ran:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run(args, cache, expect=0) -> Ran:
    """train.main in this process (no interpreter start-up per run); stdout/stderr captured."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    old = os.environ.get("VIT_PEFT_CACHE")
    os.environ["VIT_PEFT_CACHE"] = str(cache)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = T.main([str(a) for a in args])
            except SystemExit as e:  # a usage error: argparse exits from parse_args
                code = e.code
    finally:
        if old is None:
            os.environ.pop("VIT_PEFT_CACHE", None)
        else:
            os.environ["VIT_PEFT_CACHE"] = old
    p = Ran(code, out.getvalue(), err.getvalue())
    assert code == expect, f"exit {code}\nstdout:\n{p.stdout[-2000:]}\nstderr:\n{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def backbone(tmp_path_factory, cache):
    """A tiny ViT pre-trained (full fine-tuning, a few seconds) on demo_ori (bar orientation): the 'pre-trained
    weights' that the methods then adapt to demo_shape (shape type), a task it was not trained on."""
    out = tmp_path_factory.mktemp("pre") / "run"
    run(["--method", "full", "--dataset", "demo_ori", *FAST, "--epochs", "8", "--lr", "2e-3",
         "--weight-decay", "0.05", "--warmup-epochs", "1", "--out", out], cache)
    res = json.loads((out / "results.json").read_text())
    assert res["acc_last"] > 80.0, res["acc_last"]  # 4 classes: chance is 25 %
    return out / "adapter.safetensors"


# SNELL's update starts as K·|K| (~1e-6, docs/methods/snell.md §3), so it needs a larger step to move within 8
# short epochs
@pytest.mark.parametrize("method,lr", [("hta", 1e-2), ("arc", 1e-2), ("snell", 5e-2), ("lora", 1e-2)])
def test_methods_learn_a_new_task_through_train_py(method, lr, backbone, cache, tmp_path):
    out = tmp_path / method
    run(["--method", method, "--dataset", "demo_shape", "--pretrained", backbone, "--arch", "vit_micro_patch8",
         "--img-size", "32", "--batch-size", "50", "--epochs", "8", "--warmup-epochs", "1", "--lr", lr,
         "--eval-every", "1", "--eval-initial", "true", "--out", out], cache)
    res = json.loads((out / "results.json").read_text())
    assert res["method"] == method and res["params_trainable"] > res["params_trainable_no_head"] > 0
    assert res["acc_initial"] is not None
    assert res["acc_last"] > 45.0, res  # 4 balanced classes: chance 25 %
    assert res["acc_last"] > res["acc_initial"] + 15.0, res
    assert res["acc_best_test"] >= res["acc_last"] and "TEST" in res["acc_best_test_note"]


def test_linear_probe_learns_with_the_sgd_reference_recipe(backbone, cache, tmp_path):
    # docs/methods/baselines.md §1 (and VPT, §7): SGD with momentum 0.9 and lr × batch / 256
    out = tmp_path / "probe"
    run(["--method", "linear", "--dataset", "demo_shape", "--pretrained", backbone, "--arch", "vit_micro_patch8",
         "--img-size", "32", "--batch-size", "50", "--epochs", "8", "--warmup-epochs", "1", "--lr", "25",
         "--optimizer", "sgd", "--scale-lr", "true", "--eval-every", "1", "--eval-initial", "true", "--out", out],
        cache)
    res = json.loads((out / "results.json").read_text())
    assert res["optimizer"] == "sgd" and res["lr"] == 25 and res["peak_lr"] == 25 * 50 / 256
    assert res["acc_last"] > 40.0 and res["acc_last"] > res["acc_initial"] + 15.0, res  # chance 25 %


def test_optimizer_choice_and_peak_lr():
    import models

    m = models.create_model("vit_micro_patch8", "vpt_shallow", num_classes=3, img_size=32)
    parse = lambda *a: C.build(C.build_parser().parse_args(list(a)))  # noqa: E731
    cfg = parse("--optimizer", "sgd", "--lr", "25", "--batch-size", "128", "--scale-lr", "true", "--epochs", "10",
                "--warmup-epochs", "1")
    opt = L.build_optimizer(cfg, L.param_groups(m, 1e-4, "all"), torch.device("cpu"))
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9 and L.peak_lr(cfg) == 12.5
    assert L.lr_at(cfg, 10, 1, 10) == 12.5  # the schedule peaks at the scaled lr, after the warm-up epoch
    cfg = parse("--lr", "25")
    assert isinstance(L.build_optimizer(cfg, L.param_groups(m, 1e-4, "all"), torch.device("cpu")), torch.optim.AdamW)
    assert L.peak_lr(cfg) == 25.0  # scale_lr is off by default
    with pytest.raises(RunError, match="momentum must be a number in"):
        parse("--momentum", "1.5")


def test_weights_of_another_architecture_are_refused(backbone, cache, tmp_path):
    out = tmp_path / "wrong_arch"
    p = run(["--method", "hta", "--dataset", "demo_shape", "--arch", "vit_tiny_patch16_224", "--img-size", "32",
             "--pretrained", backbone, "--epochs", "1", "--out", out], cache, expect=2)
    assert "but --arch is vit_tiny_patch16_224" in p.stderr and "Traceback" not in p.stderr
    assert not (out / "results.json").exists()


def test_tensorboard_events_hold_the_documented_tags(cache, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb_run"
    run(["--method", "hta", "--dataset", "demo", *FAST, "--epochs", "2", "--out", out], cache)
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/acc", "eval/test/acc", "perf/img_per_s"} <= tags, tags
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == list(range(len(steps))) and len(steps) == 2 * 1000 // 50  # per step, no gaps
    # the epoch's mean loss on the epoch axis of the evaluations, equal to the history's
    res = json.loads((out / "results.json").read_text())
    epoch_loss = acc.Scalars("train/loss_epoch")
    assert [e.step for e in epoch_loss] == [e.step for e in acc.Scalars("eval/test/acc")] == [1, 2]
    assert [e.value for e in epoch_loss] == pytest.approx([r["loss"] for r in res["history"]], rel=1e-6)
    hp = EventAccumulator(str(out / "tb" / "hparams"))
    hp.Reload()
    assert "_hparams_/session_start_info" in hp.summary_metadata  # the run's hyper-parameters (add_hparams)
    assert {"hparam/acc_last", "hparam/acc_best_test"} <= set(hp.Tags()["scalars"])
    from tensorboard.plugins.hparams import plugin_data_pb2

    info = plugin_data_pb2.HParamsPluginData.FromString(
        hp.summary_metadata["_hparams_/session_start_info"].plugin_data.content).session_start_info.hparams
    assert info["method_args/rank"].number_value == 1 and info["method_args/dropout"].number_value == 0.0
    assert info["method_args/impl"].string_value == "merged" and "method_args" not in info  # defaults too, one each
    assert info["lr"].number_value == 1e-2 and info["method"].string_value == "hta"


def test_resumed_run_has_each_tensorboard_point_once(cache, tmp_path):
    # one optimizer step per epoch (batch = the 1,000 demo images): a purge by step at the resume (step 2) used to
    # drop epoch-indexed points too (eval/test/acc at epoch 2); points are now written after their checkpoint
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "one_step"
    common = ["--method", "linear", "--dataset", "demo", *FAST, "--batch-size", "1000", "--epochs", "4",
              "--warmup-epochs", "1"]
    run([*common, "--out", out, "--stop-after-epochs", "2"], cache)
    run(["--resume", out], cache)
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    for tag, steps in (("eval/test/acc", [1, 2, 3, 4]), ("train/acc", [1, 2, 3, 4]), ("train/loss", [0, 1, 2, 3]),
                       ("train/lr", [0, 1, 2, 3])):
        assert [e.step for e in acc.Scalars(tag)] == steps, tag


def test_kill_and_resume_equals_an_uninterrupted_run(cache, tmp_path):
    common = ["--method", "snell", "--dataset", "demo", *FAST, "--epochs", "4", "--warmup-epochs", "1"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run([*common, "--out", whole], cache)
    run([*common, "--out", killed, "--stop-after-epochs", "2"], cache)
    assert not (killed / "results.json").exists() and (killed / "train_state.pt").exists()
    run(["--resume", killed], cache)
    a, b = (json.loads((d / "results.json").read_text()) for d in (whole, killed))
    for key in ("acc_last", "acc_best_test", "acc_best_test_epoch"):
        assert a[key] == b[key], key
    assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]
    from safetensors.torch import load_file

    ta, tb = load_file(str(whole / "adapter.safetensors")), load_file(str(killed / "adapter.safetensors"))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)  # bit-identical on the CPU


def test_clean_protocol_scores_val_at_the_last_epoch_and_eval_merge_agrees(cache, tmp_path, capsys):
    out = tmp_path / "clean"
    run(["--method", "hta", "--dataset", "demo", *FAST, "--epochs", "3", "--protocol", "clean", "--lr", "5e-3",
         "--method-args", "rank=2", "--out", out], cache)
    res = json.loads((out / "results.json").read_text())
    assert res["splits"]["train"]["name"] == "train800" and res["splits"]["val"]["name"] == "val200"
    # VTAB-style: stored bicubic (the papers' Resize((224, 224))), no augmentation, so no crop/resampling fields
    assert res["splits"]["train"]["resize"] == "bicubic" and res["train_aug"] == {"kind": "none"}
    assert res["acc_best_test"] is None and res["acc_val_last"] == res["history"][-1]["val_acc"]
    assert res["acc_last"] == res["history"][-1]["test_acc"] and res["method_args"]["rank"] == 2
    os.environ["VIT_PEFT_CACHE"] = str(cache)
    assert E.main(["--run", str(out), "--merge", "--device", "cpu"]) == 0
    stdout = capsys.readouterr().out
    accs = [float(line.split(": ")[1].split("%")[0]) for line in stdout.splitlines() if "% top-1" in line]
    assert len(accs) == 2 and abs(accs[0] - accs[1]) <= 0.01
    assert abs(accs[1] - res["acc_last"]) <= 0.01  # eval.py reproduces the run's own (merged) last-epoch number


@pytest.mark.parametrize("args,message", [
    (["--method", "lorra"], "unknown method 'lorra'"),
    (["--arch", "vit_bass"], "unknown arch"),
    (["--dataset", "cifarr"], "cifar"),
    (["--method-args", "rank"], "is not key=value"),
    (["--method", "hta", "--method-args", "rnak=2"], "bad arguments for method 'hta'"),
    (["--pretrained", "/nonexistent/ViT-B_16.npz"], "/nonexistent/ViT-B_16.npz"),
    (["--method", "hta", "--no-decay", "v_left,v_lft"], "no_decay: v_lft names no trainable parameter"),
    (["--device", "tpu"], "use cuda, cuda:N or cpu"),
    (["--method", "lora", "--method-args", "rank=0"], "lora: rank must be an integer >= 1, got 0"),
])
def test_bad_input_gives_one_clear_error_and_writes_nothing(args, message, cache, tmp_path):
    out = tmp_path / "bad"
    p = run(["--dataset", "demo", *FAST, "--epochs", "1", *args, "--out", out], cache, expect=2)
    assert message in p.stderr and "Traceback" not in p.stderr
    assert not (out / "results.json").exists()


def test_config_file_values_are_read_like_flags(cache, tmp_path):
    # YAML 1.1 reads 1e-3 as text: a config file's numbers, true/false and choices are converted as the flags are,
    # and a value that is none of them stops the run with one line naming the file and the option, nothing written
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 1e-3\nweight_decay: 5e-2\nepochs: '1'\neval_initial: yes\ngrad_clip: none\n")
    c = C.build(C.build_parser().parse_args(["--config", str(cfg)]))
    assert (c.lr, c.weight_decay, c.epochs, c.eval_initial, c.grad_clip) == (1e-3, 0.05, 1, True, None)
    run(["--dataset", "demo", *FAST, "--config", cfg, "--out", tmp_path / "ok"], cache)
    for text, message in (("epochs: ten", "epochs: 'ten' is not valid; it takes a whole number"),
                          ("batch_size: 2.5", "batch_size: 2.5 is not valid"),
                          ("eval_merged: maybe", "eval_merged: 'maybe' is not valid; it takes true or false"),
                          ("method_args: [1, 2]", "method_args: [1, 2] is not valid; it takes a mapping"),
                          ("seed:", "seed is empty"),
                          ("benchmark: vtab\ndefaults: {}", "python -m reproduce.taskcfg")):
        cfg.write_text(text + "\n")
        out = tmp_path / "bad"
        p = run(["--dataset", "demo", *FAST, "--config", cfg, "--out", out], cache, expect=2)
        assert message in p.stderr and str(cfg) in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert not out.exists()


def test_unwritable_out_resume_misuse_and_unreachable_weights_give_one_line(cache, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    p = run(["--dataset", "demo", *FAST, "--epochs", "1", "--out", blocker / "run"], cache, expect=2)
    assert "--out" in p.stderr and "cannot write there" in p.stderr and "Traceback" not in p.stderr
    # --resume takes the run's own options: other flags are refused, not silently ignored
    killed = tmp_path / "killed"
    run(["--method", "lora", "--method-args", "rank=2", "--dataset", "demo", *FAST, "--epochs", "2",
         "--out", killed, "--stop-after-epochs", "1"], cache)
    p = run(["--resume", killed, "--epochs", "5"], cache, expect=2)
    assert "drop --epochs" in p.stderr and not (killed / "results.json").exists()
    # a checkpoint whose tensors have other shapes (rank 4 here) is refused with one line
    other = tmp_path / "rank4"
    run(["--method", "lora", "--method-args", "rank=4", "--dataset", "demo", *FAST, "--epochs", "2",
         "--out", other, "--stop-after-epochs", "1"], cache)
    (other / "train_state.pt").write_bytes((killed / "train_state.pt").read_bytes())
    p = run(["--resume", other], cache, expect=2)
    assert "checkpoint does not match the model" in p.stderr and "Traceback" not in p.stderr
    # hub weights that cannot be fetched: one line naming them, exit 2 (not a traceback)
    import timm

    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("network unreachable")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    p = run(["--dataset", "demo", *FAST, "--arch", "vit_tiny_patch16_224", "--pretrained",
             "vit_tiny_patch16_224.augreg_in21k", "--epochs", "1", "--out", tmp_path / "hub"], cache, expect=2)
    assert "timm could not load the pretrained weights" in p.stderr and "Traceback" not in p.stderr
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    p = run(["--dataset", "demo", *FAST, "--pretrained", bad, "--epochs", "1", "--out", tmp_path / "npz"], cache,
            expect=2)
    assert f"{bad} is not a readable .npz" in p.stderr


def test_resume_continues_the_folder_it_is_given(cache, tmp_path, monkeypatch):
    # a run started with a relative --out, then copied: resuming the copy from elsewhere trains and writes the copy
    import shutil

    monkeypatch.chdir(tmp_path)
    run(["--method", "linear", "--dataset", "demo", *FAST, "--epochs", "2", "--out", "orig",
         "--stop-after-epochs", "1"], cache)
    before = (tmp_path / "orig" / "train_state.pt").read_bytes()
    shutil.copytree(tmp_path / "orig", tmp_path / "copy")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = json.loads((tmp_path / "copy" / "config.json").read_text())
    (tmp_path / "copy" / "config.json").write_text(json.dumps({**cfg, "device": "mps"}))  # saved on another host
    p = run(["--resume", tmp_path / "copy"], cache, expect=2)
    assert "device 'mps'" in p.stderr and "Traceback" not in p.stderr
    run(["--resume", tmp_path / "copy", "--device", "cpu"], cache)  # where it runs may change on a resume
    assert (tmp_path / "copy" / "results.json").exists() and not (tmp_path / "orig" / "results.json").exists()
    assert (tmp_path / "orig" / "train_state.pt").read_bytes() == before  # the original is untouched
    assert not (elsewhere / "orig").exists()


def test_nan_loss_stops_naming_epoch_and_step(cache, tmp_path):
    out = tmp_path / "nan"
    p = run(["--method", "full", "--dataset", "demo", *FAST, "--epochs", "2", "--warmup-epochs", "0",
             "--lr", "1e12", "--out", out], cache, expect=3)
    assert "epoch 1, step" in p.stderr and "lower --lr" in p.stderr
    assert not (out / "results.json").exists()


def test_finished_run_is_not_overwritten_without_flag(cache, tmp_path):
    out = tmp_path / "done"
    run(["--method", "linear", "--dataset", "demo", *FAST, "--epochs", "1", "--out", out], cache)
    before = (out / "results.json").read_text()
    p = run(["--method", "linear", "--dataset", "demo", *FAST, "--epochs", "1", "--out", out], cache, expect=2)
    assert "--overwrite" in p.stderr and (out / "results.json").read_text() == before
    run(["--method", "linear", "--dataset", "demo", *FAST, "--epochs", "1", "--out", out, "--overwrite"], cache)


def test_yaml_config_is_overridden_by_flags_and_unknown_keys_rejected(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 0.01\nbatch_size: 16\nmethod_args: {rank: 2, dropout: 0.1}\n")
    args = C.build_parser().parse_args(["--config", str(cfg), "--lr", "0.5", "--method-args", "dropout=0.2"])
    c = C.build(args)
    assert c.lr == 0.5 and c.batch_size == 16 and c.method_args == {"rank": 2, "dropout": 0.2}
    cfg.write_text("learning_rate: 0.01\n")
    with pytest.raises(RunError, match="learning_rate"):
        C.build(C.build_parser().parse_args(["--config", str(cfg)]))


def test_schedules_match_the_specs():
    cfg = C.RunConfig(lr=1e-3, epochs=100, warmup_epochs=10, schedule="per_epoch_timm", min_lr_factor=1e-6)
    lrs = [L.lr_at(cfg, 0, e, 32) for e in range(100)]
    # docs/methods/snell.md §11: e0 = e1 = 1e-6; e2 ≈ 1.01e-4; e11 ≈ 9.76e-4
    assert lrs[0] == lrs[1] == 1e-6 and abs(lrs[2] - 1.009e-4) < 1e-10 and abs(lrs[11] - 9.76e-4) < 1e-6
    cfg.schedule = "per_step"
    steps = 32
    assert L.lr_at(cfg, 0, 0, steps) == 0.0  # docs/methods/arc.md §7.1: the first update uses lr 0
    assert abs(L.lr_at(cfg, 160, 5, steps) - 0.5e-3) < 1e-12
    assert abs(L.lr_at(cfg, 320, 10, steps) - 1e-3) < 1e-12
    assert L.lr_at(cfg, 3199, 99, steps) < 1e-5 and L.lr_at(cfg, 10**6, 99, steps) == 1e-3 * 1e-6


def test_weight_decay_groups_exclude_biases_norms_and_tokens():
    import models

    m = models.create_model("vit_micro_patch8", "full", num_classes=3, img_size=32)
    decay, no_decay = L.param_groups(m, 0.1, "matrices")
    names = {id(p): n for n, p in m.named_parameters()}
    assert all(p.ndim > 1 for p in decay["params"])
    excluded = {names[id(p)] for p in no_decay["params"]}
    assert {"cls_token", "pos_embed", "head.bias", "norm.weight", "blocks.0.attn.q.bias"} <= excluded
    assert len(L.param_groups(m, 0.1, "all")) == 1


def test_no_decay_exempts_named_parameters_in_any_scope(tmp_path):
    # docs/methods/hta.md §5.2: weight decay on all trainable tensors, with a config flag to exclude HTA's v and d
    import models

    m = models.create_model("vit_micro_patch8", "hta", num_classes=3, img_size=32)
    names = {id(p): n for n, p in m.named_parameters()}
    for scope in ("all", "matrices"):
        groups = L.param_groups(m, 0.1, scope, ("v_left", "v_right", "d"))
        decay = {names[id(p)].rsplit(".", 1)[-1] for p in groups[0]["params"]}
        exempt = {names[id(p)].rsplit(".", 1)[-1] for p in groups[1]["params"]}
        assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
        assert {"v_left", "v_right", "d"} <= exempt and {"v_left", "v_right", "d"}.isdisjoint(decay)
        assert {"down", "up"} <= decay and ("bias" in decay) == (scope == "all")  # the rest as the scope says
    assert len(L.param_groups(m, 0.1, "all")[0]["params"]) == sum(p.requires_grad for p in m.parameters())
    cfg = tmp_path / "c.yaml"
    cfg.write_text("no_decay: [v_left, v_right, d]\n")
    parse = C.build_parser().parse_args
    assert C.build(parse(["--config", str(cfg)])).no_decay == ("v_left", "v_right", "d")
    assert C.build(C.build_parser().parse_args(["--no-decay", "v_left,d"])).no_decay == ("v_left", "d")
    cfg.write_text("no_decay: 3\n")
    with pytest.raises(RunError, match="no_decay must be a list of parameter names"):
        C.build(C.build_parser().parse_args(["--config", str(cfg)]))


def test_no_arguments_trains_hta_on_the_demo_from_a_clean_checkout(tmp_path):
    """`python train.py` exactly as the README says, in a copy of the tracked sources (so no runs/ is left here)."""
    import shutil

    repo = tmp_path / "checkout"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    for f in files + ["train.py", "eval.py"]:
        if (ROOT / f).is_file():
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, repo / f)
    env = dict(os.environ, VIT_PEFT_CACHE=str(tmp_path / "cache"))
    p = subprocess.run([sys.executable, "train.py"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    runs = list((repo / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("demo_shape_hta_")
    res = json.loads((runs[0] / "results.json").read_text())
    assert res["method"] == "hta" and res["dataset"] == "demo_shape"
    assert res["acc_last"] > 50.0  # 4 classes; HTA on a random frozen micro-ViT still learns the shapes
    assert f"results: {runs[0] / 'results.json'}" in p.stdout and "tensorboard --logdir" in p.stdout


def test_compiled_training_forward_trains_as_the_eager_one(cache, tmp_path):
    """--compile (reproduce/sweep.sh COMPILE=...): torch.compile of the training forward (inductor on the CPU here;
    CUDA graphs with reduce-overhead) must train the same model. Batch 64 over the 1,000 demo images gives the two
    batch shapes of a real run (15 × 64 + 40)."""
    from torch._dynamo.utils import counters

    results, graphs = {}, {}
    for mode in ("none", "default"):
        out = tmp_path / mode
        torch._dynamo.reset()  # a graph compiled by an earlier test (dynamo.explain) would be reused, not counted
        counters.clear()
        run(["--method", "hta", "--dataset", "demo", *FAST, "--batch-size", "64", "--epochs", "2",
             "--method-args", "dropout=0", "--compile", mode, "--out", out], cache)
        results[mode] = json.loads((out / "results.json").read_text())
        graphs[mode] = counters["stats"]["unique_graphs"]
    assert graphs["none"] == 0 and graphs["default"] >= 1  # the compiled run really ran a captured graph
    assert [results[m]["compile"] for m in ("none", "default")] == ["none", "default"]
    assert results["default"]["method_args"]["dropout"] == 0
    eager, compiled = ([h["loss"] for h in results[m]["history"]] for m in ("none", "default"))
    assert len(eager) == 2 and eager[1] < eager[0]
    assert compiled == pytest.approx(eager, rel=1e-4)  # the same arithmetic, fused: rounding apart only


def test_each_evaluation_reports_one_line_in_a_log(cache, tmp_path):
    # not a terminal (captured): one summary line per evaluation on stderr, none per batch; stdout as before
    p = run(["--method", "linear", "--dataset", "demo", *FAST, "--epochs", "3", "--eval-every", "2", "--eval-last", "1",
             "--out", tmp_path / "r"], cache)
    lines = [line for line in p.stderr.splitlines() if line.startswith("evaluat")]
    assert len(lines) == 2 and all(line.startswith("evaluated demo test: 300 images in ") for line in lines), lines
    assert not [line for line in p.stdout.splitlines() if line.startswith("evaluat")]
