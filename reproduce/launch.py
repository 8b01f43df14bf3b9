"""Parallel sweeps for reproduce/sweep.sh: the knobs JOBS, GPUS, LAUNCHER and SLURM_* are checked here, in one place,
and a sweep's runs are submitted as one submitit job array (LAUNCHER=slurm: a SLURM array, one task per run;
LAUNCHER=local: submitit's LocalExecutor, the same path on this machine, e.g. to test it without SLURM).

    python -m reproduce.launch check --folder DIR [--dry-run]   # the knobs from the environment -> one line
    printf 'label\\tlog\\tcommand\\n' ... | python -m reproduce.launch submit --folder DIR --name NAME [--dry-run]

``check`` prints one line for sweep.sh to read: the launcher (none | local | slurm), the runs at once (JOBS; 0 = all
of them, the arrays' default) and the CUDA_VISIBLE_DEVICES value of each GPUS slot, comma-separated (``-``: none).
Bad input is one ``error:`` line naming the knob and the fix, exit 2, before the sweep starts or writes anything; so
is a rerun while squeue still lists the sweep's last SLURM array (``DIR/last_array``): its runs would start twice.

``submit`` reads one line per run from stdin (label, the run's train.log, the bash command of the run -- sweep.sh has
written the run's config.yaml and command.txt already), separated by tabs. ``--dry-run`` prints what would be
submitted (the array size, the executor parameters, the sbatch header for SLURM, each task's command) and submits
nothing. Otherwise LAUNCHER=slurm prints the array's job id and returns; LAUNCHER=local waits for every task and
prints each run's outcome (exit 1 when one failed). Torch is imported only to count devices when GPUS is set,
submitit only when LAUNCHER is set: the default sweep needs neither.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from util.cli import ArgumentParser  # noqa: E402

__all__ = ["KnobError", "Plan", "read_knobs", "slurm_minutes", "executor_parameters", "queued_array", "run_task",
           "submit", "main", "SLURM_KNOBS", "LOCAL_TIMEOUT_MIN"]

LAUNCHERS = ("none", "local", "slurm")
SLURM_KNOBS = ("SLURM_PARTITION", "SLURM_ACCOUNT", "SLURM_TIME", "SLURM_GPUS_PER_TASK", "SLURM_CPUS_PER_TASK",
               "SLURM_MEM")
DEFAULT_SLURM_TIME = "24:00:00"  # per run: generous for one VTAB/FGVC run of these papers; shorter schedules sooner
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # LocalExecutor kills a task after timeout_min (its default is 2 minutes)
_WHOLE = re.compile(r"[0-9]+")


class KnobError(ValueError):
    """A knob value the sweep cannot use: the message names the knob and the fix."""


@dataclass
class Plan:
    """The checked knobs: how the sweep's runs are started."""
    launcher: str = "none"
    jobs: int = 1             # runs at once (LAUNCHER=slurm: the array's parallelism, 0 = every task at once)
    devices: list[str] = field(default_factory=list)  # CUDA_VISIBLE_DEVICES value of each GPUS slot
    slurm: dict = field(default_factory=dict)         # SlurmExecutor parameters from the SLURM_* knobs


def _count(name: str, value: str, low: int, what: str) -> int:
    if not _WHOLE.fullmatch(value) or int(value) < low:
        raise KnobError(f"{name}={value}: use a whole number >= {low} ({what})")
    return int(value)


