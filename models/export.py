"""A fine-tuned model -> a state dict for timm's own ``VisionTransformer`` (``eval.py --export-timm``).

    sd = models.export_timm(model)                               # merged copy, timm keys, fused qkv
    ref = timm.models.vision_transformer.VisionTransformer(**models.timm_config(model))
    ref.load_state_dict(sd)                                      # strict; same eval-mode logits as ``model``
    # or, for a published arch: timm.create_model(timm_model_name(model), num_classes=C, img_size=S)

Why: a merged model is a plain ViT, so it can be used with nothing from this repository. Our ViT (models/vit.py) is
timm's with q, k, v kept as separate linears; timm fuses them into one ``attn.qkv`` whose rows are q, then k, then v
(the order ``models.pretrained.timm_to_ours`` splits on load). Every other tensor already has timm's name and shape.
Methods that cannot merge (adapters, VPT) have no plain-ViT form and are refused.
"""
from __future__ import annotations

import copy

import torch

from .vit import VIT_ARCHS as ARCHS, VisionTransformer

__all__ = ["export_timm", "timm_config", "timm_model_name"]


def _plain(model: VisionTransformer) -> VisionTransformer:
    """A plain (method-free) copy of ``model``: ``models.merge`` for a mergeable method, refused otherwise."""
    from . import merge, method_modules

    method = getattr(model, "method", None)
    if method is None:  # built with build_vit: plain already, if nothing was installed by hand
        if method_modules(model) or model.prelude is not None or any(
                b.attn.qkv_branch is not None or b.mlp_parallel is not None for b in model.blocks):
            raise ValueError("model has method modules but no .method: build it with models.create_model to export")
        return copy.deepcopy(model)
    if not method.mergeable:
        raise ValueError(f"method {method.name!r} cannot be exported to timm: {method.unmergeable_reason()}; it "
                         "cannot run as a plain timm ViT (evaluate it with this repository's model, or train a "
                         "mergeable method such as lora, hta, snell, arc or ssf)")
    return merge(model)


def export_timm(model: VisionTransformer) -> dict[str, torch.Tensor]:
    """State dict (merged, detached copies, the model's dtype and device) that ``VisionTransformer(**timm_config(
    model))`` of ``timm.models.vision_transformer`` loads with ``strict=True`` and that computes ``model``'s eval-mode
    logits. Raises ``ValueError`` for a method that cannot merge, and for a backbone other than the ViT."""
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"export_timm writes timm ViT state dicts; {type(model).__name__} models are evaluated with "
                         "this repository's model (models.merge gives the plain backbone)")
    plain = _plain(model)
    ours = plain.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in ours.items():
        part = key.split(".")  # blocks.{i}.attn.{q,k,v}.{weight,bias}
        if len(part) == 5 and part[0] == "blocks" and part[2] == "attn" and part[3] in ("q", "k", "v"):
            if part[3] == "q":
                i, kind = part[1], part[4]
                qkv = [ours[f"blocks.{i}.attn.{t}.{kind}"] for t in "qkv"]  # 3 x (D, D) or 3 x (D,)
                out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(qkv, dim=0).detach()  # (3D, D) or (3D,)
        else:
            out[key] = value.detach()
    expected = _expected_keys(plain)
    if set(out) != expected:  # a merge that left something behind, or a change to models/vit.py
        raise RuntimeError(f"export does not match timm's ViT keys: extra {sorted(set(out) - expected)[:5]}, "
                           f"missing {sorted(expected - set(out))[:5]}")
    return out


def _expected_keys(model: VisionTransformer) -> set[str]:
    """timm ViT keys for ``timm_config(model)`` (global_pool 'token', no fc_norm, no layer scale, no registers)."""
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias",
            "head.weight", "head.bias"}
    for i in range(len(model.blocks)):
        for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"blocks.{i}.{name}.weight", f"blocks.{i}.{name}.bias"}
    return keys


def timm_config(model: VisionTransformer) -> dict:
    """Keyword arguments of timm's ``VisionTransformer`` that compute what ``model`` computes (once loaded with
    ``export_timm(model)``): cls-token pooling with the final LayerNorm before it (no fc_norm), qkv bias, learned
    position embedding that includes the cls token, no pre-norm, no layer scale, no registers. LayerNorm eps 1e-6 and
    exact GELU are timm's defaults. Dropout rates are 0 (an exported model is for inference)."""
    blk = model.blocks[0]
    dim, hidden = model.embed_dim, blk.mlp.fc1.out_features
    mlp_ratio = hidden / dim
    if int(dim * mlp_ratio) != hidden:  # timm sizes the MLP as int(dim * mlp_ratio)
        raise ValueError(f"MLP width {hidden} is not int({dim} * mlp_ratio) for any ratio: timm cannot build it")
    return dict(img_size=model.patch_embed.img_size, patch_size=model.patch_embed.patch_size,
                in_chans=model.patch_embed.proj.in_channels, num_classes=model.head.out_features,
                global_pool="token", embed_dim=dim, depth=len(model.blocks), num_heads=blk.attn.num_heads,
                mlp_ratio=mlp_ratio, qkv_bias=True, qk_norm=False, init_values=None, class_token=True,
                no_embed_class=False, reg_tokens=0, pre_norm=False, fc_norm=False, dynamic_img_size=False,
                drop_rate=0.0, pos_drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0)


def timm_model_name(model: VisionTransformer) -> str | None:
    """The timm model name of ``model``'s arch (e.g. 'vit_base_patch16_224') when timm registers one of the same
    dimensions, else None (``vit_micro_patch8``). ``timm.create_model(name, num_classes=C, img_size=S)`` then builds
    the same network as ``timm_config`` and loads ``export_timm(model)`` with ``strict=True``."""
    import timm

    arch = getattr(model, "arch", None)
    if arch not in ARCHS or not timm.is_model(arch):
        return None
    a = ARCHS[arch]
    dims = (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads, model.patch_embed.patch_size,
            model.blocks[0].mlp.fc1.out_features)
    return arch if dims == (a.embed_dim, a.depth, a.num_heads, a.patch_size, int(a.embed_dim * a.mlp_ratio)) else None
