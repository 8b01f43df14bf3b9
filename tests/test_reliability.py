"""Bad input and faults: one ``error:`` line naming the file or option and the fix, a non-zero exit, nothing written
or lost. The table below is where the next case found is added (one line)."""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine import config as C
from test_train import FAST, ROOT, run

DEMO = ["--dataset", "demo", *FAST, "--epochs", "1"]


def _out_of_range_cases():
    """For every option with a declared range: one value below it and (where bounded) one above, each refused with
    the option's name; generated from engine/config.py, so a new option's range is covered by declaring it."""
    cases = []
    for name, f in C.FIELDS.items():
        m = f.metadata
        if m["low"] is None and m["high"] is None:
            continue
        flag = C.flag_name(name)
        low = m["low"] if m["low_open"] else m["low"] - (1 if isinstance(f.default, int) or name in (
            "img_size", "epochs", "warmup_epochs", "data_workers") else 0.5)
        cases.append(pytest.param([flag, str(low)], f"{name} must be", id=f"{name}-below"))
        if m["high"] is not None:
            high = m["high"] if m["high_open"] else m["high"] + 1
            cases.append(pytest.param([flag, str(high)], f"{name} must be", id=f"{name}-above"))
    return cases


def _bad_choice_cases():
    return [pytest.param([C.flag_name(name), "nope"], f"argument {C.flag_name(name)}", id=f"{name}-choice")
            for name in C.CHOICES]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_files")
    rng = __import__("random").Random(0)
    (d / "random.safetensors").write_bytes(bytes(rng.randrange(256) for _ in range(1000)))
    (d / "empty.safetensors").write_bytes(b"")
    (d / "random.pth").write_bytes(bytes(rng.randrange(256) for _ in range(5000)))
    (d / "random.npz").write_bytes(b"not a zip")
    (d / "weights_folder").mkdir()
    (d / "broken.yaml").write_text("lr: [1, 2\nepochs: 3\n")
    (d / "sweep.yaml").write_text("benchmark: vtab\ndefaults: {}\n")
    return d


BAD_INPUT = [  # (train.py arguments, a fragment of the one error line); exit 2 and nothing written for each
    *_out_of_range_cases(),
    *_bad_choice_cases(),
    (["--grad-clip", "-1"], "grad_clip must be >= 0, got -1.0"),
    (["--drop-path-rate", "2"], "drop_path_rate must be a number in [0, 1), got 2.0"),
    (["--lr", "nan"], "lr must be > 0"),
    (["--lr", "inf"], "lr must be > 0, got inf"),
    (["--weight-decay", "inf"], "weight_decay must be >= 0, got inf"),
    (["--epochs", "ten"], "argument --epochs: invalid int value: 'ten'"),
    (["--pretrained", "{d}/random.safetensors"], "random.safetensors is not a readable .safetensors file"),
    (["--pretrained", "{d}/empty.safetensors"], "empty.safetensors is not a readable .safetensors file"),
    (["--pretrained", "{d}/random.pth"], "random.pth could not be read as a PyTorch state dict of tensors"),
    (["--pretrained", "{d}/random.npz"], "random.npz is not a readable .npz"),
    (["--pretrained", "{d}/weights_folder"], "weights_folder is a folder; give a weight file in it"),
    (["--config", "{d}/broken.yaml"], "broken.yaml: not valid YAML at line 2, column 7"),
    (["--config", "{d}/sweep.yaml"], "python -m reproduce.taskcfg"),
    (["--config", "{d}/missing.yaml"], "missing.yaml: file not found"),
    (["--method", "lorra"], "unknown method 'lorra'"),
    (["--method-args", "rank"], "is not key=value"),
    (["--method", "hta", "--method-args", "rnak=2"], "bad arguments for method 'hta'"),
    (["--device", "tpu"], "use cuda, cuda:N or cpu"),
    (["--dataset", "cifarr"], "Did you mean 'cifar'"),
    (["--unknown-flag", "1"], "unrecognized arguments: --unknown-flag 1"),
]


@pytest.mark.parametrize("args,fragment", BAD_INPUT)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, fragment, bad_files, cache, tmp_path):
    out = tmp_path / "run"
    args = [a.replace("{d}", str(bad_files)) for a in args]
    err = run([*DEMO, *args, "--out", out], cache, expect=2).stderr
    errors = [line for line in err.splitlines() if line.startswith("error")]  # a first decode's two lines apart
    assert len(errors) == 1 and fragment in errors[0] and err.endswith(errors[0] + "\n"), err
    assert "Traceback" not in err
    assert not out.exists(), sorted(out.rglob("*"))


