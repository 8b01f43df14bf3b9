"""LoRA (Hu et al., 2022) as the VTAB baselines use it (docs/methods/baselines.md §4, decision BASE-1).

For an adapted linear: y = x·Wᵀ + b + Dropout(x)·Aᵀ·Bᵀ, A (r × n_in) Kaiming-uniform(a=√5), B (n_out × r) zeros,
scale 1 (no α/r, as in the NOAH code). Merge: W ← W + B·A.

Two registered variants, both 36,864·r parameters on ViT-B/16 (294,912 at r = 8):

* ``lora`` (BASE-1 default, NOAH's ``lora_noah``): per block ONE shared A feeding q, k and v and separate B_q, B_k,
  B_v; a rank-r update of the fused qkv. Installed as ``attn.qkv_branch`` (``LoRAQKV``): one GEMM x·Aᵀ, one GEMM to
  [B_q; B_k; B_v], split.
* ``lora_qv`` (the original LoRA placement, "LoRA (Wq, Wv)"): independent A and B on q and on v (``LoRALinear``).

Parameter names: ``down`` = A, ``up`` = B (for ``LoRAQKV``, ``up`` is [B_t for t in targets] stacked along the
output dimension: (len(targets)·D, r)).
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import (DeltaLinear, Method, check_int, check_rate, check_targets, dropout_layer, iter_linears,
                   merged_linear, register, require)

__all__ = ["LoRA", "LoRAQV", "LoRALinear", "LoRAQKV"]

_QKV = ("q", "k", "v")


class LoRALinear(DeltaLinear):
    """A frozen ``nn.Linear`` plus its own rank-r branch: y = base(x) + Dropout(x)·downᵀ·upᵀ."""

    def __init__(self, base: nn.Linear, rank: int, dropout: float = 0.0):
        super().__init__(base)
        dev = base.weight.device
        self.rank = rank
        self.down = nn.Parameter(torch.empty(rank, base.in_features, device=dev, dtype=torch.float32))  # A
        self.up = nn.Parameter(torch.zeros(base.out_features, rank, device=dev, dtype=torch.float32))   # B
        self.drop = dropout_layer(dropout)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
        nn.init.zeros_(self.up)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(self.drop(x), self.down.to(x.dtype)), self.up.to(x.dtype))

    def delta_weight(self) -> torch.Tensor:
        return self.up.float() @ self.down.float()  # (out, in)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}"


class LoRAQKV(nn.Module):
    """NOAH's shared-A LoRA for the attention's q/k/v (the ``attn.qkv_branch`` hook): x -> (dq, dk, dv).

    dq, dk, dv = split(Dropout(x)·downᵀ·upᵀ), with ``down`` (r, D) shared and ``up`` = [B_t; ...] (T·D, r) for the
    T targeted projections; untargeted entries are None.
    """

    def __init__(self, dim: int, rank: int, targets: tuple[str, ...], dropout: float = 0.0, device=None):
        super().__init__()
        self.dim, self.rank, self.targets = dim, rank, tuple(targets)
        self.down = nn.Parameter(torch.empty(rank, dim, device=device, dtype=torch.float32))
        self.up = nn.Parameter(torch.zeros(len(self.targets) * dim, rank, device=device, dtype=torch.float32))
        self.drop = dropout_layer(dropout)
        # position of q, k, v in the stacked output (None = not adapted)
        self._slots = tuple(self.targets.index(t) if t in self.targets else None for t in _QKV)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
        nn.init.zeros_(self.up)

    def forward(self, x: torch.Tensor):
        h = F.linear(self.drop(x), self.down.to(x.dtype))           # (B, N, r)
        parts = F.linear(h, self.up.to(x.dtype)).split(self.dim, -1)  # T × (B, N, D)
        return tuple(None if i is None else parts[i] for i in self._slots)

    def delta_weight(self, target: str) -> torch.Tensor:
        """The update of ``target`` ('q', 'k' or 'v') as an (out, in) weight: B_t·A."""
        i = self.targets.index(target)
        return self.up[i * self.dim:(i + 1) * self.dim].float() @ self.down.float()

    def extra_repr(self) -> str:
        return f"dim={self.dim}, rank={self.rank}, targets={self.targets}"


@register
@dataclasses.dataclass
class LoRA(Method):
    """LoRA, NOAH variant by default (BASE-1). Keyword arguments:

    * ``rank`` — r ≥ 1 (8).
    * ``targets`` — linears adapted in every block (q, k, v); any subset of q, k, v, proj, fc1, fc2.
    * ``shared`` — the targeted q/k/v share one A (``LoRAQKV`` on ``attn.qkv_branch``); proj/fc1/fc2 targets always
      get their own A (``LoRALinear``). ``shared=False``: every target is an independent ``LoRALinear``.
    * ``dropout`` — on the branch input (NOAH's ``drop_rate_LoRA``), 0 by default.

    Head: trunc-normal (std .02).
    """

    name: ClassVar[str] = "lora"

    rank: int = 8
    targets: tuple = _QKV
    shared: bool = True
    dropout: float = 0.0

    def __post_init__(self):
        check_int(self.name, "rank", self.rank)
        self.dropout = check_rate(self.name, "dropout", self.dropout)
        self.targets = check_targets(self.targets)
        self.shared = bool(self.shared)

    def _split(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(targets served by the shared qkv branch, targets with their own LoRALinear)."""
        qkv = tuple(t for t in self.targets if t in _QKV) if self.shared else ()
        return qkv, tuple(t for t in self.targets if t not in qkv)

    def install(self, model: nn.Module) -> None:
        qkv, own = self._split()
        if qkv:
            require(model, f"{self.name} (targets {', '.join(qkv)})", "attention")
            for blk in model.blocks:
                if blk.attn.qkv_branch is not None:
                    raise ValueError(f"{self.name}: attn.qkv_branch is already in use; install one method only")
                blk.attn.qkv_branch = LoRAQKV(blk.dim, self.rank, qkv, self.dropout, device=blk.attn.q.weight.device)
        if own:
            for _, owner, name, layer in iter_linears(model, own):
                if not isinstance(layer, nn.Linear):
                    raise ValueError(f"{self.name}: {name} is already wrapped ({type(layer).__name__})")
                setattr(owner, name, LoRALinear(layer, self.rank, self.dropout))

    @torch.no_grad()
    def merge(self, model: nn.Module) -> None:
        """W_t ← W_t + B_t·A for every target; removes the qkv branch and the wrappers (idempotent)."""
        for blk in model.blocks:
            branch = getattr(getattr(blk, "attn", None), "qkv_branch", None)
            if isinstance(branch, LoRAQKV):
                for t in branch.targets:
                    setattr(blk.attn, t, merged_linear(getattr(blk.attn, t), branch.delta_weight(t)))
                blk.attn.qkv_branch = None
        for _, owner, name, layer in iter_linears(model, self.targets):
            if isinstance(layer, LoRALinear):
                setattr(owner, name, layer.merged())


@register
@dataclasses.dataclass
class LoRAQV(LoRA):
    """Original LoRA placement: independent A and B on q and v (docs/methods/baselines.md §4 ``lora_qv``;
    294,912 at r = 8)."""

    name: ClassVar[str] = "lora_qv"

    targets: tuple = ("q", "v")
    shared: bool = False
