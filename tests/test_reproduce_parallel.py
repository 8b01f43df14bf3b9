"""Parallel sweeps (reproduce/sweep.sh + reproduce/launch.py) on the CPU: JOBS runs at once with GPUS pinning, a failed
run that leaves the others alone, the submitit array (LAUNCHER=slurm dry run, LAUNCHER=local to the end), and the bad
knobs that stop a sweep before it starts. Every sweep: householder_vtab.sh on a generated VTAB tree, EPOCHS=1, the
2-block vit_micro_patch8, 32 px (as tests/test_reproduce_smoke.py)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_reproduce_smoke import make_vtab_tree

from reproduce import launch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "reproduce/householder_vtab.sh")
PARALLEL_KNOBS = ("JOBS", "GPUS", "LAUNCHER", "FAIL_FAST", "SLURM_JOB_ID", *launch.SLURM_KNOBS)


def _env(tmp_path: Path, **knobs: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in PARALLEL_KNOBS}  # none inherited from the caller
    return {**base, "TASKS": "cifar dtd", "EPOCHS": "1", "ARCH": "vit_micro_patch8", "WEIGHTS": "none",
            "IMG_SIZE": "32", "VTAB_ROOT": str(tmp_path / "vtab"), "OUT": str(tmp_path / "runs"),
            "VIT_PEFT_CACHE": str(tmp_path / "cache"), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", **knobs}


def _sweep(env: dict, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _run(tmp_path: Path, task: str) -> Path:
    return tmp_path / "runs" / "hta_vtab" / task / "seed42"


def _fake_devices(tmp_path: Path, n: int = 8) -> str:
    """A PYTHON for the sweep: this interpreter, except that launch.py's device check counts ``n`` CUDA devices (this
    machine has none), so that GPUS is accepted and its pinning can be seen in each run's train.log stamp."""
    wrapper = tmp_path / "python"
    wrapper.write_text(
        "#!/usr/bin/env bash\n"
        'if [ "${1:-} ${2:-} ${3:-}" = "-m reproduce.launch check" ]; then shift 3\n'
        f"  exec {sys.executable} -c 'import sys; from reproduce import launch as L; L._device_count = lambda: {n}; "
        "sys.exit(L.main([\"check\", *sys.argv[1:]]))' \"$@\"\nfi\n"
        f'exec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def _table(p: subprocess.CompletedProcess, runs: int) -> str:
    assert f"hta_vtab: {runs} run(s)" in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]
    table = p.stdout[p.stdout.index(f"hta_vtab: {runs} run(s)"):]
    assert "ours: test-selected (paper protocol)" in table and "mean_19 = plain mean" in table
    return table


def test_jobs_run_at_once_each_on_its_gpu_then_verify(tmp_path):
    """GPUS=5,7 alone: JOBS defaults to 2; both runs train at the same time (each run's interval from its command.txt,
    written just before it starts, to its results.json: they overlap, which one-after-another never does), each with
    its own CUDA_VISIBLE_DEVICES (the sweep's stamp in train.log), and the table verifies both."""
    make_vtab_tree(tmp_path / "vtab", ["cifar", "dtd"])
    p = _sweep(_env(tmp_path, GPUS="5,7", PYTHON=_fake_devices(tmp_path)))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "2 runs at once, on GPUs 5,7 (CUDA_VISIBLE_DEVICES per run)" in p.stdout
    lines = p.stdout.splitlines()
    started = [i for i, line in enumerate(lines) if re.match(r"-- (cifar|dtd)/seed42: started", line)]
    finished = [i for i, line in enumerate(lines) if re.match(r"-- (cifar|dtd)/seed42: finished", line)]
    assert len(started) == 2 and len(finished) == 2 and max(started) < min(finished)
    spans, devices = [], []
    for task in ("cifar", "dtd"):
        run = _run(tmp_path, task)
        res = json.loads((run / "results.json").read_text())
        assert (res["dataset"], res["epochs"]) == (task, 1) and res["acc_last"] is not None
        spans.append(((run / "command.txt").stat().st_mtime, (run / "results.json").stat().st_mtime))
        log = (run / "train.log").read_text()
        devices += re.findall(r"^== \d{4}-\d\d-\d\d [\d:]{8} start on .*, CUDA_VISIBLE_DEVICES=(\S+)$", log, re.M)
        assert "epoch 1/1" in log and "done: last-epoch test accuracy" in log
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans  # the two intervals overlap
    assert sorted(devices) == ["5", "7"]
    table = _table(p, 2)
    assert [line.split()[0] for line in table.splitlines() if line.split()[:1] in (["cifar"], ["dtd"])] == \
        ["cifar", "dtd"]
    again = _sweep(_env(tmp_path, JOBS="2"))  # resumable as before: nothing left to run
    assert again.returncode == 0 and again.stdout.count("skipped") == 2 and "started" not in again.stdout