def test_a_bad_choice_names_the_choices_and_the_help(cache, tmp_path):
    err = run([*DEMO, "--opt", "adam", "--out", tmp_path / "run"], cache, expect=2).stderr
    assert err.startswith("error: argument --optimizer/--opt: invalid choice: 'adam' (choose from 'adamw', 'sgd')")
    assert err.rstrip().endswith("--help)") and err.count("\n") == 1


def test_out_of_range_values_in_a_config_file_are_refused_like_flags(cache, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("grad_clip: -1\n")
    p = run([*DEMO, "--config", cfg, "--out", tmp_path / "run"], cache, expect=2)
    assert "grad_clip must be >= 0" in p.stderr and not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------- concurrency
def test_a_second_run_into_the_same_folder_is_refused_naming_the_first(cache, tmp_path):
    out = tmp_path / "busy"
    env = dict(os.environ, VIT_PEFT_CACHE=str(cache))
    first = subprocess.Popen([sys.executable, "train.py", *DEMO[:-1], "60", "--method", "linear", "--out", str(out)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "train_state.pt").exists():  # the first run holds the lock and has written a checkpoint
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.1)
        p = run([*DEMO, "--method", "lora", "--out", out], cache, expect=2)
        assert f"--out {out} is in use by another run (pid {first.pid}" in p.stderr and p.stderr.count("\n") == 1
        p = run(["--resume", out], cache, expect=2)  # a resume of the unfinished run too
        assert f"pid {first.pid}" in p.stderr
    finally:
        stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    res = json.loads((out / "results.json").read_text())
    assert res["method"] == "linear" and res["epochs"] == 60  # the first run's result, whole
    run([*DEMO, "--method", "lora", "--out", out, "--overwrite"], cache)  # free again once it ended


def test_a_killed_runs_lock_does_not_block_its_resume(cache, tmp_path):
    out = tmp_path / "killed"
    env = dict(os.environ, VIT_PEFT_CACHE=str(cache))
    proc = subprocess.Popen([sys.executable, "train.py", *DEMO[:-1], "200", "--method", "linear", "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "train_state.pt").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)  # the OS releases its flock with the process
    proc.wait()
    assert (out / ".lock").exists() and not (out / "results.json").exists()
    p = run(["--resume", out, "--stop-after-epochs", "3"], cache)
    assert "in use" not in p.stderr


# ----------------------------------------------------------------------------------------------------- full disks
def _enospc(*_, **__):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_in_out_stops_with_one_line_and_keeps_the_last_checkpoint(cache, tmp_path, monkeypatch):
    from engine import rundir

    out = tmp_path / "full"
    args = ["--dataset", "demo", *FAST, "--epochs", "3", "--method", "lora", "--out", out]
    saves = []
    real_save = torch.save

    def save_then_fill(obj, f, *a, **kw):  # the disk fills up while the second checkpoint file is written
        if isinstance(f, (str, Path)):
            saves.append(f)
        if len(saves) == 2 and isinstance(f, (str, Path)):
            Path(f).write_bytes(b"partial")
            _enospc()
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(rundir.torch, "save", save_then_fill)
    p = run(args, cache, expect=2)
    errors = [line for line in p.stderr.splitlines() if line.startswith("error")]  # a first decode's lines apart
    assert errors == [f"error: --out {out}: no space left on device while writing train_state.pt; free space "
                      f"there, then continue with python train.py --resume {out}"], p.stderr
    monkeypatch.setattr(rundir.torch, "save", real_save)
    left = sorted(x.name for x in out.iterdir())
    assert left == [".lock", "adapter.safetensors", "config.json", "tb", "train_state.pt"], left  # no temp file
    assert not [x for x in out.iterdir() if ".tmp" in x.name]
    run(["--resume", out], cache)  # the epoch-1 checkpoint is whole: the run continues and finishes
    assert json.loads((out / "results.json").read_text())["history"][-1]["epoch"] == 3


def test_a_full_disk_while_caching_images_is_one_line_and_leaves_no_temp_file(tmp_path, monkeypatch):
    from engine.data import build_data

    cache = tmp_path / "cache"
    monkeypatch.setattr(os, "posix_fallocate", _enospc, raising=False)
    cfg = C.build(C.build_parser().parse_args([*DEMO, "--cache-dir", str(cache), "--device", "cpu",
                                               "--out", str(tmp_path / "r")]))
    with pytest.raises(ValueError, match="no space left on device for the decoded images") as e:
        build_data(dataclasses.replace(cfg, data_root=str(tmp_path / "demo")))
    assert "\n" not in str(e.value) and "--cache-dir" in str(e.value)
    assert not [p for p in cache.rglob("*") if p.is_file() and p.suffix in (".tmp", ".npy")]


# ---------------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture
def stopped_run(cache, tmp_path):
    out = tmp_path / "stopped"
    run(["--dataset", "demo", *FAST, "--epochs", "3", "--method", "lora", "--out", out, "--stop-after-epochs", "1"],
        cache)
    return out


@pytest.mark.parametrize("damage,why", [
    (lambda b: b[: len(b) // 2], "unreadable"),
    (lambda b: b"", "unreadable"),
    (None, "SHA-256 mismatch"),
])
def test_a_damaged_checkpoint_is_reported_not_loaded(stopped_run, cache, damage, why):
    ckpt = stopped_run / "train_state.pt"
    if damage is None:  # a payload altered after it was sealed: complete archive, wrong content
        sealed = torch.load(ckpt, weights_only=True)
        payload = bytearray(sealed["payload"])
        payload[len(payload) // 2] ^= 0xFF
        torch.save({**sealed, "payload": bytes(payload)}, ckpt)
    else:
        ckpt.write_bytes(damage(ckpt.read_bytes()))
    p = run(["--resume", stopped_run], cache, expect=2)
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert f"{ckpt}: the checkpoint is corrupt ({why}" in p.stderr and "--overwrite" in p.stderr
    assert not (stopped_run / "results.json").exists()


def test_a_damaged_config_json_is_reported_on_resume(stopped_run, cache):
    (stopped_run / "config.json").write_text("{not json")
    p = run(["--resume", stopped_run], cache, expect=2)
    assert "its config.json is missing or damaged" in p.stderr and p.stderr.count("\n") == 1


# ------------------------------------------------------------------------------------------------------ the cache
def test_a_killed_cache_build_leaves_a_temp_file_the_next_build_removes(tmp_path):
    final = tmp_path / "cache" / "vtab" / "demo" / "train800.npy"
    code = (f"import os, signal; from pathlib import Path; from data.cache import ArrayWriter; "
            f"w = ArrayWriter(Path({str(final)!r}), (64, 3, 32, 32)); w.array[:10] = 1; "
            "os.kill(os.getpid(), signal.SIGKILL)")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=120)
    assert p.returncode == -signal.SIGKILL
    stale = [x for x in final.parent.iterdir() if x.name.startswith(f".{final.name}.")]
    assert len(stale) == 1 and stale[0].stat().st_size >= 64 * 3 * 32 * 32  # a full-size temp array, left behind
    from data.cache import ArrayWriter

    with ArrayWriter(final, (2, 3, 32, 32)) as w:  # the next build
        assert not stale[0].exists()
        w.commit()
    assert [x.name for x in final.parent.iterdir()] == [final.name]


def test_stale_temp_removal_spares_live_writers_and_other_hosts(tmp_path):
    from util import files

    final = tmp_path / "x.npy"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = files.socket.gethostname().replace(".", "_")
    names = [f".x.npy.{host}-{dead.pid}.a.tmp", f".x.npy.{host}-{os.getpid()}.b.tmp",
             f".x.npy.otherhost-{dead.pid}.c.tmp"]
    for n in names:
        (tmp_path / n).write_text("")
    assert [p.name for p in files.remove_stale_temps(final)] == [names[0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])


# ------------------------------------------------------------------------------------------------------- eval.py
@pytest.mark.parametrize("damage,fragment", [
    ("adapter.safetensors", "adapter.safetensors is not a readable .safetensors file"),
    ("config.json", "config.json is damaged"),
])
def test_eval_of_a_damaged_run_is_one_line(stopped_run, damage, fragment, capsys):
    import eval as E

    (stopped_run / damage).write_bytes(b"\x00garbage")
    assert E.main(["--run", str(stopped_run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and err.startswith("error: ")
