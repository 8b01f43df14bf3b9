"""AdaptFormer (Chen et al., 2022) (docs/methods/baselines.md §6).

A scaled bottleneck branch parallel to the MLP, reading the residual stream *after* the attention residual (not the
LN2 output); installed as the ``block.mlp_parallel`` hook, whose output is added to the (drop-path'ed) MLP output::

    x ← x + Attn(LN1(x));   x ← x + MLP(LN2(x)) + s·(W_up·Dropout(ReLU(W_down·x + b_down)) + b_up)

Fixed scale s = 0.1, no adapter LayerNorm (``ffn_adapter_layernorm_option="none"``). Initialisation as the official
"lora" option: W_down Kaiming-uniform(a = √5), W_up, b_down, b_up zeros, so the branch is exactly zero at init and the
model equals the frozen one.

Count 12·(1536·r + r + 768): 156,768 at r = 8 (the default: the bottleneck behind the printed VTAB row, "0.16 M"),
1,189,632 at r = 64 (AdaptFormer's own image default). Not mergeable (ReLU): ``models.merge`` raises ``ValueError``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
from torch import nn

from .base import Method, check_int, check_rate, dropout_layer, register

__all__ = ["AdaptFormer", "AdaptFormerBranch"]


class AdaptFormerBranch(nn.Module):
    """x -> scale·up(Dropout(ReLU(down(x)))); (B, N, D) -> (B, N, D)."""

    def __init__(self, dim: int, bottleneck: int, scale: float = 0.1, dropout: float = 0.0, device=None):
        super().__init__()
        self.scale = scale
        self.down = nn.Linear(dim, bottleneck, device=device)  # (r, D)
        self.act = nn.ReLU()
        self.drop = dropout_layer(dropout)
        self.up = nn.Linear(bottleneck, dim, device=device)    # (D, r)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.drop(self.act(self.down(x)))) * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


@register
@dataclasses.dataclass
class AdaptFormer(Method):
    """AdaptFormer parallel adapter. Keyword arguments:

    * ``dim`` — bottleneck width r ≥ 1 (8, the VTAB baseline row; AdaptFormer's own default is 64).
    * ``scale`` — the fixed s multiplying the branch (0.1).
    * ``dropout`` — on the bottleneck activation (0; the official code uses the model's dropout rate, 0 for ViT-B).

    Head: trunc-normal (std .02).
    """

    name: ClassVar[str] = "adaptformer"
    needs: ClassVar[tuple[str, ...]] = ("mlp_parallel",)
    mergeable: ClassVar[bool] = False

    dim: int = 8
    scale: float = 0.1
    dropout: float = 0.0

    def __post_init__(self):
        check_int(self.name, "dim", self.dim)
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale):
            raise ValueError(f"{self.name}: scale must be a finite number, got {self.scale!r}")
        self.dropout = check_rate(self.name, "dropout", self.dropout)
        self.scale = float(self.scale)

    def install(self, model: nn.Module) -> None:
        for blk in model.blocks:
            if blk.mlp_parallel is not None:
                raise ValueError(f"{self.name}: block.mlp_parallel is already in use; install one method only")
            blk.mlp_parallel = AdaptFormerBranch(blk.dim, self.dim, self.scale, self.dropout,
                                                 device=blk.norm2.weight.device)
