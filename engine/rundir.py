"""A run's folder: what is written there, when, and how a killed run continues from it.

    <out>/config.json          the resolved configuration (written once the data and the model are known to load)
    <out>/train_state.pt       checkpoint after every epoch: trainable tensors, optimizer, RNG states, loop state
    <out>/adapter.safetensors  the trained tensors alone (what eval.py loads)
    <out>/results.json         written once, at the end: the run's numbers and provenance
    <out>/tb/                  TensorBoard events (points of an epoch are written after its checkpoint)
    <out>/.lock                held (flock) by the process writing the run: a second run into the folder is refused

Every file is written atomically (``util.files``): a killed run leaves the previous complete checkpoint, and
``--resume`` continues bit-identically on the CPU because the RNG states are part of it. A checkpoint carries the
SHA-256 of its content, so a damaged one is reported, not loaded. A full disk stops the run with one line naming
the folder; what was saved before stays whole.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import models
from util.files import atomic_write, is_no_space, write_text_atomic

from . import config as C
from .dist import World, all_gather_objects
from .errors import RunError
from .loop import peak_lr

__all__ = ["RUN_FILES", "RunLock", "write_json", "prepare_new", "resume_config", "write_config", "save_checkpoint",
           "read_checkpoint", "load_checkpoint", "trainable_state", "seed_everything", "rng_state",
           "set_rng_state", "results_record", "tensorboard", "git_commit", "versions"]

RUN_FILES = ("results.json", "train_state.pt", "adapter.safetensors", "config.json")


def write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextlib.contextmanager
def writing(path: Path, then: str):
    """Writes of a run file: a full disk (or any OSError) becomes one RunError naming the file and the folder, and
    ``then``, what to do next. ``util.files`` has already removed the temporary file; the previous version stays."""
    try:
        yield
    except OSError as e:
        why = "no space left on device" if is_no_space(e) else (e.strerror or str(e))
        raise RunError(f"--out {path.parent}: {why} while writing {path.name}; {then}") from None


class RunLock:
    """An exclusive lock on a run folder while a process writes a run there: ``<out>/.lock`` (``fcntl.flock``, which
    the OS releases when the process ends, however it ends), holding the owner's pid. A second run started into the
    same folder gets one RunError naming that pid. On release a folder that holds nothing but the lock (the run
    stopped on bad input before writing anything) is removed again, when the lock created it."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.path = self.out / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        import fcntl

        created = not self.out.exists()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunError(f"--out {self.out}: cannot write there ({e.strerror or e}); choose a writable folder") \
                from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunError(f"--out {self.out} is in use by another run (pid {holder}, {self.path}); wait for it to "
                           "finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd, self.created = fd, created
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        empty = [p.name for p in self.out.iterdir()] == [self.path.name]
        if empty:
            self.path.unlink(missing_ok=True)
            if self.created:
                with contextlib.suppress(OSError):
                    self.out.rmdir()
        else:
            os.ftruncate(self.fd, 0)
        os.close(self.fd)  # releases the lock
        self.fd = None


# ------------------------------------------------------------------------------------------- starting, resuming
def prepare_new(cfg: C.RunConfig, overwrite: bool) -> Path:
    """The folder of a new run: refused if it holds a finished or an unfinished run (unless ``overwrite``, which
    removes that run's files first)."""
    out = Path(cfg.out)
    if (out / "results.json").exists() and not overwrite:
        raise RunError(f"--out {out} already holds a finished run (results.json); pass --overwrite to replace it or "
                       "choose another --out")
    if (out / "train_state.pt").exists() and not overwrite:
        raise RunError(f"--out {out} holds an unfinished run; continue it with --resume {out} or pass --overwrite")
    if overwrite and out.exists():
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "tb", ignore_errors=True)
    return out


def write_config(cfg: C.RunConfig) -> None:
    """Write ``config.json`` into the (locked) run folder; a failed write is one RunError."""
    with writing(Path(cfg.out) / "config.json", "free space there or choose another --out"):
        write_json(Path(cfg.out) / "config.json", cfg.to_json())


