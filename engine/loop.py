"""The training loop's parts: parameter groups and optimizer, the learning-rate schedule, one epoch of training, and
evaluation. ``train.py`` strings them together; ``bench.py`` times the same step and the same evaluation."""
from __future__ import annotations

import contextlib
import math
import sys
import time

import torch
import torch.nn.functional as F

from .config import RunConfig
from .dist import all_sum
from .errors import Diverged, RunError

__all__ = ["NO_DECAY_NAMES", "autocast", "compiled", "param_groups", "peak_lr", "build_optimizer", "lr_at",
           "eval_epochs", "eval_network", "evaluate", "evaluate_epoch", "train_one_epoch", "new_state"]

# Tokens and embeddings, never decayed under "matrices" (Swin's relative position bias too, as timm's no_weight_decay)
NO_DECAY_NAMES = ("cls_token", "pos_embed", "prompt", "relative_position_bias_table")


def autocast(device: str | torch.device, precision: str):
    """bf16 autocast when ``precision`` is bf16, else a no-op context."""
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def compiled(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """``model`` under ``torch.compile`` in ``mode`` (``none``: the model itself); shares the model's parameters."""
    return model if mode == "none" else torch.compile(model, mode=None if mode == "default" else mode)


# ------------------------------------------------------------------------------------------ optimizer, schedule
def param_groups(model: torch.nn.Module, weight_decay: float, scope: str, names: tuple = ()) -> list[dict]:
    """Optimizer groups: decayed and not. ``scope`` "all" decays every trainable tensor, "matrices" only those with
    ndim > 1 that are not tokens or embeddings; trainable tensors whose name ends in one of ``names`` (its last
    component: "d" matches "blocks.0.attn.q.d", not "head.bias") are never decayed (``no_decay``)."""
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        last = name.rsplit(".", 1)[-1]
        seen.add(last)
        exempt = scope == "matrices" and (p.ndim <= 1 or any(k in name for k in NO_DECAY_NAMES))
        (no_decay if exempt or last in names else decay).append(p)
    unknown = [n for n in names if n not in seen]
    if unknown:
        raise RunError(f"no_decay: {', '.join(unknown)} names no trainable parameter of this model; trainable names "
                       f"end in {', '.join(sorted(seen))}")
    return [g for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
            if g["params"]]


def peak_lr(cfg: RunConfig) -> float:
    """The schedule's peak learning rate: ``lr``, or lr × batch_size / 256 with ``scale_lr``
    (docs/methods/baselines.md §7)."""
    return cfg.lr * (cfg.batch_size / 256 if cfg.scale_lr else 1.0)


def build_optimizer(cfg: RunConfig, groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
    """AdamW (fused on CUDA: one kernel per step instead of several per tensor; the step is launch-bound at batch
    64), or SGD with ``momentum`` (``optimizer: sgd``). The learning rate is set by :func:`lr_at` every step."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=peak_lr(cfg), momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=peak_lr(cfg), fused=device.type == "cuda")


def lr_at(cfg: RunConfig, step: int, epoch: int, steps_per_epoch: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based) in ``epoch``.

    per_step (docs/methods/arc.md §7.1, docs/methods/hta.md §5.2): factor t/W during W warm-up steps (the first
    update uses lr 0), then max(min_lr_factor, ½(1 + cos(π (t − W)/(T − W)))). per_epoch_timm
    (docs/methods/snell.md §8.1): timm 0.5.4's CosineLRScheduler stepped once per epoch *after* the epoch,
    warmup_lr_init 1e-6, lr_min 1e-5.
    """
    base, epochs, warm = peak_lr(cfg), cfg.epochs, cfg.warmup_epochs
    if cfg.schedule == "per_epoch_timm":
        if epoch == 0:
            return 1e-6 if warm > 0 else base
        t = epoch - 1
        if t < warm:
            return 1e-6 + t * (base - 1e-6) / warm
        return 1e-5 + 0.5 * (base - 1e-5) * (1 + math.cos(math.pi * t / epochs))
    W, T = warm * steps_per_epoch, epochs * steps_per_epoch
    if step < W:
        return base * step / W
    progress = min(step - W, T - W) / max(T - W, 1)
    return base * max(cfg.min_lr_factor, 0.5 * (1 + math.cos(math.pi * progress)))


# ---------------------------------------------------------------------------------------------------- training
def new_state() -> dict:
    """The loop's progress, saved in every checkpoint: epochs and steps done, per-epoch records, timings."""
    return {"epoch": 0, "step": 0, "history": [], "train_time": 0.0, "train_images": 0, "wall_s": 0.0}


def train_one_epoch(forward, model: torch.nn.Module, opt: torch.optim.Optimizer, loader, cfg: RunConfig,
                    state: dict, epoch: int) -> tuple[dict, list[tuple[str, float, int]]]:
    """One pass over ``loader``: the epoch's record (mean loss, train accuracy, img/s, last lr, peak memory) and its
    TensorBoard points (tag, value, step); ``state``'s step and timing counters advance. The step losses stay on the
    device until the epoch ends (one transfer, no per-step host sync); a non-finite one raises :class:`Diverged`
    naming the epoch and step."""
    from tqdm import tqdm

    device = torch.device(cfg.device)
    params = [p for p in model.parameters() if p.requires_grad]
    steps_per_epoch = len(loader)
    loader.set_epoch(epoch)
    # Under torchrun each rank holds a slice of every global batch and DDP averages the ranks' gradients: a rank's
    # loss is its slice's summed cross-entropy over the global batch size, times the world size, so that average is
    # exactly the global batch's mean gradient (a one-process run keeps the plain mean).
    world = getattr(loader, "world", 1)
    global_sizes = loader.global_sizes() if world > 1 else None
    losses, correct, seen = [], torch.zeros((), dtype=torch.long, device=device), 0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    last = f" (previous loss {state['history'][-1]['loss']:.4f})" if state["history"] else ""
    points: list[tuple[str, float, int]] = []
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}{last}", leave=False, dynamic_ncols=True,
               disable=not sys.stderr.isatty() or getattr(loader, "rank", 0) != 0)
    for k, (x, y) in enumerate(bar):
        lr = lr_at(cfg, state["step"], epoch, steps_per_epoch)
        for g in opt.param_groups:
            g["lr"] = lr
        with autocast(device, cfg.precision):
            logits = forward(x)
            if global_sizes is None:
                loss = F.cross_entropy(logits.float(), y)
            else:
                loss = F.cross_entropy(logits.float(), y, reduction="sum") * (world / global_sizes[k])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, float(cfg.grad_clip))
        opt.step()
        losses.append(loss.detach())
        correct += (logits.detach().argmax(-1) == y).sum()
        seen += y.numel()
        points.append(("train/lr", lr, state["step"]))
        state["step"] += 1
        # host-side numbers only: reading the loss here would sync with the device every step
        bar.set_postfix(lr=f"{lr:.2e}", img_s=f"{seen / (time.perf_counter() - t0):.0f}", refresh=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    step_losses = torch.stack(losses).float()
    if world > 1:  # the global batch's mean loss of each step, and the epoch's counts over all ranks
        step_losses = all_sum(step_losses) / world
        counts = all_sum(torch.stack([correct, torch.tensor(seen, device=device)]))
        correct, seen = counts[0], int(counts[1])
    step_losses = step_losses.cpu()
    bad = (~torch.isfinite(step_losses)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise Diverged(f"loss became {step_losses[i].item()} at epoch {epoch + 1}, step {i + 1} of "
                       f"{steps_per_epoch} (lr {lr:.3g}): lower --lr or set --grad-clip 1.0")
    first = state["step"] - len(losses)
    points += [("train/loss", value, first + i) for i, value in enumerate(step_losses.tolist())]
    state["train_time"] += dt
    state["train_images"] += seen
    record = {"epoch": epoch + 1, "loss": float(step_losses.mean()), "train_acc": 100.0 * correct.item() / seen,
              "img_per_s": seen / dt, "lr": lr}
    points += [("train/loss_epoch", record["loss"], epoch + 1), ("train/acc", record["train_acc"], epoch + 1),
               ("perf/img_per_s", record["img_per_s"], epoch + 1)]  # epoch-indexed: the axis of eval/*/acc
    if device.type == "cuda":
        record["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        points.append(("perf/peak_mem_mb", record["peak_mem_mb"], epoch + 1))
    return record, points


# -------------------------------------------------------------------------------------------------- evaluation
def eval_epochs(cfg: RunConfig) -> set[int]:
    """The 0-based epochs after which the model is evaluated: every ``eval_every``-th and each of the last
    ``eval_last`` (so always the last)."""
    E = cfg.epochs
    return {e for e in range(E) if e % cfg.eval_every == 0 or e >= E - cfg.eval_last}


def eval_network(model: torch.nn.Module, merged: bool) -> torch.nn.Module:
    """What an evaluation runs: with ``merged``, ``models.merge(model)`` for mergeable methods (a plain ViT at
    plain-ViT speed whatever the method, equal to the adapted model up to float rounding), built once for all the
    splits evaluated then; else the model itself."""
    import models

    return models.merge(model) if merged and model.method.mergeable else model


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device, precision: str, report: bool = True) -> float:
    """Top-1 accuracy in percent over ``loader``. One host sync per call. Under torchrun each rank reads its share
    of the split and the counts are summed over the ranks: every image counts once. With ``report``, progress as
    every long step shows it (``data.progress``: a bar on a terminal, one summary line in a log; rank 0 only)."""
    from data.progress import progress

    split, world = loader.split, getattr(loader, "world", 1)
    name = f"{split.name} {split.split}"
    was_training = model.training
    model.eval()
    counts = torch.zeros(2, dtype=torch.long, device=device)  # correct, seen
    shown = report and getattr(loader, "rank", 0) == 0
    with (progress(len(split), f"evaluating {name}", done=f"evaluated {name}", start_line=False) if shown
          else contextlib.nullcontext()) as bar:
        for x, y in loader:
            with autocast(device, precision):
                logits = model(x)
            counts[0] += (logits.argmax(-1) == y).sum()
            counts[1] += y.numel()
            if bar is not None:
                bar.update(y.shape[0] * world)  # host-side count (every rank reads as many, give or take one)
    model.train(was_training)
    correct, n = all_sum(counts).tolist()
    return 100.0 * correct / max(n, 1)


def evaluate_epoch(model: torch.nn.Module, loaders: dict, cfg: RunConfig, epoch: int) -> dict[str, float]:
    """The accuracies an evaluation epoch records, ``{split role: %}``: the test split under the paper protocol;
    under the clean protocol val200 (FGVC: val) every evaluation and the test split at the last epoch only."""
    net = eval_network(model, cfg.eval_merged)
    out = {}
    for split in ("val", "test") if cfg.protocol == "clean" else ("test",):
        if split == "test" and cfg.protocol == "clean" and epoch != cfg.epochs - 1:
            continue  # clean protocol: the test split is read at the last epoch only
        out[split] = evaluate(net, loaders[split], cfg.device, cfg.precision)
    return out  # the merged copy goes out of scope here: it does not stay allocated through the next epochs
