"""Adapter, NOAH-style FFN adapter by default (docs/methods/baselines.md §5, decision BASE-2).

One bottleneck adapter per block, applied sequentially to the FFN output, after drop-path and before the residual
add (the ``block.mlp_out`` hook)::

    x ← x + Adapter(DropPath(MLP(LN2(x)))),    Adapter(h) = h + W_up·Dropout(QuickGELU(W_down·h + b_down)) + b_up

with QuickGELU(z) = z·σ(1.702·z), W_down r×D, W_up D×r (``nn.Linear`` layout: ``down.weight`` (r, D), ``up.weight``
(D, r)). Initialisation as NOAH's ``AdapterSuper``: both weights ``xavier_uniform_``, both biases N(0, σ²) with
σ = 1e-6, so the default adapter is *not* the identity at init. ``init="zero_up"`` zeroes W_up and b_up instead (the
identity-at-init Houlsby-style variant; an option, not the default).

Count per adapter 2·D·r + r + D, so 12·(1536·r + r + 768) = 156,768 for ViT-B/16 at r = 8 (head excluded).
``positions=("attn", "ffn")`` (Houlsby) adds a second adapter on ``block.attn_out`` (attention output, after its
drop-path and before its residual add, like the FFN one), doubling the count. Not mergeable (QuickGELU):
``models.merge`` raises ``ValueError``.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from timm.layers import QuickGELU
from torch import nn

from .base import Method, check_int, check_rate, dropout_layer, register

__all__ = ["Adapter", "BottleneckAdapter", "ADAPTER_INITS", "ADAPTER_POSITIONS"]

ADAPTER_INITS = ("xavier", "zero_up")
# position name -> the Block hook it occupies (models/vit.py module docstring)
ADAPTER_POSITIONS = {"attn": "attn_out", "ffn": "mlp_out"}


class BottleneckAdapter(nn.Module):
    """h -> h + up(Dropout(QuickGELU(down(h)))); (B, N, D) -> (B, N, D)."""

    def __init__(self, dim: int, bottleneck: int, dropout: float = 0.0, init: str = "xavier", device=None):
        super().__init__()
        if init not in ADAPTER_INITS:
            raise ValueError(f"adapter init {init!r}: use one of {', '.join(ADAPTER_INITS)}")
        self.init = init
        self.down = nn.Linear(dim, bottleneck, device=device)  # (r, D)
        self.act = QuickGELU()
        self.drop = dropout_layer(dropout)
        self.up = nn.Linear(bottleneck, dim, device=device)    # (D, r)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for lin in (self.down, self.up):  # NOAH AdapterSuper._init_weights
            nn.init.xavier_uniform_(lin.weight)
            nn.init.normal_(lin.bias, std=1e-6)
        if self.init == "zero_up":
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(self.drop(self.act(self.down(h))))


@register
@dataclasses.dataclass
class Adapter(Method):
    """Sequential bottleneck adapter (BASE-2). Keyword arguments:

    * ``dim`` — bottleneck width r ≥ 1 (8).
    * ``dropout`` — on the bottleneck activation (0).
    * ``init`` — "xavier" (NOAH, default) or "zero_up" (W_up = b_up = 0: identity at init).
    * ``positions`` — non-empty subset of ("attn", "ffn"); ("ffn",) is NOAH, ("attn", "ffn") is Houlsby.

    Head: trunc-normal (std .02), as timm 0.4.12's ViT init used by NOAH.
    """

    name: ClassVar[str] = "adapter"
    mergeable: ClassVar[bool] = False

    dim: int = 8
    dropout: float = 0.0
    init: str = "xavier"
    positions: tuple = ("ffn",)

    def __post_init__(self):
        check_int(self.name, "dim", self.dim)
        self.dropout = check_rate(self.name, "dropout", self.dropout)
        if self.init not in ADAPTER_INITS:
            raise ValueError(f"{self.name}: init must be one of {', '.join(ADAPTER_INITS)}, got {self.init!r}")
        positions = (self.positions,) if isinstance(self.positions, str) else tuple(self.positions)
        if not positions or any(p not in ADAPTER_POSITIONS for p in positions) or len(set(positions)) != len(positions):
            raise ValueError(f"{self.name}: positions {self.positions!r} must be distinct entries of "
                             f"{', '.join(ADAPTER_POSITIONS)}")
        self.positions = positions

    def install(self, model: nn.Module) -> None:
        for blk in model.blocks:
            dev = blk.mlp.fc2.weight.device
            for pos in self.positions:
                hook = ADAPTER_POSITIONS[pos]
                if not hasattr(blk, hook):
                    raise ValueError(f"{self.name}: position {pos!r} needs block.{hook}, which "
                                     f"{type(model).__name__} blocks do not have; use positions=('ffn',)")
                if not isinstance(getattr(blk, hook), nn.Identity):
                    raise ValueError(f"{self.name}: block.{hook} is already in use; install one method only")
                setattr(blk, hook, BottleneckAdapter(blk.dim, self.dim, self.dropout, self.init, device=dev))