def resume_config(args: argparse.Namespace) -> C.RunConfig:
    """The configuration of the run in ``--resume OUT``: its own ``config.json``, with only the options that say
    where it runs (``config.WHERE``) taken from the flags; any other flag is refused rather than ignored."""
    out = Path(args.resume)
    given = sorted(C.flag_name(k) for k in vars(args) if k in C.OPTIONS and k not in C.WHERE) + \
        (["--config"] if args.config else []) + (["--overwrite"] if args.overwrite else [])
    if given:
        raise RunError(f"--resume continues {out} with the options it was started with; drop {' '.join(given)} "
                       f"(to change them, start a new run with --out; only "
                       f"{', '.join(C.flag_name(k) for k in C.WHERE)} may change on a resume)")
    if not (out / "train_state.pt").exists():
        raise RunError(f"--resume {out}: no checkpoint (train_state.pt) there; start a new run with --out")
    if (out / "results.json").exists():
        raise RunError(f"--resume {out}: the run already finished (results.json exists)")
    try:
        cfg = C.from_json(json.loads((out / "config.json").read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise RunError(f"--resume {out}: its config.json is missing or damaged ({type(e).__name__}); the run cannot "
                       "continue: start it again with --out and --overwrite") from None
    cfg.out = str(out.resolve())  # the folder given, wherever the run was started or moved or copied to
    for key in C.WHERE:  # where the run's data, cache and device are on this machine: results do not depend on it
        if key in vars(args):
            value = getattr(args, key)
            setattr(cfg, key, str(Path(value).expanduser().resolve()) if key in ("data_root", "cache_dir") else value)
    C.check_device(cfg.device)
    return cfg


# ------------------------------------------------------------------------------------------------- checkpoints
def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


CHECKPOINT_FORMAT = "vit_peft checkpoint 2"  # {"format", "sha256", "payload": torch.save bytes of the checkpoint}


def save_checkpoint(cfg: C.RunConfig, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict,
                    world: World = World()) -> None:
    """``train_state.pt`` (trainable tensors, optimizer, RNG, loop state, config, with the SHA-256 of all of it),
    then ``adapter.safetensors``. Under torchrun every rank calls it (each rank's RNG state is gathered, so a resume
    draws the same dropout masks on each) and rank 0 writes (the tensors and the optimizer are the same on all)."""
    out = Path(cfg.out)
    rngs = all_gather_objects(rng_state())
    if not world.main:
        return
    ckpt = {"trainable": trainable_state(model), "optimizer": opt.state_dict(), "rng": rngs[0], "state": state,
            "config": cfg.to_json(), "rng_by_rank": rngs}
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    payload = buf.getvalue()
    sealed = {"format": CHECKPOINT_FORMAT, "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}
    then = f"free space there, then continue with python train.py --resume {out}"
    with writing(out / "train_state.pt", then):
        atomic_write(out / "train_state.pt", lambda p: torch.save(sealed, p))
    with writing(out / "adapter.safetensors", then):  # portable: its metadata rebuilds the model (models/portable.py)
        models.save_adapter(model, out / "adapter.safetensors", dataset=cfg.dataset, norm=cfg.norm, seed=cfg.seed,
                            epoch=state["epoch"], recipe=cfg.recipe or "none")


def read_checkpoint(path: Path) -> dict:
    """The checkpoint dict of ``path``, its checksum verified; a truncated, empty or altered file is one RunError."""
    def corrupt(why: str) -> RunError:
        return RunError(f"{path}: the checkpoint is corrupt ({why}) and cannot be resumed; start the run again with "
                        f"python train.py --out {path.parent} --overwrite and the options of its config.json")

    import pickle

    try:
        sealed = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # a complete archive of other objects: a checkpoint from before the checksum
        try:
            legacy = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001
            raise corrupt(f"unreadable: {type(e).__name__}") from None
        if isinstance(legacy, dict) and {"trainable", "optimizer", "rng", "state"} <= set(legacy):
            return legacy
        raise corrupt("not a checkpoint of this train.py") from None
    except Exception as e:  # noqa: BLE001 - torch raises several types for a damaged archive
        raise corrupt(f"unreadable: {type(e).__name__}") from None
    if not isinstance(sealed, dict) or sealed.get("format") != CHECKPOINT_FORMAT:
        raise corrupt("not a checkpoint of this train.py")
    if hashlib.sha256(sealed["payload"]).hexdigest() != sealed["sha256"]:
        raise corrupt("SHA-256 mismatch")
    return torch.load(io.BytesIO(sealed["payload"]), map_location="cpu", weights_only=False)


def load_checkpoint(cfg: C.RunConfig, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    world: World = World()) -> dict:
    """Restore the trainable tensors, the optimizer and this rank's RNG states of ``<out>/train_state.pt``; returns
    the loop state. A damaged checkpoint, one of another model (other names or shapes), or one written by another
    number of processes, is one RunError."""
    path = Path(cfg.out) / "train_state.pt"
    ckpt = read_checkpoint(path)
    rngs = ckpt.get("rng_by_rank", [ckpt["rng"]])
    if len(rngs) != world.size:
        run = f"torchrun --nproc_per_node={len(rngs)} train.py" if len(rngs) > 1 else "python train.py"
        raise RunError(f"{path} was written by {len(rngs)} process(es) and this resume has {world.size}; continue it "
                       f"with {run} --resume {path.parent}")
    try:
        missing = model.load_state_dict(ckpt["trainable"], strict=False)
    except RuntimeError as e:  # same names, other shapes (e.g. another rank)
        raise RunError(f"{path}: checkpoint does not match the model ({str(e).splitlines()[-1].strip()})") from None
    if missing.unexpected_keys:
        raise RunError(f"{path}: checkpoint does not match the model ({missing.unexpected_keys[:3]})")
    opt.load_state_dict(ckpt["optimizer"])
    set_rng_state(rngs[world.rank])
    state = ckpt["state"]
    state.pop("best_val", None)  # checkpoints written before the clean protocol dropped best-epoch selection
    return state


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def tensorboard(cfg: C.RunConfig):
    """The run's TensorBoard writer. Every point is written after the checkpoint of its epoch, so a resumed run
    never writes a point twice and nothing needs purging (a purge by step would also drop epoch-indexed points)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(Path(cfg.out) / "tb"))


def write_hparams(writer, cfg: C.RunConfig, result: dict) -> None:
    """The run's options beside its final accuracies in TensorBoard's HPARAMS tab; the method's resolved arguments
    (defaults included: rank, sparsity, dropout ...) as columns of their own, ``method_args/<name>``."""
    options = {k: v for k, v in cfg.to_json().items() if k not in ("out", "data_root", "cache_dir", "method_args")}
    options.update({f"method_args/{k}": v for k, v in result["method_args"].items()})
    hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in options.items()}
    metrics = {f"hparam/{k}": v for k, v in result.items() if k.startswith("acc_") and isinstance(v, float)}
    writer.add_hparams(hparams, metrics or {"hparam/acc_last": -1.0}, run_name="hparams")


# ------------------------------------------------------------------------------------------------ results.json
def git_commit() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=C.ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=C.ROOT,
                               capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if sha.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    import timm

    return {"python": sys.version.split()[0], "torch": torch.__version__, "timm": timm.__version__,
            "numpy": np.__version__, "cuda": torch.version.cuda}


def train_aug_record(aug) -> dict:
    """The training augmentation as results.json records it: every field of ``data.Aug``, or only its kind when
    there is none (VTAB trains without augmentation, docs/benchmarks.md §4: crop and resampling fields would not
    apply)."""
    return dataclasses.asdict(aug) if aug.kind != "none" else {"kind": "none"}


def split_provenance(splits: dict) -> dict:
    """What results.json records of each split (docs/benchmarks.md §4, §8): its name and size, the split files'
    SHA-256, the image format (VTAB: JPEG as converted for the papers, or lossless PNG) with the converter's
    manifest, the resize filter of the stored images, and whether an FGVC split was regenerated."""
    keep = ("sha256", "format", "resize", "source", "regenerated", "manifest")
    return {k: {"name": s.split, "n": len(s), **{kk: s.info[kk] for kk in keep if kk in s.info}}
            for k, s in splits.items()}


def results_record(cfg: C.RunConfig, model: torch.nn.Module, run_data, state: dict, world: World = World()) -> dict:
    """``results.json``: the method and its arguments, the backbone and its hash, the splits, every accuracy with
    how it was selected, parameter counts, speed and memory, versions and the git commit."""
    import data

    device = torch.device(cfg.device)
    hist = state["history"]
    tested = [r for r in hist if "test_acc" in r]
    at_last = hist[-1] if hist and hist[-1]["epoch"] == cfg.epochs else {}
    splits, loaders = run_data.splits, run_data.loaders
    result = {
        "method": cfg.method, "method_args": model.method.config(), "recipe": cfg.recipe, "arch": cfg.arch,
        "pretrained": model.pretrained_info, "dataset": run_data.dataset, "benchmark": run_data.benchmark,
        "splits": split_provenance(splits),
        "split_regenerated": any(s.info.get("regenerated") for s in splits.values()),
        "num_classes": run_data.num_classes, "protocol": cfg.protocol, "seed": cfg.seed,
        "precision": cfg.precision, "compile": cfg.compile, "epochs": cfg.epochs, "lr": cfg.lr,
        "peak_lr": peak_lr(cfg),
        "optimizer": cfg.optimizer, "weight_decay": cfg.weight_decay,
        "batch_size": cfg.batch_size, "img_size": cfg.img_size, "norm": cfg.norm,
        "color_jitter": cfg.color_jitter, "train_aug": train_aug_record(loaders["train"].aug),
        "train_source": "image files" if isinstance(loaders["train"], data.ImageLoader) else "cache",
        "acc_last": at_last.get("test_acc"),
        "acc_initial": state.get("acc_initial"), "acc_best_test": None, "acc_best_test_epoch": None,
        "acc_best_test_note": "maximum over evaluated epochs, selected on the TEST set (paper protocol)",
        # clean protocol (docs/benchmarks.md §6.2 step 1): the selection score; last epoch, never the best epoch
        "acc_val_last": at_last.get("val_acc"),
        "params_trainable": models.count_parameters(model),
        "params_trainable_no_head": models.count_parameters(model, head=False),
        "peak_mem_mb": max((r.get("peak_mem_mb", 0.0) for r in hist), default=0.0) or None,
        "train_img_per_s": state["train_images"] / max(state["train_time"], 1e-9),
        "train_time_s": state["train_time"], "wall_s": state.get("wall_s", 0.0), "world_size": world.size,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "versions": versions(), "git_commit": git_commit(), "history": hist,
    }
    if cfg.protocol == "paper" and tested:
        best = max(tested, key=lambda r: r["test_acc"])
        result["acc_best_test"], result["acc_best_test_epoch"] = best["test_acc"], best["epoch"]
    return result