def test_a_failed_run_leaves_the_others_and_is_named_with_its_log(tmp_path):
    """dtd's data is broken (a split file one line short, found by the data package when train.py loads it): its
    run fails, cifar's finishes and is verified, and the end names dtd's run with its log; exit 1 as before."""
    make_vtab_tree(tmp_path / "vtab", ["cifar", "dtd"])
    split = tmp_path / "vtab" / "dtd" / "train800val200.txt"
    split.write_text("".join(split.read_text().splitlines(keepends=True)[:-1]))
    p = _sweep(_env(tmp_path, JOBS="2"))
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
    assert (_run(tmp_path, "cifar") / "results.json").exists()
    assert not (_run(tmp_path, "dtd") / "results.json").exists()
    log = _run(tmp_path, "dtd") / "train.log"
    assert f"!! dtd/seed42 failed (exit 2); log: {log}" in p.stderr
    assert p.stderr.rstrip().splitlines()[-2:] == ["failed runs (1), each with its log:", f"  dtd/seed42: {log}"]
    assert "error:" in log.read_text()  # train.py's one line on the bad split is in that log
    table = _table(p, 1)
    assert re.search(r"^cifar\s", table, re.M)


def test_slurm_dry_run_prints_the_array_and_trains_nothing(tmp_path):
    env = _env(tmp_path, LAUNCHER="slurm", SLURM_PARTITION="gpu", SLURM_ACCOUNT="vision", SLURM_TIME="4:00:00",
               SLURM_CPUS_PER_TASK="8", SLURM_MEM="64G", VTAB_ROOT=str(tmp_path / "nowhere"))
    p = _sweep(env, "--dry-run", timeout=120)
    assert p.returncode == 0, p.stderr
    folder = tmp_path / "runs" / "hta_vtab" / "submitit"
    assert f"== one job array of 2 task(s), one run each, on SLURM; submitit logs in {folder}" in p.stdout
    params = ("job_name=hta_vtab, time=240, gpus_per_task=1, cpus_per_task=8, mem=64G, partition=gpu, account=vision, "
              "nodes=1, ntasks_per_node=1, array_parallelism=2")
    assert f"   executor parameters: {params}" in p.stdout
    for line in ("--array=0-1%2", "--partition=gpu", "--account=vision", "--time=240", "--gpus-per-task=1",
                 "--cpus-per-task=8", "--mem=64G", "--job-name=hta_vtab"):
        assert f"   #SBATCH {line}\n" in p.stdout, line
    tasks = [line for line in p.stdout.splitlines() if line.startswith("   task ")]
    assert [t.split(":")[0] for t in tasks] == ["   task 0 (cifar/seed42)", "   task 1 (dtd/seed42)"]
    for t, task in zip(tasks, ("cifar", "dtd")):
        log = _run(tmp_path, task) / "train.log"
        assert f"&& exec python train.py --config {_run(tmp_path, task)}/config.yaml --dataset {task} " in t
        assert t.endswith(f" >> {log} 2>&1")
    assert not (tmp_path / "runs").exists()  # nothing written, nothing submitted
    one = _sweep({**env, "JOBS": "1", "TASKS": "dtd"}, "--dry-run", timeout=120)  # one run: one job, no array
    assert one.returncode == 0 and "one job array of 1 task(s)" in one.stdout and "--array" not in one.stdout


