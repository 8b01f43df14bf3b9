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

from .base import Method, check_int, check_rate, dropout_layer, merged_linear, register, require

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
    share: str = "model"  # U shared by the whole model (ViT), or "stage": one U per stage (Swin, docs/backbones.md §3)
    mlp_at: str = "mlp_in"  # FFN-side adapter on the LN2 output (ViT), or "stream": on the residual stream (Swin)
    head_init: str = "zeros"  # zero_head=True in the ViT scripts (docs/methods/arc.md §3); the Swin code: trunc_normal

    needs = ("attention",)
    _mlp = False

    def _mlp_lambda_init(self) -> str:
        return "zeros"

    def __post_init__(self):
        check_int(self.name, "dim", self.dim, note=" (the bottleneck width)")
        self.dropout = check_rate(self.name, "dropout", self.dropout)
        if self.share not in ("model", "stage"):
            raise ValueError(f"{self.name}: share must be 'model' or 'stage', got {self.share!r}")
        if self.mlp_at not in ("mlp_in", "stream"):
            raise ValueError(f"{self.name}: mlp_at must be 'mlp_in' or 'stream', got {self.mlp_at!r}")
        if self.head_init not in ("zeros", "trunc_normal"):
            raise ValueError(f"{self.name}: head_init must be 'zeros' or 'trunc_normal', got {self.head_init!r}")

    @property
    def mergeable(self) -> bool:
        return not (self._mlp and self.mlp_at == "stream")

    def unmergeable_reason(self) -> str:
        return ("its FFN-side adapter acts on the residual stream (mlp_at='stream', the official Swin placement), and "
                "the LayerNorm between it and fc1 is not linear, so no weight computes it exactly; merging it would "
                "only approximate the trained model (docs/backbones.md §3)")

    def install(self, model: nn.Module) -> None:
        # Trainable set is explicit (ARC-1, docs/methods/arc.md §4): U's, λ's, b's (+ the head, which create_model
        # makes trainable).
        device = model.head.weight.device
        blocks = model.blocks
        if self._mlp and self.mlp_at == "stream":
            require(model, f"{self.name} (mlp_at='stream')", "mlp_stream")
        if self.share == "model":
            widths = sorted({blk.dim for blk in blocks})
            if len(widths) > 1:
                raise ValueError(f"{self.name}: share='model' needs one width, but the blocks of "
                                 f"{type(model).__name__} are {widths} wide; use share='stage'")
            model.arc = ARCShared(widths[0], self.dim, mlp=self._mlp).to(device).requires_grad_(True)
            shared = [model.arc] * len(blocks)
        else:  # one (U_att, U_mlp) per stage, in stage order
            stages = sorted({blk.stage for blk in blocks})
            width = {blk.stage: blk.dim for blk in blocks}
            model.arc = nn.ModuleList(ARCShared(width[s], self.dim, mlp=self._mlp) for s in stages)
            model.arc.to(device).requires_grad_(True)
            shared = [model.arc[stages.index(blk.stage)] for blk in blocks]
        hook = "mlp_in" if self.mlp_at == "mlp_in" else "mlp_stream"
        for blk, sh in zip(blocks, shared):
            blk.attn_in = ARCAdapter(sh, "att", self.dropout, "zeros").to(device).requires_grad_(True)
            if self._mlp:
                setattr(blk, hook, ARCAdapter(sh, "mlp", self.dropout, self._mlp_lambda_init()).to(device))
                getattr(blk, hook).requires_grad_(True)

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
