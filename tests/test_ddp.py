"""torchrun data parallelism on the CPU (gloo): two processes train as one at the same global batch, a killed rank's
run resumes and ends where an uninterrupted one ends, and bad input stops every rank with one line."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from test_train import FAST, ROOT, run

# LoRA on the demo task, global batch 10: 100 steps per epoch, long enough to kill a rank inside an epoch
RUN = ["--method", "lora", "--dataset", "demo", *[a for a in FAST if a not in ("--batch-size", "50")],
       "--batch-size", "10", "--epochs", "4"]


def torchrun(args, cache, **kw) -> subprocess.Popen:
    env = dict(os.environ, VIT_PEFT_CACHE=str(cache), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "train.py", *map(str, args)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def step_losses(out) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    return [e.value for e in acc.Scalars("train/loss")]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("ddp") / "two"
    p = torchrun([*RUN, "--out", out], cache)
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0, stderr[-3000:]
    return out, stdout


def test_two_processes_train_as_one_at_the_same_global_batch(two_processes, cache, tmp_path):
    out, stdout = two_processes
    assert "2 processes (global batch 10)" in stdout and stdout.count("epoch 4/4") == 1  # rank 0 alone prints
    two = json.loads((out / "results.json").read_text())
    one_out = tmp_path / "one"
    run([*RUN, "--out", one_out], cache)
    one = json.loads((one_out / "results.json").read_text())
    assert (two["world_size"], one["world_size"]) == (2, 1)
    assert abs(two["acc_last"] - one["acc_last"]) <= 3.0  # 300 test images: within a few points (same here)
    # Every step's loss of the global batch, as one process computes it. Not bit-equal: each rank sums its slice's
    # cross-entropy and the ranks' sums and gradients are added in another order than one batch's mean (float
    # addition is not associative). Over the first epoch that rounding stays below 1e-6 relative (1e-5 allowed; a
    # wrong loss scale or a wrong shard is off by more than 1e-1 at the first step); AdamW at lr 1e-2 then carries
    # it forward and the two trajectories drift apart slowly (measured 2e-4 by step 200, 1e-2 by step 400), as two
    # one-process runs on different hardware would.
    a, b = step_losses(out), step_losses(one_out)
    assert len(a) == len(b) == 4 * 100
    rel = [abs(x - y) / abs(y) for x, y in zip(a, b)]
    assert max(rel[:100]) < 1e-5 and max(rel) < 5e-2, (max(rel[:100]), max(rel))
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".lock"]  # rank 0 wrote alone


def test_a_killed_rank_is_resumed_and_ends_as_the_uninterrupted_run(two_processes, cache, tmp_path):
    out = tmp_path / "killed"
    p = torchrun([*RUN, "--out", out], cache)
    deadline = time.time() + 120
    while not (out / "train_state.pt").exists():  # one epoch checkpointed: the kill lands inside a later one
        assert p.poll() is None and time.time() < deadline, p.communicate()
        time.sleep(0.1)
    workers = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    os.kill(int(workers[1]), signal.SIGKILL)
    p.communicate(timeout=120)
    assert p.returncode != 0 and not (out / "results.json").exists()
    resumed = torchrun(["--resume", out], cache)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    ref = json.loads((two_processes[0] / "results.json").read_text())
    assert res["world_size"] == 2 and [r["epoch"] for r in res["history"]] == [1, 2, 3, 4]
    assert [r["loss"] for r in res["history"]] == [r["loss"] for r in ref["history"]]  # bit-identical on the CPU
    assert res["acc_last"] == ref["acc_last"]


@pytest.mark.parametrize("rank,lines", [(0, 1), (1, 0)])
def test_a_global_batch_that_does_not_divide_stops_every_rank_with_one_line(rank, lines, cache, tmp_path,
                                                                             monkeypatch):
    # what each process torchrun starts sees (torchrun itself then reports its failed workers in its own words)
    for key, value in (("RANK", rank), ("LOCAL_RANK", rank), ("WORLD_SIZE", 2)):
        monkeypatch.setenv(key, str(value))
    p = run([*RUN, "--batch-size", "11", "--out", tmp_path / "run"], cache, expect=2)
    errors = [line for line in p.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == lines and not (tmp_path / "run").exists()
    if lines:
        assert errors[0] == ("error: --batch-size 11 is the global batch and must divide by the 2 processes torchrun "
                             "started; use --batch-size 10 or another --nproc_per_node")


def test_resuming_with_another_number_of_processes_is_refused(two_processes, cache, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(two_processes[0], copy)
    (copy / "results.json").unlink()
    p = run(["--resume", copy], cache, expect=2)
    assert "was written by 2 process(es) and this resume has 1; continue it with torchrun --nproc_per_node=2" in \
        p.stderr
