"""SSF: scale and shift deep features (Lian et al., 2022) (docs/methods/baselines.md §8).

ssf(z) = z ⊙ γ + β per channel, γ ~ N(1, 0.02²), β ~ N(0, 0.02²) (``dongzelian/SSF``), applied after

==========================  =====  ==========================================================
location                    width  how it is installed
==========================  =====  ==========================================================
patch-embed projection      D      ``model.embed_hook = SSF(D)``
q, k, v outputs             3 × D  ``SSFLinear`` around each (the official 3D-wide qkv SSF, split)
attention proj output       D      ``SSFLinear`` around ``attn.proj``
LN1 output                  D      ``block.attn_in = SSF(D)``
LN2 output                  D      ``block.mlp_in = SSF(D)``
fc1 output (before GELU)    4D     ``SSFLinear`` around ``mlp.fc1``
fc2 output                  D      ``SSFLinear`` around ``mlp.fc2``
final LN output             D      ``model.norm_hook = SSF(D)``
==========================  =====  ==========================================================

Count 12·2·(2304 + 768 + 768 + 768 + 3072 + 768) + 2·768 + 2·768 = 205,824 for ViT-B/16 (head excluded).

Merge (exact up to rounding): after a linear, W ← diag(γ)·W, b ← γ⊙b + β; after a LayerNorm, its affine
w ← γ⊙w, b ← γ⊙b + β; after the patch-embed conv, per output channel likewise. Hooks go back to ``nn.Identity`` and
wrappers to plain ``nn.Linear``.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from .base import Method, WrappedLinear, iter_linears, register

__all__ = ["SSF", "SSFMethod", "SSFLinear", "SSF_LINEARS"]

SSF_LINEARS = ("q", "k", "v", "proj", "fc1", "fc2")


class SSF(nn.Module):
    """Per-channel affine on the last dimension: z -> z·scale + shift; (..., C) -> (..., C)."""

    def __init__(self, channels: int, device=None):
        super().__init__()
        self.scale = nn.Parameter(torch.empty(channels, device=device))  # γ
        self.shift = nn.Parameter(torch.empty(channels, device=device))  # β
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.scale, mean=1.0, std=0.02)
        nn.init.normal_(self.shift, std=0.02)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scale.to(z.dtype) + self.shift.to(z.dtype)

    def extra_repr(self) -> str:
        return f"channels={self.scale.numel()}"


class SSFLinear(WrappedLinear):
    """A frozen ``nn.Linear`` followed by SSF on its output: y = base(x)·γ + β."""

    def __init__(self, base: nn.Linear):
        super().__init__(base)
        self.ssf = SSF(base.out_features, device=base.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ssf(self.base(x))

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain frozen ``nn.Linear`` computing the same function (fold in fp32, cast back)."""
        base, g, s = self.base, self.ssf.scale.float(), self.ssf.shift.float()
        out = nn.Linear(base.in_features, base.out_features, device=base.weight.device, dtype=base.weight.dtype)
        out.weight.copy_((g[:, None] * base.weight.float()).to(out.weight.dtype))  # diag(γ)·W, W is (out, in)
        b = base.bias.float() if base.bias is not None else torch.zeros_like(g)
        out.bias.copy_((g * b + s).to(out.bias.dtype))
        out.requires_grad_(False)
        return out


@torch.no_grad()
def _fold_into(layer: nn.Module, ssf: SSF) -> None:
    """Fold ``ssf`` into the per-output-channel affine of a LayerNorm or Conv2d in place: w ← γ·w, b ← γ⊙b + β."""
    g, s = ssf.scale.float(), ssf.shift.float()
    w = layer.weight
    shape = (-1,) + (1,) * (w.dim() - 1)  # LayerNorm (C,) / Conv2d (C_out, C_in, k, k)
    w.copy_((g.view(shape) * w.float()).to(w.dtype))
    layer.bias.copy_((g * layer.bias.float() + s).to(layer.bias.dtype))


@register
@dataclasses.dataclass
class SSFMethod(Method):
    """SSF at every location of the table above. No keyword arguments. Mergeable.

    Head: trunc-normal (std .02), as timm 0.6's ViT init used by SSF.
    """

    name: ClassVar[str] = "ssf"
    needs: ClassVar[tuple[str, ...]] = ("embed_hook", "uniform_width")

    def install(self, model: nn.Module) -> None:
        dev = model.norm.weight.device
        hooks = [(model, "embed_hook"), (model, "norm_hook")]
        hooks += [(blk, h) for blk in model.blocks for h in ("attn_in", "mlp_in")]
        for owner, h in hooks:
            if not isinstance(getattr(owner, h), nn.Identity):
                raise ValueError(f"{self.name}: {h} is already in use; install one method only")
        for _, owner, name, layer in iter_linears(model, SSF_LINEARS):
            if type(layer) is not nn.Linear:
                raise ValueError(f"{self.name}: {name} is already wrapped ({type(layer).__name__})")
        for owner, h in hooks:
            setattr(owner, h, SSF(model.embed_dim, device=dev))
        for _, owner, name, layer in iter_linears(model, SSF_LINEARS):
            setattr(owner, name, SSFLinear(layer))

    @torch.no_grad()
    def merge(self, model: nn.Module) -> None:
        """Fold every SSF into the layer before it; restore hooks to ``nn.Identity`` (idempotent)."""
        folds = [(model, "embed_hook", model.patch_embed.proj), (model, "norm_hook", model.norm)]
        folds += [(blk, h, ln) for blk in model.blocks for h, ln in (("attn_in", blk.norm1), ("mlp_in", blk.norm2))]
        for owner, h, layer in folds:
            ssf = getattr(owner, h)
            if isinstance(ssf, SSF):
                _fold_into(layer, ssf)
                setattr(owner, h, nn.Identity())
        for _, owner, name, layer in iter_linears(model, SSF_LINEARS):
            if isinstance(layer, SSFLinear):
                setattr(owner, name, layer.merged())
