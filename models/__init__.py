"""Public API: ``create_model``, ``METHODS``, ``count_parameters``, ``merge``, ``load_adapter`` / ``save_adapter``,
``export_timm`` (and ``models.convert``).

    model = create_model("vit_base_patch16_224", "hta", num_classes=100,
                         pretrained="vit_base_patch16_224.orig_in21k", rank=1, dropout=0.1)
    count_parameters(model, head=False)   # 184,320
    plain = merge(model)                  # a plain ViT with the same eval-mode outputs
"""
from __future__ import annotations

import copy

from torch import nn

from .export import export_timm, timm_config
from .methods import METHODS, Method
from .portable import load_adapter, save_adapter
from .backbone import Backbone
from .convnext import CONVNEXT_ARCHS, build_convnext
from .swin import SWIN_ARCHS, build_swin
from .vit import VIT_ARCHS, VisionTransformer, build_vit

# arch name -> builder: the one place a new backbone is registered (docs/backbones.md §1)
_BUILDERS = {**dict.fromkeys(VIT_ARCHS, build_vit), **dict.fromkeys(SWIN_ARCHS, build_swin),
             **dict.fromkeys(CONVNEXT_ARCHS, build_convnext)}
ARCHS = {**VIT_ARCHS, **SWIN_ARCHS, **CONVNEXT_ARCHS}

__all__ = ["create_model", "METHODS", "ARCHS", "count_parameters", "merge", "method_modules", "VisionTransformer",
           "Backbone", "build_backbone",
           "export_timm", "timm_config", "load_adapter", "save_adapter"]


def _make_method(method: str | Method, method_kwargs: dict) -> Method:
    if isinstance(method, Method):
        if method_kwargs:
            raise ValueError("pass method keyword arguments either to the Method or to create_model, not both")
        return method
    if method not in METHODS:
        import difflib

        close = difflib.get_close_matches(str(method), METHODS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown method {method!r}.{hint} Known: {', '.join(sorted(METHODS))}")
    cls = METHODS[method]
    try:
        return cls(**method_kwargs)
    except TypeError as e:
        import dataclasses

        valid = ", ".join(f.name for f in dataclasses.fields(cls)) or "(none)"
        raise ValueError(f"bad arguments for method {method!r}: {e}. Valid arguments: {valid}") from None


def build_backbone(arch: str, num_classes: int = 1000, img_size: int = 224, **kwargs) -> Backbone:
    """A randomly initialised backbone of a named architecture (``ARCHS``: ViTs, Swin, ConvNeXt)."""
    if arch not in _BUILDERS:
        import difflib

        close = difflib.get_close_matches(arch, ARCHS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown arch {arch!r}.{hint} Known: {', '.join(ARCHS)}")
    return _BUILDERS[arch](arch, num_classes=num_classes, img_size=img_size, **kwargs)


def create_model(
    arch: str,
    method: str | Method = "full",
    num_classes: int = 1000,
    pretrained: str | None = None,
    img_size: int = 224,
    drop_rate: float = 0.0,
    drop_path_rate: float | None = None,
    **method_kwargs,
) -> Backbone:
    """Build ``arch`` (see ``ARCHS``), load ``pretrained`` (timm name, ``.npz``, ``.safetensors``/``.pth``; None =
    random init), put a fresh ``num_classes`` head on it (initialised as the method's paper does) and install
    ``method`` with ``method_kwargs``. Only the method's tensors and the head are trainable afterwards.

    ``drop_rate`` is backbone dropout; ``drop_path_rate`` is backbone stochastic depth (None = the method's default,
    e.g. 0.1 for SNELL, 0 otherwise). The returned model carries ``.method`` (the Method instance), ``.arch`` and
    ``.pretrained_info`` (resolved source and SHA-256 of a local weight file).
    """
    from .methods.base import require

    m = _make_method(method, method_kwargs)
    if drop_path_rate is None:
        drop_path_rate = getattr(m, "backbone_drop_path", 0.0)
    model = build_backbone(arch, num_classes=num_classes, img_size=img_size, drop_rate=drop_rate,
                           drop_path_rate=drop_path_rate)
    require(model, m.name, *m.needs)
    model.pretrained_info = {"source": None}
    if pretrained not in (None, "", "none"):
        from .pretrained import load_pretrained

        model.pretrained_info = load_pretrained(model, pretrained, arch=arch)
    model.reset_head(num_classes, init=m.head_init)
    model.requires_grad_(False)
    model.head.requires_grad_(True)
    m.install(model)
    model.method = m
    model.arch = arch
    return model


def count_parameters(model: nn.Module, head: bool = True) -> int:
    """Number of trainable parameters; ``head=False`` leaves out the classifier (``model.head``)."""
    skip = set() if head else {id(p) for p in model.head.parameters()}
    return sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in skip)


def method_modules(model: nn.Module) -> list[str]:
    """Names of modules that are not part of the plain backbone (what ``merge`` must remove)."""
    from . import convnext, swin, vit

    plain = (vit.VisionTransformer, vit.Block, vit.Attention, vit.Mlp, vit.PatchEmbed, nn.Linear, nn.LayerNorm,
             nn.Conv2d, nn.Identity, nn.GELU, nn.Dropout, nn.ModuleList, nn.Sequential, vit.DropPath,
             swin.SwinTransformer, swin.SwinStage, swin.SwinBlock, swin.WindowAttention, swin.PatchMerging,
             swin.PatchEmbed, convnext.ConvNeXt, convnext.ConvNeXtStage, convnext.ConvNeXtBlock, convnext.LayerNorm2d)
    return [n for n, mod in model.named_modules() if type(mod) not in plain]


def merge(model: Backbone, inplace: bool = False) -> Backbone:
    """Fold the installed method into the weights: a plain backbone with the same eval-mode outputs.

    Raises ``ValueError`` for methods that cannot merge (VPT prompts, the non-linear adapters, ARC's adapter on the
    residual stream). The input is left untouched unless ``inplace``.
    """
    m: Method | None = getattr(model, "method", None)
    if m is None:
        raise ValueError("model has no installed method (was it built with models.create_model?)")
    if not m.mergeable:
        raise ValueError(f"method {m.name!r} cannot be merged into a plain backbone: {m.unmergeable_reason()}")
    out = model if inplace else copy.deepcopy(model)
    m.merge(out)
    left = method_modules(out)
    if left:
        raise RuntimeError(f"merge of {m.name!r} left method modules behind: {left[:5]}")
    branches = [getattr(getattr(b, "attn", None), "qkv_branch", None) for b in out.blocks]
    branches += [getattr(b, "mlp_parallel", None) for b in out.blocks]
    if out.prelude is not None or any(x is not None for x in branches):
        raise RuntimeError(f"merge of {m.name!r} left a prelude or an additive branch installed")
    out.method = METHODS["linear"]()  # a plain ViT: nothing but (optionally) the head is left to train
    out.requires_grad_(False)
    return out
