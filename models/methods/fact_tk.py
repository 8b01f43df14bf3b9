"""FacT-TK: factor tuning in Tucker format (Jie & Deng, AAAI 2023; docs/methods/baselines.md §9).

All weight increments of the L blocks form one D × D × 12L tensor, factorised once for the whole model::

    ΔW_j = s · U · C_j · V,     C_j = Σ_k core[:, :, k] · P[k, j]        (row-vector layout, U: D×r, V: r×D)

Shared tensors (``FacTShared``, registered ONCE as ``model.fact``; the per-linear ``FacTLinear`` layers only hold a
plain reference to it, so every tensor appears once in ``parameters()`` and ``state_dict()``):

======  ==========  ==============================  =================================  =====================
name    shape       official name                   init                               role
======  ==========  ==============================  =================================  =====================
u       (r, D)      ``FacTu.weight`` (Linear D→r)   Kaiming-uniform a=√5 (nn default)  shared down-projection
v       (D, r)      ``FacTv.weight`` (Linear r→D)   zeros                              shared up-projection
core    (r, r, r)   ``FacTc``                       Xavier-uniform                     core tensor 𝒞
p       (r, 12·L)   ``FacTp``                       Xavier-uniform                     slice factors P
======  ==========  ==============================  =================================  =====================

Slices per block i (following ``JieShibo/PETL-ViT`` ``FacT/fact_tk.py``): q = 12i, k = 12i+1, v = 12i+2,
proj = 12i+3, fc1 = 12i+4 … 12i+7, fc2 = 12i+8 … 12i+11. With C_j (r × r) read as "input index, output index":

* q, k, v, proj: x ↦ s·V(Dropout(U(x)·C_j)).
* fc1 (D → 4D): the official code stacks the four slices as a (r, r, 4) tensor and reshapes it to G (r × 4r),
  G[a, 4b + m] = C_{12i+4+m}[a, b], then computes s·V(Dropout(U(x)·G) viewed as (4, r)) for the four D-wide output
  blocks. So output block m uses the columns m·r … m·r + r − 1 of G, which interleave the four slices; this is
  reproduced exactly (the official function, so official checkpoints give identical outputs).
* fc2 (4D → D): the 4D-wide input is viewed as four D-wide blocks, each goes through U, the (4r)-vector is
  multiplied by Gᵀ (4r × r) with G built as for fc1 from slices 12i+8 … 12i+11, then Dropout and V.

Dropout (0.1) is on the r-dimensional (4r for fc1) code just before V, so the eval-mode branch is linear in x and
``delta_weight()`` merges exactly. Count: 2·D·r + 12L·r + r³ (13,952 / 30,976 / 86,528 for r = 8 / 16 / 32 on
ViT-B/16). Merge folds every ΔW into its linear and deletes ``model.fact``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import DeltaLinear, Method, check_int, check_rate, dropout_layer, iter_linears, register

__all__ = ["FacTTK", "FacTShared", "FacTLinear"]

# Per-block slice layout: linear -> first slice offset (fc1 and fc2 take four slices each).
SLICE_OFFSET = {"q": 0, "k": 1, "v": 2, "proj": 3, "fc1": 4, "fc2": 8}
SLICES_PER_BLOCK = 12


class FacTShared(nn.Module):
    """The model-level FacT-TK factors U, V, core and P (module docstring), registered once as ``model.fact``."""

    def __init__(self, dim: int, rank: int, num_slices: int, device=None):
        super().__init__()
        self.dim, self.rank, self.num_slices = dim, rank, num_slices
        kw = dict(device=device, dtype=torch.float32)
        self.u = nn.Parameter(torch.empty(rank, dim, **kw))
        self.v = nn.Parameter(torch.zeros(dim, rank, **kw))
        self.core = nn.Parameter(torch.empty(rank, rank, rank, **kw))
        self.p = nn.Parameter(torch.empty(rank, num_slices, **kw))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.u, a=math.sqrt(5))
        nn.init.zeros_(self.v)  # the branch starts at zero
        nn.init.xavier_uniform_(self.core)
        nn.init.xavier_uniform_(self.p)

    def stacked_core(self, start: int, n: int) -> torch.Tensor:
        """G = (core @ P[:, start:start+n]).reshape(r, n·r): G[a, n·b + m] = C_{start+m}[a, b]."""
        return (self.core @ self.p[:, start:start + n]).reshape(self.rank, n * self.rank)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, rank={self.rank}, slices={self.num_slices}"


class FacTLinear(DeltaLinear):
    """A frozen ``nn.Linear`` whose update is slices ``start … start+n-1`` of the shared FacT tensor.

    ``in_blocks``/``out_blocks`` is how many D-wide blocks the input/output has (1/1 for q, k, v, proj; 1/4 for fc1;
    4/1 for fc2). ``shared`` is held as a plain attribute (not a submodule), so it is not duplicated in
    ``state_dict``; ``copy.deepcopy`` of the whole model keeps it pointing at the copy's ``model.fact``.
    """

    def __init__(self, base: nn.Linear, shared: FacTShared, start: int, scale: float = 1.0, dropout: float = 0.1):
        super().__init__(base)
        dim = shared.dim
        if base.in_features % dim or base.out_features % dim:
            raise ValueError(f"fact_tk: a {base.in_features}->{base.out_features} linear is not made of {dim}-wide "
                             "blocks")
        self.in_blocks, self.out_blocks = base.in_features // dim, base.out_features // dim
        if min(self.in_blocks, self.out_blocks) != 1:
            raise ValueError(f"fact_tk: a {base.in_features}->{base.out_features} linear has no FacT slice layout")
        self.num = max(self.in_blocks, self.out_blocks)
        self.start, self.scale = start, float(scale)
        object.__setattr__(self, "shared", shared)  # plain reference, not a registered submodule
        self.drop = dropout_layer(dropout)

    def core_matrix(self) -> torch.Tensor:
        """K, (in_blocks·r × out_blocks·r): the code map between U and V (G for fc1, Gᵀ for fc2, C_j otherwise)."""
        g = self.shared.stacked_core(self.start, self.num)  # (r, num·r)
        return g.t() if self.in_blocks > 1 else g

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        sh = self.shared
        u = F.linear(x.unflatten(-1, (self.in_blocks, sh.dim)), sh.u.to(x.dtype)).flatten(-2)  # (..., in_blocks·r)
        z = self.drop(u @ self.core_matrix().to(x.dtype))                                    # (..., out_blocks·r)
        y = F.linear(z.unflatten(-1, (self.out_blocks, sh.rank)), sh.v.to(x.dtype))          # (..., out_blocks, D)
        return y.flatten(-2) * self.scale

    def delta_weight(self) -> torch.Tensor:
        """s · blockdiag(V) · Kᵀ · blockdiag(U) in (out, in) layout, fp32."""
        sh, r = self.shared, self.shared.rank
        kt = self.core_matrix().float().t().reshape(self.out_blocks, r, self.in_blocks, r)  # [m, c, n, a]
        w = torch.einsum("oc,mcna,ai->moni", sh.v.float(), kt, sh.u.float())
        return w.reshape(self.out_features, self.in_features) * self.scale

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, slices={self.start}..{self.start + self.num - 1}"


@register
@dataclasses.dataclass
class FacTTK(Method):
    """FacT-TK (docs/methods/baselines.md §9) on q, k, v, proj, fc1 and fc2 of every block. Keyword arguments:

    * ``rank`` — Tucker rank r (8; the paper's "FacT-TK≤32" picks r ∈ {8, 16, 32} per task).
    * ``scale`` — s, multiplies every ΔW. FacT sets it per task in its YAML configs (e.g. cifar: r = 32, s = 0.1);
      1.0 here is a neutral default, not a FacT value.
    * ``dropout`` — on the r-dimensional code before V (0.1, FacT's fixed value).

    Head: trunc-normal (std .02). Backbone drop-path default 0.1 (FacT's recipe).
    """

    name: ClassVar[str] = "fact_tk"
    needs: ClassVar[tuple[str, ...]] = ("uniform_width", "attention")
    backbone_drop_path: ClassVar[float] = 0.1

    rank: int = 8
    scale: float = 1.0
    dropout: float = 0.1

    def __post_init__(self):
        check_int("fact_tk", "rank", self.rank)
        self.dropout = check_rate("fact_tk", "dropout", self.dropout)
        self.scale = float(self.scale)

    def install(self, model: nn.Module) -> None:
        dim, hidden = model.embed_dim, model.blocks[0].mlp.fc1.out_features
        if hidden != 4 * dim:
            raise ValueError(f"fact_tk needs an MLP of width 4·D (fc1 = four D×D slices); this model has "
                             f"{hidden} = {hidden / dim:g}·D")
        shared = FacTShared(dim, self.rank, SLICES_PER_BLOCK * len(model.blocks), device=model.pos_embed.device)
        model.fact = shared
        for i, owner, name, layer in iter_linears(model, tuple(SLICE_OFFSET)):
            if not isinstance(layer, nn.Linear):
                raise ValueError(f"fact_tk: {name} is already wrapped ({type(layer).__name__})")
            start = SLICES_PER_BLOCK * i + SLICE_OFFSET[name]
            setattr(owner, name, FacTLinear(layer, shared, start, self.scale, self.dropout))

    @torch.no_grad()
    def merge(self, model: nn.Module) -> None:
        """W ← W + ΔW for every adapted linear, then delete ``model.fact`` (idempotent)."""
        for _, owner, name, layer in iter_linears(model, tuple(SLICE_OFFSET)):
            if isinstance(layer, FacTLinear):
                setattr(owner, name, layer.merged())
        if isinstance(getattr(model, "fact", None), FacTShared):
            del model.fact