def slurm_minutes(value: str) -> int:
    """SLURM_TIME as whole minutes: ``240``, ``4:00:00`` (H:MM:SS) or ``1-00:00:00`` (D-H:MM:SS)."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+):([0-5]\d):([0-5]\d)", value)
    if _WHOLE.fullmatch(value) and int(value) > 0:
        return int(value)
    if m and any(int(g or 0) for g in m.groups()):
        days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
        return days * 1440 + hours * 60 + minutes + (1 if seconds else 0)
    raise KnobError(f"SLURM_TIME={value}: use minutes (240), H:MM:SS (4:00:00) or D-H:MM:SS (1-00:00:00), "
                    "the time limit of one run")


def _device_count() -> int:
    """CUDA devices this shell sees (within CUDA_VISIBLE_DEVICES when set); torch counts them without a context."""
    import torch

    return torch.cuda.device_count()


def _devices(gpus: str, inherited: str | None) -> list[str]:
    """GPUS (indices among the devices this shell sees) -> the CUDA_VISIBLE_DEVICES value of each entry: the index
    itself, or the entry of an inherited CUDA_VISIBLE_DEVICES (e.g. inside a SLURM job that set it to 2,3)."""
    items = [g for g in re.split(r"[,\s]+", gpus.strip()) if g]
    if not items or not all(_WHOLE.fullmatch(g) for g in items):
        raise KnobError(f"GPUS={gpus}: use device indices separated by commas, e.g. GPUS=0,1")
    if len(set(map(int, items))) < len(items):
        raise KnobError(f"GPUS={gpus}: a device is listed twice; list each once and set JOBS to run several runs "
                        "per device (JOBS=4 GPUS=0,1: two on each)")
    n = _device_count()
    missing = [g for g in items if int(g) >= n]
    if missing:
        seen = "no CUDA device" if n == 0 else f"{n} CUDA device(s), 0..{n - 1}"
        raise KnobError(f"GPUS={gpus}: this machine shows {seen} (torch.cuda.device_count()), so there is no device "
                        f"{missing[0]}; list devices that exist, or unset GPUS (JOBS=N alone runs N at once)")
    parent = [d.strip() for d in inherited.split(",")] if inherited else None
    return [parent[int(g)] if parent and int(g) < len(parent) else str(int(g)) for g in items]


def read_knobs(env: dict[str, str], dry_run: bool = False) -> Plan:
    """The parallel knobs from the environment, checked; a KnobError names the first bad one and its fix."""
    launcher = env.get("LAUNCHER", "") or "none"
    if launcher not in LAUNCHERS:
        raise KnobError(f"LAUNCHER={launcher}: use slurm (one SLURM job array, through submitit), local (the same "
                        "array on this machine, submitit's LocalExecutor) or leave it unset (this machine, JOBS/GPUS)")
    jobs, gpus = env.get("JOBS", ""), env.get("GPUS", "")
    plan = Plan(launcher=launcher)
    set_slurm = [k for k in SLURM_KNOBS if env.get(k)]
    if launcher != "slurm" and set_slurm and not env.get("SLURM_JOB_ID"):
        # (inside a SLURM job, SLURM sets SLURM_CPUS_PER_TASK / SLURM_GPUS_PER_TASK itself: not a user's knob there)
        raise KnobError(f"{set_slurm[0]}={env[set_slurm[0]]} is set but LAUNCHER is not slurm: add LAUNCHER=slurm to "
                        f"submit the sweep as a SLURM job array, or unset {set_slurm[0]}")
    if launcher == "none":
        plan.jobs = _count("JOBS", jobs, 1, "runs at once") if jobs else 0
        if gpus:
            plan.devices = _devices(gpus, env.get("CUDA_VISIBLE_DEVICES"))
        plan.jobs = plan.jobs or max(1, len(plan.devices))  # GPUS=0,1,2,3 alone: one run per listed device
        return plan
    if gpus:
        how = ("SLURM gives each task its devices; unset GPUS and set SLURM_GPUS_PER_TASK" if launcher == "slurm" else
               "every task sees this shell's devices; unset GPUS, or unset LAUNCHER to pin runs with GPUS")
        raise KnobError(f"GPUS={gpus} with LAUNCHER={launcher}: {how}")
    if env.get("FAIL_FAST", "0") == "1":
        raise KnobError(f"FAIL_FAST=1 with LAUNCHER={launcher}: the tasks of an array run independently and cannot "
                        "stop at the first failure; unset FAIL_FAST")
    if launcher == "local":
        if jobs:
            raise KnobError(f"JOBS={jobs} with LAUNCHER=local: submitit's LocalExecutor starts every task at once; "
                            "unset JOBS, or unset LAUNCHER to run JOBS runs at once on this machine")
        plan.jobs = 0
    else:
        plan.jobs = _count("JOBS", jobs, 1, "array tasks running at once") if jobs else 0
        plan.slurm = {"time": slurm_minutes(env.get("SLURM_TIME") or DEFAULT_SLURM_TIME),
                      "gpus_per_task": _count("SLURM_GPUS_PER_TASK", env.get("SLURM_GPUS_PER_TASK") or "1", 0,
                                              "GPUs of each run; 0: none")}
        if env.get("SLURM_CPUS_PER_TASK"):
            plan.slurm["cpus_per_task"] = _count("SLURM_CPUS_PER_TASK", env["SLURM_CPUS_PER_TASK"], 1,
                                                 "CPUs of each run")
        if env.get("SLURM_MEM"):
            if not re.fullmatch(r"[0-9]+[KMGT]?", env["SLURM_MEM"]):
                raise KnobError(f"SLURM_MEM={env['SLURM_MEM']}: use sbatch's --mem form, e.g. 64G or 64000 (MB), "
                                "the memory of each run")
            plan.slurm["mem"] = env["SLURM_MEM"]
        for knob in ("SLURM_PARTITION", "SLURM_ACCOUNT"):
            if env.get(knob):
                if re.search(r"\s", env[knob]):
                    raise KnobError(f"{knob}={env[knob]}: one name without spaces (sinfo lists partitions, "
                                    "sacctmgr show assoc your accounts)")
                plan.slurm[knob[len("SLURM_"):].lower()] = env[knob]
        if plan.slurm["gpus_per_task"] == 0:
            del plan.slurm["gpus_per_task"]
        if not dry_run and not (shutil.which("sbatch") and shutil.which("srun")):
            raise KnobError("LAUNCHER=slurm: no sbatch/srun on this machine; run the sweep on a SLURM login node "
                            "(--dry-run shows the submission here, LAUNCHER=local runs the same array on this machine)")
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise KnobError(f"LAUNCHER={launcher} needs submitit: pip install submitit") from None
    return plan


# ----------------------------------------------------------------------------------------------------- submission
@dataclass
class Task:
    """One run of the array: its label (task/seed), its train.log, and the bash command that trains it."""
    label: str
    log: str
    command: str


def read_tasks(lines: list[str]) -> list[Task]:
    tasks = []
    for line in lines:
        if line.strip():
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3:
                raise KnobError(f"submit: expected 'label<TAB>log<TAB>command' per line, got {line.strip()[:80]!r}")
            tasks.append(Task(*parts))
    return tasks


def executor_parameters(plan: Plan, name: str, n: int) -> dict:
    """What the executor is given: SlurmExecutor's sbatch parameters, or LocalExecutor's time limit."""
    if plan.launcher == "local":
        return {"timeout_min": LOCAL_TIMEOUT_MIN, "stderr_to_stdout": True}
    return {"job_name": name, **plan.slurm, "nodes": 1, "ntasks_per_node": 1,
            "array_parallelism": min(plan.jobs or n, n), "stderr_to_stdout": True}


def run_task(command: str, cwd: str, env: dict[str, str | None]) -> None:
    """One array task (runs in submitit's worker): the run's bash command in the repository root; ``env`` entries
    are set (None: removed) first. A run that fails fails its task (SLURM: state FAILED), naming the exit status."""
    full = dict(os.environ)
    for key, value in env.items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    rc = subprocess.run(["bash", "-c", command], cwd=cwd, env=full).returncode
    if rc:
        raise RuntimeError(f"the run exited with status {rc}")


def queued_array(folder: str | Path) -> str | None:
    """The id of this sweep's last SLURM array (``folder/last_array``) while squeue still lists it, else None."""
    marker = Path(folder) / "last_array"
    if not marker.is_file() or not shutil.which("squeue"):
        return None
    job = marker.read_text().strip()
    try:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return job if out.returncode == 0 and out.stdout.strip() else None  # a job squeue forgot: "Invalid job id"


def submit(plan: Plan, tasks: list[Task], folder: str, name: str, dry_run: bool) -> int:
    """Submit (or, dry run, print) ``tasks`` as one array; submitit's files (<job id>_<task>_0_log.out ...) go to
    ``folder``, one folder for every job of the sweep (a %j sub-folder: LocalExecutor leaves an empty '%j' behind)."""
    n = len(tasks)
    params = executor_parameters(plan, name, n)
    where = "SLURM" if plan.launcher == "slurm" else "this machine (submitit LocalExecutor, every task at once)"
    print(f"== one job array of {n} task(s), one run each, on {where}; submitit logs in {folder}")
    print("   executor parameters: " + ", ".join(f"{k}={v}" for k, v in params.items()))
    if plan.launcher == "slurm":
        try:  # the sbatch lines SlurmExecutor writes (a private helper of submitit 1.5: shown where it exists)
            from submitit.slurm.slurm import _make_sbatch_string

            header = _make_sbatch_string(command="<submitit worker>", folder=folder, map_count=n if n > 1 else None,
                                         **params)
            print("   " + "\n   ".join(line for line in header.splitlines() if line.startswith("#SBATCH")))
        except (ImportError, TypeError) as e:
            print(f"   (#SBATCH lines not shown: this submitit has no _make_sbatch_string as 1.5 has: {e})")
    if dry_run:
        for i, t in enumerate(tasks):
            print(f"   task {i} ({t.label}): {t.command}")
        return 0

    import submitit

    repo = str(Path(__file__).resolve().parents[1])
    if plan.launcher == "slurm":
        executor = submitit.SlurmExecutor(folder=folder)
        env: dict[str, str | None] = {}  # SLURM sets each task's CUDA_VISIBLE_DEVICES
    else:
        executor = submitit.LocalExecutor(folder=folder)
        # LocalExecutor hides every GPU (CUDA_VISIBLE_DEVICES="") unless asked for some: give the tasks this
        # shell's devices back, as if the runs were started here by hand
        env = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
    executor.update_parameters(**params)
    try:
        jobs = executor.map_array(run_task, [t.command for t in tasks], [repo] * n, [env] * n)
    except Exception as e:  # sbatch refused the array (bad partition, account, time ...): its own message
        msg = " ".join(str(e).split())
        print(f"error: the submission failed ({type(e).__name__}: {msg[:500]}); check the SLURM_* knobs",
              file=sys.stderr)
        return 2
    if plan.launcher == "slurm":
        array = jobs[0].job_id.split("_")[0]
        (Path(folder) / "last_array").write_text(array + "\n")  # a rerun refuses to start while it is queued
        print(f"submitted job array {array} ({n} task(s)): squeue -j {array}; scheduler logs "
              f"{folder}/{array}_<task>_0_log.out; each run's output: its train.log")
        return 0
    failed = 0
    try:
        for t, job in zip(tasks, jobs):
            try:
                job.result()
                print(f"-- {t.label}: finished (task {job.job_id})", flush=True)
            except Exception as e:  # the run failed, or its worker died
                status = re.search(r"exited with status (\d+)", str(e))
                why = f"exit {status.group(1)}" if status else f"task {job.job_id}: {job.state}"
                print(f"!! {t.label} failed ({why}); log: {t.log}", file=sys.stderr, flush=True)
                failed += 1
    except KeyboardInterrupt:  # Ctrl-C: end every task (the runs resume when the sweep is run again)
        for job in jobs:
            job.cancel(check=False)
        print("interrupted: the array's runs were stopped; run the same command again to resume them", file=sys.stderr)
        return 130
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description="Check the parallel-sweep knobs; submit a sweep's runs as one submitit array.")
    ap.add_argument("action", choices=("check", "submit"))
    ap.add_argument("--dry-run", action="store_true", help="check: skip the sbatch check; submit: print only")
    ap.add_argument("--folder", help="the sweep's submitit folder (its logs and pickles; last_array)")
    ap.add_argument("--name", default="sweep", help="submit: the SLURM job name")
    args = ap.parse_args(argv)
    try:
        plan = read_knobs(dict(os.environ), args.dry_run)
        if args.action == "check":
            job = None if args.dry_run or not args.folder else queued_array(args.folder)
            if job:
                raise KnobError(f"the SLURM array {job} of this sweep is still queued or running (squeue -j {job}), "
                                f"so its runs would start twice; wait until it has finished (or scancel {job}), then "
                                "run the same command again")
            print(plan.launcher, plan.jobs, ",".join(plan.devices) or "-")
            return 0
        if plan.launcher == "none" or not args.folder:
            raise KnobError("submit: needs LAUNCHER=local or slurm and --folder")
        tasks = read_tasks(sys.stdin.readlines())
    except KnobError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not tasks:
        print("== nothing to submit: every run is done")
        return 0
    return submit(plan, tasks, args.folder, args.name, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
