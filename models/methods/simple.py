"""The three baselines that add no modules: full fine-tuning, linear probing and BitFit
(docs/methods/baselines.md §1–3)."""
from __future__ import annotations

import dataclasses

from torch import nn

from .base import Method, register


@register
@dataclasses.dataclass
class Full(Method):
    """Full fine-tuning: every parameter trains (85,798,656 + head for ViT-B/16; docs/methods/baselines.md §2)."""

    name = "full"

    def install(self, model: nn.Module) -> None:
        model.requires_grad_(True)

    def merge(self, model: nn.Module) -> None:  # nothing to fold: the model is already a plain ViT
        pass


@register
@dataclasses.dataclass
class Linear(Method):
    """Linear probe: only the head trains (docs/methods/baselines.md §1)."""

    name = "linear"

    def merge(self, model: nn.Module) -> None:
        pass


@register
@dataclasses.dataclass
class BitFit(Method):
    """BitFit ("Bias"): every bias of the backbone trains — patch-embedding conv, LayerNorm and linear biases —
    plus the head: 102,912 for ViT-B/16 (docs/methods/baselines.md §3)."""

    name = "bitfit"

    def install(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.requires_grad_(True)

    def merge(self, model: nn.Module) -> None:
        pass
