"""Train one method on one dataset: config -> model -> data -> loop -> <out>/{results.json, adapter.safetensors, tb/}.

    python train.py                                   # HTA on a generated demo task, tiny ViT, CPU, seconds
    python train.py --recipe snell_vtab --dataset cifar --data-root ~/data/vtab-1k    # SNELL's recipe for cifar
    torchrun --nproc_per_node=4 train.py --recipe snell_fgvc --dataset cub ...      # data parallel, global batch
    python train.py --resume runs/cifar_snell_...     # continue a killed run (bit-identical on the CPU)

Hyper-parameters come from (lowest to highest priority) the defaults (``engine/config.py``, ``--help``), a recipe
(``--recipe``), a flat YAML file (``--config``), and flags. Protocols (docs/benchmarks.md §6):

* ``paper`` trains on train800val200 (FGVC: train) and evaluates the test split every ``eval_every`` epochs and at each
  of the last ``eval_last`` epochs, recording the last-epoch accuracy ``acc_last`` and the maximum (*test-set
  selected*) accuracy ``acc_best_test``. ``acc_last`` of such a run with hyper-parameters chosen on val200 is the
  clean protocol's reported number (§6.2 steps 2-3).
* ``clean`` is the clean protocol's selection run (§6.2 step 1): it trains on train800 (FGVC: train) and evaluates
  val200 (FGVC: val) on the same epochs; ``acc_val_last``, the val top-1 at the last epoch, is the selection score
  (``reproduce/search.py``). The test split is read once, at the last epoch. No epoch is ever selected.
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import torch

import models
from engine import config as C
from engine import dist as D
from engine import loop as L
from engine import rundir as R
from engine.data import build_data
from engine.errors import Diverged, RunError
from models.pretrained import WeightsUnavailable
from util.files import is_no_space


def build_model(cfg: C.RunConfig, num_classes: int, **kw) -> torch.nn.Module:
    return models.create_model(cfg.arch, cfg.method, num_classes=num_classes, img_size=cfg.img_size,
                               **kw, **cfg.method_args)


def train(cfg: C.RunConfig, world: D.World, resume: bool = False, stop_after: int | None = None) -> dict | None:
    """Run (or continue) the training of ``cfg`` on this process's share of ``world``; the results (rank 0; the
    other ranks get an empty dict), or None when stopped early (``stop_after``)."""
    with torch.device("meta"):  # arch, method and its arguments checked before the data is decoded (minutes)
        build_model(cfg, num_classes=2)
    with D.rank0_first(world):  # rank 0 decodes a split into the cache first, the other ranks then read it
        run_data = build_data(cfg, world)
    loaders, device = run_data.loaders, torch.device(cfg.device)
    R.seed_everything(cfg.seed)  # right before the model: eval.py rebuilds a random backbone the same way
    model = build_model(cfg, run_data.num_classes, pretrained=cfg.pretrained, drop_rate=cfg.drop_rate,
                        drop_path_rate=cfg.drop_path_rate).to(device)
    opt = L.build_optimizer(cfg, L.param_groups(model, cfg.weight_decay, cfg.wd_scope, cfg.no_decay), device)
    forward = L.compiled(D.wrap(model, world), cfg.compile)
    if resume:
        state = R.load_checkpoint(cfg, model, opt, world)
    else:
        state = L.new_state()
        if world.main:
            R.write_config(cfg)
    writer = R.tensorboard(cfg) if world.main else None  # rank 0 alone writes the run folder
    say = print if world.main else (lambda *a, **k: None)
    say(f"{cfg.method} on {run_data.dataset} ({run_data.benchmark}, {cfg.protocol} protocol): "
        f"{models.count_parameters(model):,} trainable parameters "
        f"({models.count_parameters(model, head=False):,} without the head), "
        f"{len(run_data.splits['train'])} training images, {len(loaders['train'])} steps/epoch, device {device}"
        + (f", {world.size} processes (global batch {cfg.batch_size})" if world.size > 1 else ""))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if cfg.eval_initial and not resume:
        split = "val" if cfg.protocol == "clean" else "test"
        state["acc_initial"] = L.evaluate(L.eval_network(model, cfg.eval_merged), loaders[split], device,
                                          cfg.precision)
        if writer:
            writer.add_scalar(f"eval/{split}/acc", state["acc_initial"], 0)
    evals = L.eval_epochs(cfg)
    model.train()
    for epoch in range(state["epoch"], cfg.epochs):
        t0 = time.perf_counter()
        record, points = L.train_one_epoch(forward, model, opt, loaders["train"], cfg, state, epoch)
        if epoch in evals:  # eval_epochs always holds the last epoch
            for split, acc in L.evaluate_epoch(model, loaders, cfg, epoch).items():
                record[f"{split}_acc"] = acc
                points.append((f"eval/{split}/acc", acc, epoch + 1))
        state["history"].append(record)
        state["epoch"] = epoch + 1
        say(f"epoch {epoch + 1}/{cfg.epochs} " + " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"),
            flush=True)
        state["wall_s"] = state.get("wall_s", 0.0) + time.perf_counter() - t0  # before the checkpoint: resumable
        R.save_checkpoint(cfg, model, opt, state, world)
        if writer:
            for tag, value, step in points:  # after the checkpoint: a resumed run writes no point twice
                writer.add_scalar(tag, value, step)
            writer.flush()
        if stop_after is not None and stop_after <= epoch + 1 < cfg.epochs:
            if writer:
                writer.close()
            return None  # simulated kill (tests): checkpoint written, no results
    if not world.main:
        return {}
    result = R.results_record(cfg, model, run_data, state, world)
    R.write_hparams(writer, cfg, result)
    writer.close()
    return result


def main(argv: list[str] | None = None) -> int:
    args = C.build_parser(__doc__.split("\n\n")[0]).parse_args(argv)
    world = D.world_from_env()  # torchrun's RANK / WORLD_SIZE / LOCAL_RANK; a world of one without
    try:
        cfg = R.resume_config(args) if args.resume else C.build(args)
        D.check(world, cfg.batch_size, cfg.fgvc_source)
        note = None if args.resume else C.generic_defaults_note(cfg, from_file=bool(args.config))
        if note and world.main:
            print(note, file=sys.stderr)
        cfg.device = D.init(world, torch.device(cfg.device).type) or cfg.device
        with R.RunLock(cfg.out) if world.main else contextlib.nullcontext():  # one process writes a run folder
            if world.main and not args.resume:
                R.prepare_new(cfg, args.overwrite)
            result = train(cfg, world, resume=bool(args.resume), stop_after=args.stop_after_epochs)
            if result:
                with R.writing(Path(cfg.out) / "results.json", "free space there and run it again"):
                    R.write_json(Path(cfg.out) / "results.json", result)
    except Diverged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (RunError, ValueError, WeightsUnavailable) as e:  # bad input: messages name the fix
        if world.main:  # every rank meets the same input: one line
            print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk where no run file is written (the image cache's metadata, TensorBoard)
        if not is_no_space(e):
            raise
        print(f"error: no space left on device ({e.filename or 'writing'}); free space there", file=sys.stderr)
        return 2
    finally:
        D.shutdown()
    if not result:
        return 0
    out = Path(cfg.out)
    sel = (f"best test {result['acc_best_test']:.2f}% at epoch {result['acc_best_test_epoch']} (test-selected)"
           if result["protocol"] == "paper" else
           f"last-epoch val accuracy {result['acc_val_last']:.2f}% (the selection score)")
    print(f"done: last-epoch test accuracy {result['acc_last']:.2f}%, {sel}\n"
          f"results: {out / 'results.json'}\nadapter: {out / 'adapter.safetensors'}\n"
          f"curves:  tensorboard --logdir {out / 'tb'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