def test_local_launcher_runs_the_array_to_the_end(tmp_path):
    """LAUNCHER=local: the same submission through submitit's LocalExecutor, waited for; both runs end with their
    results.json, the table follows, submitit's own logs are under $OUT."""
    make_vtab_tree(tmp_path / "vtab", ["cifar", "dtd"])
    p = _sweep(_env(tmp_path, LAUNCHER="local"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "== one job array of 2 task(s), one run each, on this machine" in p.stdout
    for task in ("cifar", "dtd"):
        assert re.search(rf"^-- {task}/seed42: finished \(task \d+\)$", p.stdout, re.M), task
        run = _run(tmp_path, task)
        assert json.loads((run / "results.json").read_text())["dataset"] == task
        assert re.search(r"^== .* start on .*$", (run / "train.log").read_text(), re.M)
    assert len(list((tmp_path / "runs" / "hta_vtab" / "submitit").glob("*_0_log.out"))) == 2
    _table(p, 2)


@pytest.mark.parametrize("knobs,message", [
    ({"JOBS": "0"}, "error: JOBS=0: use a whole number >= 1 (runs at once)"),
    ({"JOBS": "two"}, "error: JOBS=two: use a whole number >= 1"),
    ({"GPUS": "0,1"}, "error: GPUS=0,1: this machine shows no CUDA device (torch.cuda.device_count())"),
    ({"GPUS": "0,0"}, "error: GPUS=0,0: a device is listed twice"),
    ({"LAUNCHER": "pbs"}, "error: LAUNCHER=pbs: use slurm"),
    ({"SLURM_PARTITION": "gpu"}, "error: SLURM_PARTITION=gpu is set but LAUNCHER is not slurm: add LAUNCHER=slurm"),
    ({"LAUNCHER": "slurm"}, "error: LAUNCHER=slurm: no sbatch/srun on this machine"),
    ({"LAUNCHER": "slurm", "SLURM_TIME": "2h"}, "error: SLURM_TIME=2h: use minutes (240), H:MM:SS (4:00:00)"),
    ({"LAUNCHER": "slurm", "GPUS": "0"}, "error: GPUS=0 with LAUNCHER=slurm: SLURM gives each task its devices"),
    ({"LAUNCHER": "local", "JOBS": "2"}, "error: JOBS=2 with LAUNCHER=local: submitit's LocalExecutor starts every"),
    ({"LAUNCHER": "local", "FAIL_FAST": "1"}, "error: FAIL_FAST=1 with LAUNCHER=local"),
], ids=lambda v: " ".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else "msg")
def test_bad_parallel_knobs_stop_the_sweep_before_anything(tmp_path, knobs, message):
    make_vtab_tree(tmp_path / "vtab", ["cifar", "dtd"])
    p = _sweep(_env(tmp_path, **knobs), timeout=120)
    assert p.returncode == 2 and p.stdout == "", (p.stdout, p.stderr)
    assert p.stderr.splitlines() == [p.stderr.strip()] and p.stderr.startswith(message), p.stderr
    assert not (tmp_path / "runs").exists()


def test_a_rerun_while_the_sweeps_slurm_array_is_queued_is_refused(tmp_path):
    """After LAUNCHER=slurm submitted an array, running the sweep again before it has finished would start its
    unfinished runs a second time: while squeue (a stand-in here) still lists the array, one error line, exit 2."""
    make_vtab_tree(tmp_path / "vtab", ["cifar", "dtd"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text('#!/bin/sh\n[ "$3" = 4242 ] && echo 4242_1\nexit 0\n')  # squeue -h -j ID
    (bin_dir / "squeue").chmod(0o755)
    folder = tmp_path / "runs" / "hta_vtab" / "submitit"
    folder.mkdir(parents=True)
    (folder / "last_array").write_text("4242\n")
    env = _env(tmp_path, PATH=f"{bin_dir}:{os.environ['PATH']}")
    p = _sweep(env, timeout=120)
    assert p.returncode == 2 and p.stdout == "", (p.stdout, p.stderr)
    assert p.stderr.splitlines() == [p.stderr.strip()]
    assert p.stderr.startswith("error: the SLURM array 4242 of this sweep is still queued or running (squeue -j 4242)")
    assert sorted(x.name for x in (tmp_path / "runs" / "hta_vtab").iterdir()) == ["submitit"]  # no run started
    (folder / "last_array").write_text("17\n")  # an array squeue no longer lists: the sweep may go on
    ok = subprocess.run([sys.executable, "-m", "reproduce.launch", "check", "--folder", str(folder)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout == "none 1 -\n", ok.stderr


def test_knob_rules(monkeypatch):
    """launch.read_knobs without a sweep: defaults, GPUS through an inherited CUDA_VISIBLE_DEVICES, SLURM_TIME forms,
    and SLURM_* names that SLURM itself sets inside a job (not a user's mistake there)."""
    monkeypatch.setattr(launch, "_device_count", lambda: 4)
    plan = launch.read_knobs({})
    assert (plan.launcher, plan.jobs, plan.devices) == ("none", 1, [])
    plan = launch.read_knobs({"GPUS": "0,1,2,3"})
    assert (plan.jobs, plan.devices) == (4, ["0", "1", "2", "3"])  # JOBS defaults to one run per device
    assert launch.read_knobs({"GPUS": "0 1", "JOBS": "4"}).jobs == 4  # two runs per device
    # e.g. a SLURM job's devices (torch then counts those 4): GPUS indexes into them
    assert launch.read_knobs({"GPUS": "1,3", "CUDA_VISIBLE_DEVICES": "4,5,6,7"}).devices == ["5", "7"]
    with pytest.raises(launch.KnobError, match=r"GPUS=1,4: this machine shows 4 CUDA device\(s\), 0..3 .* no device 4"):
        launch.read_knobs({"GPUS": "1,4"})
    assert [launch.slurm_minutes(v) for v in ("90", "4:00:00", "0:00:30", "1-12:00:00")] == [90, 240, 1, 2160]
    for bad in ("0", "4:00", "1h", "0:00:00"):
        with pytest.raises(launch.KnobError, match="SLURM_TIME"):
            launch.slurm_minutes(bad)
    # inside a SLURM job (SLURM_JOB_ID set), SLURM_CPUS_PER_TASK etc. are SLURM's own: the default launcher runs
    assert launch.read_knobs({"SLURM_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "8", "JOBS": "2"}).jobs == 2
    plan = launch.read_knobs({"LAUNCHER": "slurm", "SLURM_GPUS_PER_TASK": "0", "JOBS": "3"}, dry_run=True)
    assert plan.slurm == {"time": 1440} and launch.executor_parameters(plan, "x", 10)["array_parallelism"] == 3
    assert launch.executor_parameters(launch.read_knobs({"LAUNCHER": "local"}), "x", 2) == \
        {"timeout_min": launch.LOCAL_TIMEOUT_MIN, "stderr_to_stdout": True}
