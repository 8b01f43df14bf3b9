"""Portable adapters: the trained tensors in one ``.safetensors`` file whose metadata rebuilds the model.

    save_adapter(model, "adapter.safetensors", dataset="cifar", seed=42)
    model = load_adapter("adapter.safetensors")                       # the backbone named in the file
    model = load_adapter("adapter.safetensors", pretrained="ViT-B_16.npz")   # the same weights from elsewhere

The metadata (safetensors stores text) names the architecture, input size, class count, method and its resolved
arguments, the backbone's source with the SHA-256 of the file and of the loaded tensors, and the version of this
code: enough to rebuild the model with ``create_model`` and to refuse other backbone weights than the ones trained
on. Only the trainable tensors are stored (the adapter and the head: kilobytes to a few MB).
"""
from __future__ import annotations

import json
import os

import torch

from util import __version__
from util.files import atomic_write

__all__ = ["ADAPTER_FORMAT", "adapter_metadata", "save_adapter", "read_adapter", "build_trained", "load_adapter"]

ADAPTER_FORMAT = "vit_peft adapter 1"


def adapter_metadata(model, **extra) -> dict[str, str]:
    """What rebuilds ``model`` (built by ``create_model``), as safetensors metadata (text values); ``extra`` (the
    dataset, the seed of a random backbone, the training epoch ...) is added as given."""
    info = getattr(model, "pretrained_info", None) or {}
    meta = {"format": ADAPTER_FORMAT, "version": __version__, "arch": model.arch,
            "img_size": model.img_size, "num_classes": model.head.out_features, "method": model.method.name,
            "method_args": json.dumps(model.method.config()), "pretrained": info.get("requested") or info.get("source")
            or "none", "pretrained_sha256": info.get("sha256") or "", "backbone_sha256": info.get("backbone_sha256")
            or "", **extra}
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def save_adapter(model, path: str | os.PathLike, **extra) -> None:
    """Write the trainable tensors of ``model`` with :func:`adapter_metadata` to ``path`` (atomically)."""
    from safetensors.torch import save_file

    tensors = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    meta = adapter_metadata(model, **extra)
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of an adapter file; a damaged or foreign file is one ValueError naming it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise ValueError(f"{path}: no such adapter file") from None
    except Exception as e:  # noqa: BLE001 - safetensors' own error type
        raise ValueError(f"{path} is not a readable .safetensors file ({str(e).splitlines()[0]}); the file is "
                         "damaged: copy it again from where the run was trained, or train it again") from None
    return tensors, meta


def build_trained(tensors: dict[str, torch.Tensor], *, arch: str, method: str, method_args: dict, img_size: int,
                  pretrained: str | None, seed: int | None = None, hashes: dict | None = None, name: str = "adapter",
                  **create_kw):
    """``create_model`` as the run built it, with its trained ``tensors`` loaded. A random backbone
    (``pretrained`` none) is rebuilt from the run's ``seed`` (drawn as train.py draws it, right before building;
    the caller's random state is left as it was). ``hashes`` (``sha256`` of the weight file, ``backbone_sha256`` of
    the loaded tensors, as the run recorded them) must match the weights loaded now. One ValueError otherwise."""
    from . import create_model

    if "head.weight" not in tensors:
        raise ValueError(f"{name} holds no head.weight: not an adapter of a trained model")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = create_model(arch, method, num_classes=tensors["head.weight"].shape[0], pretrained=pretrained,
                             img_size=img_size, **create_kw, **method_args)
    for key in ("sha256", "backbone_sha256"):  # the weight file's hash, else the loaded tensors' (any source)
        want, got = (hashes or {}).get(key), model.pretrained_info.get(key)
        if want and got:
            if want != got:
                raise ValueError(f"backbone weights {pretrained} ({key} {got[:12]}…) differ from those {name} was "
                                 f"trained with ({want[:12]}…); pass --pretrained with those")
            break
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(tensors) != expected:
        raise ValueError(f"{name} does not match method {method!r}: missing {sorted(expected - set(tensors))[:3]}, "
                         f"unexpected {sorted(set(tensors) - expected)[:3]}")
    model.load_state_dict(tensors, strict=False)
    return model


def load_adapter(path: str | os.PathLike, pretrained: str | None = None, device: str | torch.device = "cpu"):
    """The model an adapter file was trained as: its architecture, method and arguments and its backbone
    (``pretrained`` overrides where the weights come from; they must be the same weights), with the file's tensors
    loaded (:func:`build_trained`). A file without the description (written before portable adapters) is one
    ValueError saying to evaluate its run folder instead."""
    tensors, meta = read_adapter(path)
    if meta.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{path} carries no model description (an adapter written before portable adapters); "
                         "evaluate its run folder with eval.py --run instead")
    hashes = {"sha256": meta.get("pretrained_sha256"), "backbone_sha256": meta.get("backbone_sha256")}
    model = build_trained(tensors, arch=meta["arch"], method=meta["method"],
                          method_args=json.loads(meta["method_args"]), img_size=int(meta["img_size"]),
                          pretrained=pretrained or meta["pretrained"], seed=json.loads(meta.get("seed", "null")),
                          hashes=hashes, name=str(path))
    model.adapter_metadata = meta
    return model.to(device)
