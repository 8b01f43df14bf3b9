"""ARC and ARC_att: Adapter Re-Composing (Dong et al., NeurIPS 2023), with the official ``Model/ARC_ViT.py``
semantics (docs/methods/arc.md; decisions ARC-1..3).

Per layer l and position p ∈ {att, mlp}, on the LayerNorm output h that feeds a frozen linear group
(docs/methods/arc.md §2)::

    ARC_l^p(h) = h + Drop(h · U_p · diag(λ_l^p)) · U_pᵀ + b_l^p

* ``U_att`` / ``U_mlp`` (D×d) exist ONCE per model, in ``model.arc`` (:class:`ARCShared`); the up-projection is the
  tied ``U_pᵀ`` and has no parameter of its own. Each block's :class:`ARCAdapter` (at ``block.attn_in`` and, for ARC,
  ``block.mlp_in``) holds only its λ (d) and b (D) and *references* the shared module (not a submodule, so U is
  registered, counted and saved once).
* The residual stream is never touched, so the eval-mode adapter h ↦ h·A + b with A = I + U·diag(λ)·Uᵀ folds exactly
  into the linears it feeds (q, k, v; fc1): W' = W·A = W + ((W·U) ⊙ λ)·Uᵀ, c' = c + W·b (docs/methods/arc.md §5, ARC-3).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .base import Method, check_int, check_rate, dropout_layer, merged_linear, register

__all__ = ["ARC", "ARCAtt", "ARCShared", "ARCAdapter"]


class ARCShared(nn.Module):
    """The model-level shared down-projections U_att and (ARC only) U_mlp, each (D, d), Xavier-uniform
    (docs/methods/arc.md §3)."""

    def __init__(self, dim: int, bottleneck: int, mlp: bool):
        super().__init__()
        self.u_att = nn.Parameter(torch.empty(dim, bottleneck))
        self.u_mlp = nn.Parameter(torch.empty(dim, bottleneck)) if mlp else None
        for u in (self.u_att, self.u_mlp):
            if u is not None:
                nn.init.xavier_uniform_(u)  # bound sqrt(6 / (D + d)): 0.08564 for ViT-B, d = 50


class ARCAdapter(nn.Module):
    """One layer's ARC adapter at one position: h + Drop(h·U·diag(λ))·Uᵀ + b. (B, N, D) -> (B, N, D).

    ``shared``/``position`` name the tensor U = ``shared.u_<position>``; it is looked up at call time, so the
    adapter follows the shared module through ``.to()``, ``deepcopy`` and ``load_state_dict``.
    """

    def __init__(self, shared: ARCShared, position: str, dropout: float = 0.0, scale_init: str = "zeros"):
        super().__init__()
        u = getattr(shared, f"u_{position}")
        if u is None:
            raise ValueError(f"the shared module has no U for position {position!r}")
        dim, bottleneck = u.shape
        # A plain attribute, not a registered submodule: U belongs to model.arc and must stay a single tensor.
        self.__dict__["shared"] = shared
        self.position = position
        self.scale = nn.Parameter(torch.zeros(bottleneck))  # λ, (d,)
        self.bias = nn.Parameter(torch.zeros(dim))  # b, (D,)
        # dropout on the d-dim bottleneck activations (docs/methods/arc.md §2, `--adapt_drop`)
        self.drop = dropout_layer(dropout)
        if scale_init == "xavier":
            # Official λ_mlp init: xavier_uniform_ on a (1, d) tensor -> bound sqrt(6 / (1 + d))
            # (docs/methods/arc.md §3, ARC-2).
            nn.init.xavier_uniform_(self.scale.data.view(1, -1))
        elif scale_init != "zeros":
            raise ValueError(f"unknown λ init {scale_init!r}: use 'xavier' or 'zeros'")

    @property
    def u(self) -> torch.Tensor:
        return getattr(self.shared, f"u_{self.position}")

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        u = self.u  # (D, d)
        return h + self.drop((h @ u) * self.scale) @ u.t() + self.bias

    def matrix(self) -> torch.Tensor:
        """A = I + U·diag(λ)·Uᵀ (D, D), symmetric: the eval-mode adapter is h ↦ h·A + b (docs/methods/arc.md §2)."""
        u = self.u
        return torch.eye(u.shape[0], dtype=u.dtype, device=u.device) + (u * self.scale) @ u.t()

    @torch.no_grad()
    def fold_into(self, linear: nn.Linear) -> nn.Linear:
        """The plain ``nn.Linear`` computing ``linear(adapter(h))`` in eval mode (docs/methods/arc.md §5):
        W' = W + ((W·U) ⊙ λ)·Uᵀ, c' = c + W·b, computed in fp32."""
        w, u = linear.weight.float(), self.u.float()
        delta = ((w @ u) * self.scale.float()) @ u.t()  # (out, D)
        return merged_linear(linear, delta, w @ self.bias.float())


@dataclasses.dataclass
class _ARCBase(Method):
    """Shared install/merge for ARC and ARC_att; ``_mlp`` says whether the FFN-side adapter is used."""

    dim: int = 50  # bottleneck width d (50 in every released config)
    dropout: float = 0.1  # bottleneck dropout (`--adapt_drop`, docs/methods/arc.md §7.1)

    head_init = "zeros"  # zero_head=True in the official scripts (docs/methods/arc.md §3)
    _mlp = False

    def _mlp_lambda_init(self) -> str:
        return "zeros"

    def __post_init__(self):
        check_int(self.name, "dim", self.dim, note=" (the bottleneck width)")
        self.dropout = check_rate(self.name, "dropout", self.dropout)

    def install(self, model: nn.Module) -> None:
        # Trainable set is explicit (ARC-1, docs/methods/arc.md §4): U's, λ's, b's (+ the head, which create_model
        # makes trainable).
        device = model.pos_embed.device
        model.arc = ARCShared(model.embed_dim, self.dim, mlp=self._mlp).to(device).requires_grad_(True)
        for blk in model.blocks:
            blk.attn_in = ARCAdapter(model.arc, "att", self.dropout, "zeros").to(device).requires_grad_(True)
            if self._mlp:
                blk.mlp_in = ARCAdapter(model.arc, "mlp", self.dropout, self._mlp_lambda_init()).to(device)
                blk.mlp_in.requires_grad_(True)

    def merge(self, model: nn.Module) -> None:
        """Fold every adapter into the linears it feeds (docs/methods/arc.md §5); already-merged blocks are left as
        they are."""
        for blk in model.blocks:
            if isinstance(blk.attn_in, ARCAdapter):
                for name in ("q", "k", "v"):
                    setattr(blk.attn, name, blk.attn_in.fold_into(getattr(blk.attn, name)))
                blk.attn_in = nn.Identity()
            if isinstance(blk.mlp_in, ARCAdapter):
                blk.mlp.fc1 = blk.mlp_in.fold_into(blk.mlp.fc1)
                blk.mlp_in = nn.Identity()
        if hasattr(model, "arc"):
            del model.arc


@register
@dataclasses.dataclass
class ARC(_ARCBase):
    """ARC: adapters before MHA (feeding q/k/v) and before the FFN (feeding fc1); 96,432 parameters for ViT-B/16 at
    d = 50, head excluded: 2·D·d + 2·L·(d + D) (docs/methods/arc.md §6). Not identity at init: λ_mlp is Xavier
    (ARC-2)."""

    name = "arc"
    mlp_lambda_init: str = "xavier"  # or "zeros" (ARC-2: which one the paper used is uncertain)
    _mlp = True

    def __post_init__(self):
        super().__post_init__()
        if self.mlp_lambda_init not in ("xavier", "zeros"):
            raise ValueError(f"mlp_lambda_init must be 'xavier' or 'zeros', got {self.mlp_lambda_init!r}")

    def _mlp_lambda_init(self) -> str:
        return self.mlp_lambda_init


@register
@dataclasses.dataclass
class ARCAtt(_ARCBase):
    """ARC_att: the attention-side adapter only; 48,216 parameters for ViT-B/16 at d = 50, head excluded:
    D·d + L·(d + D) (docs/methods/arc.md §6). Identity at init (λ_att = 0, b = 0)."""

    name = "arc_att"
