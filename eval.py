"""Evaluate a finished run, a portable adapter file, or a checkpoint saved by the official ARC / SNELL code.

    python eval.py --run runs/cifar_hta_... [--split test] [--merge] [--export-timm cifar_hta_timm.safetensors]
    python eval.py --adapter cifar_hta.safetensors --data-root ~/data/vtab-1k     # the file alone
    python eval.py --checkpoint arc_cub.pth --format arc --dataset cub --data-root ...
    python eval.py --checkpoint snell_cub.pth --format snell --sparsity 0.3 --dataset cub --data-root ...

``--checkpoint`` reads the architecture, input size, head, ARC's d and variant and SNELL's rank from the state dict
(flags that contradict it are refused); SNELL's sparsity is not stored in it and must be given.

``--run`` rebuilds the model from the run's config.json (same arch, backbone weights and method arguments), loads the
trained tensors from adapter.safetensors and reports top-1. ``--adapter`` needs only the adapter file: its metadata
names the architecture, method, arguments, backbone and dataset (``models.load_adapter``). ``--merge`` also folds
the method into a plain ViT (``models.merge``) and evaluates that; the two accuracies must agree within 0.01 pt
(exit 1 otherwise). ``--export-timm FILE`` writes the merged model as a state dict timm's own VisionTransformer
loads (``models.export_timm``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import models
from engine import config as C
from engine.data import eval_loader
from engine.errors import RunError
from engine.loop import evaluate
from models.portable import build_trained, read_adapter
from models.pretrained import WeightsUnavailable
from util.cli import ArgumentParser
from util.files import atomic_write


def model_from_run(run: Path, device: str):
    """Rebuild the trained model of a run directory (config.json + adapter.safetensors), checking that the backbone
    weights loaded now are the ones the run recorded in results.json."""
    for name in ("config.json", "adapter.safetensors"):
        if not (run / name).exists():
            raise RunError(f"--run {run}: {name} is missing (is this a train.py output directory?)")
    try:
        cfg = C.from_json(json.loads((run / "config.json").read_text()))
    except (ValueError, TypeError) as e:
        raise RunError(f"--run {run}: config.json is damaged ({type(e).__name__}); it cannot be rebuilt") from None
    cfg.device = device
    tensors, _ = read_adapter(run / "adapter.safetensors")
    results = run / "results.json"
    hashes = (json.loads(results.read_text()).get("pretrained") or {}) if results.exists() else {}
    model = build_trained(tensors, arch=cfg.arch, method=cfg.method, method_args=cfg.method_args,
                          img_size=cfg.img_size, pretrained=cfg.pretrained, seed=cfg.seed, hashes=hashes,
                          name=str(run / "adapter.safetensors"), drop_rate=cfg.drop_rate,
                          drop_path_rate=cfg.drop_path_rate)
    return model.to(device), cfg


def model_from_adapter(args) -> tuple[torch.nn.Module, C.RunConfig]:
    """The model of a portable adapter file and what to evaluate it on: its dataset and normalisation unless
    --dataset / --norm say otherwise."""
    model = models.load_adapter(args.adapter, pretrained=args.pretrained, device=args.device)
    meta = model.adapter_metadata
    cfg = C.RunConfig(dataset=args.dataset or meta.get("dataset", ""), data_root=args.data_root,
                      img_size=int(meta["img_size"]), norm=args.norm or meta.get("norm", "imagenet"),
                      device=args.device, precision=args.precision or "fp32", eval_batch_size=args.batch_size,
                      cache_dir=args.cache_dir)
    if not cfg.dataset:
        raise RunError(f"--adapter {args.adapter}: the file names no dataset; pass --dataset")
    return model, cfg


def model_from_official(args) -> tuple[torch.nn.Module, dict]:
    """A model holding a checkpoint saved by the official ARC or SNELL code. The architecture, input size, head,
    ARC's bottleneck d, its variant and SNELL's rank are read from the checkpoint (``convert.model_args``); flags
    that say otherwise are refused. SNELL's sparsity is not stored in a checkpoint: ``--sparsity`` must give it."""
    import argparse
    import contextlib
    import pickle

    from models import convert

    path = Path(args.checkpoint)
    if not path.exists():
        raise RunError(f"--checkpoint {path}: file not found")
    try:  # tensors and plain containers only (the training scripts may also save their argparse.Namespace)
        if hasattr(torch.serialization, "safe_globals"):  # torch >= 2.5
            allow = torch.serialization.safe_globals([argparse.Namespace])
        else:
            getattr(torch.serialization, "add_safe_globals", lambda _: None)([argparse.Namespace])
            allow = contextlib.nullcontext()
        with allow:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RunError(f"--checkpoint {path}: holds Python objects other than tensors, which are not loaded "
                         f"(they could run code): {str(e).splitlines()[0]}. Re-save its state dict with "
                         "torch.save(model.state_dict(), ...) in the code that wrote it") from None
    for key in ("model", "state_dict"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if args.format == "arc":
        method = args.variant or convert.official_arc_variant(sd)
        ours, kw = convert.from_official_arc(sd, variant=method), {}
    else:
        if args.sparsity is None:
            raise RunError("--format snell needs --sparsity: the official init_thres, which a checkpoint does not "
                             "store (per-task values: reproduce/configs/snell_*.yaml, docs/methods/snell.md §8.2-8.3)")
        ours = convert.from_official_snell(sd, rank=args.rank, sparsity=args.sparsity)  # checks --rank too
        method = "snell"
    found = convert.model_args(ours)  # arch, num_classes, img_size, dim (ARC) / rank (SNELL)
    for flag, key in (("--arch", "arch"), ("--img-size", "img_size")):
        given = getattr(args, key)
        if given is not None and key in found and given != found[key]:
            raise RunError(f"{flag} {given}: the checkpoint holds {found[key]}; drop {flag} or pass {found[key]}")
    kw = {"rank": found["rank"], "sparsity": args.sparsity} if method == "snell" else {"dim": found["dim"]}
    model = models.create_model(found["arch"], method, num_classes=found["num_classes"], pretrained=None,
                                img_size=found["img_size"], **kw)
    model.load_state_dict(ours, strict=True)
    print(f"{path}: official {method} checkpoint, {found['arch']} at {found['img_size']} px, "
          + ", ".join(f"{k} {v}" for k, v in kw.items()))
    cfg = C.RunConfig(dataset=args.dataset, data_root=args.data_root, img_size=found["img_size"],
                      norm=args.norm or "imagenet",
                      device=args.device, precision=args.precision or "fp32", eval_batch_size=args.batch_size,
                      cache_dir=args.cache_dir)
    return model.to(args.device), cfg


def export(model: torch.nn.Module, path: Path) -> None:
    """The merged model as timm's state dict (``models.export_timm``), written atomically, and how to load it."""
    from safetensors.torch import save_file

    state = models.export_timm(model)
    atomic_write(path, lambda p: save_file({k: v.contiguous() for k, v in state.items()}, str(p)))
    kw = models.timm_config(model)
    print(f"timm export: {path} ({len(state)} tensors); load with timm.models.vision_transformer.VisionTransformer("
          + ", ".join(f"{k}={v!r}" for k, v in kw.items()) + ").load_state_dict(safetensors.torch.load_file(...))")


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a train.py output directory")
    src.add_argument("--adapter", help="a portable adapter file (a run's adapter.safetensors, alone)")
    src.add_argument("--checkpoint", help="a state dict saved by the official ARC or SNELL code")
    p.add_argument("--split", default="test", help="split to evaluate (VTAB: test/val200/…, FGVC: test/val) "
                                                   "[default: test]")
    p.add_argument("--merge", action="store_true", help="also evaluate the merged plain ViT and compare")
    p.add_argument("--export-timm", metavar="FILE", help="write the merged model as a timm VisionTransformer state "
                                                         "dict (.safetensors) and print how to load it")
    p.add_argument("--data-root", help="where the dataset is (default: the run's; --adapter, --checkpoint: needed "
                                       "except for the generated demo tasks)")
    p.add_argument("--cache-dir", help="decoded-image cache (default $VIT_PEFT_CACHE or ~/.cache/vit_peft)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda | cpu [default: cuda when available]")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="default: the run's (else fp32)")
    p.add_argument("--pretrained", help="--adapter: where the backbone weights are (default: the source named in "
                                        "the file; a copy must have the same SHA-256)")
    p.add_argument("--format", choices=("arc", "snell"), help="--checkpoint: which official code saved it")
    p.add_argument("--variant", choices=("arc", "arc_att"), help="--format arc: the ARC variant (default: read "
                                                                   "from the checkpoint)")
    p.add_argument("--rank", type=int, help="--format snell: low_rank_dim (default: read from the checkpoint)")
    p.add_argument("--sparsity", type=float, help="--format snell: init_thres, required (not stored in a checkpoint)")
    p.add_argument("--arch", help="--checkpoint: checked against the checkpoint's (default: read from it)")
    p.add_argument("--dataset", help="--checkpoint: dataset to evaluate on; --adapter: default the file's")
    p.add_argument("--img-size", type=int, help="--checkpoint: checked against the checkpoint's (default: read "
                                                "from it)")
    p.add_argument("--norm", choices=("imagenet", "half"), default=None,
                   help="input normalisation (default: the run's or the adapter's; --checkpoint: imagenet)")
    p.add_argument("--batch-size", type=int, default=256, help="evaluation batch size [default: 256]")
    args = p.parse_args(argv)
    try:
        if args.run:
            model, cfg = model_from_run(Path(args.run), args.device)
            if args.data_root:
                cfg.data_root = args.data_root
            if args.cache_dir:
                cfg.cache_dir = args.cache_dir
        elif args.adapter:
            model, cfg = model_from_adapter(args)
        else:
            if not args.format or not args.dataset:
                raise RunError("--checkpoint needs --format arc|snell and --dataset")
            model, cfg = model_from_official(args)
        if args.merge and not model.method.mergeable:
            raise RunError(f"--merge: method {model.method.name!r} cannot be merged into a plain backbone: "
                           f"{model.method.unmergeable_reason()}; drop --merge")
        if args.precision:
            cfg.precision = args.precision
        split, loader = eval_loader(cfg.dataset, args.split, data_root=cfg.data_root, img_size=cfg.img_size,
                                    norm=cfg.norm, batch_size=cfg.eval_batch_size, device=cfg.device,
                                    cache_dir=cfg.cache_dir)
        if split.num_classes != model.head.out_features:
            raise RunError(f"{cfg.dataset} has {split.num_classes} classes but the model's head has "
                             f"{model.head.out_features}")
        acc = evaluate(model, loader, cfg.device, cfg.precision)
        print(f"{cfg.dataset} {args.split}: {acc:.2f}% top-1 ({len(split)} images, method {model.method.name})")
        if args.merge:
            merged = models.merge(model)
            acc_m = evaluate(merged, loader, cfg.device, cfg.precision)
            print(f"{cfg.dataset} {args.split}: {acc_m:.2f}% top-1 merged (plain ViT), difference "
                  f"{acc_m - acc:+.3f} pt")
            if abs(acc_m - acc) > 0.01:
                print("error: merged and unmerged accuracies differ by more than 0.01 pt", file=sys.stderr)
                return 1
        if args.export_timm:
            export(model, Path(args.export_timm))
    except (RunError, ValueError, WeightsUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
