"""HTA: Householder Transformation Adaptation (Dong et al., NeurIPS 2024; docs/methods/hta.md).

Each adapted frozen linear (W, b) learns, in the paper's row-vector layout (y = x·W, W is n_in × n_out)::

    ΔW = A·B + H(v_l)·D_H·H(v_r),    H(v) = I − 2·v·vᵀ / vᵀv         (docs/methods/hta.md §3.1, HTA-D1)
    y  = x·W + b + Dropout(x)·ΔW                                       (one mask for both terms, HTA-D4)

and in ``nn.Linear`` layout (out, in): ΔW_pt = up·down + H(v_r)·D_Hᵀ·H(v_l) (both H are symmetric).

Trainable tensors per adapted linear (names the training loop can match: ``train.py --no-decay v_left,v_right,d``
is docs/methods/hta.md §5.2's flag that exempts the Householder vectors and the diagonal from weight decay):

=========  ==============  ===================================================  ==================================
name       shape           role                                                 init (HTA-D1/D2)
=========  ==============  ===================================================  ==================================
v_left     (n_in,)         left Householder vector v_l                          N(0, 1)
v_right    (n_out,)        right Householder vector v_r                         N(0, 1)
d          (k,)            diagonal of D_H, k = min(n_in, n_out)                0
down       (rank, n_in)    rank-r down-projection A (``Linear``-style weight)   Kaiming-uniform a=√5: U(±1/√n_in)
up         (n_out, rank)   rank-r up-projection B (``Linear``-style weight)     0
=========  ==============  ===================================================  ==================================

``down``/``up`` are absent when ``rank=0``. No scale factor, no activation, the bias stays frozen. With d = 0 and
up = 0 the adapted model is exactly the frozen one at step 0 (docs/methods/hta.md §3.2).

**Fast path** (performance issue): ``delta_weight()`` builds ΔW_pt in fp32 in O(n_in·n_out) without any D×D
Householder matrix, and the forward runs ONE GEMM ``F.linear(x, W + ΔW_pt, b)`` (eval, or dropout 0);
with dropout in training it runs ``base(x) + F.linear(dropout(x), ΔW_pt)``. ``hta_branch_reference`` is the documented
per-token vector form (§3.1 steps 1–4) that the tests hold the fast path to. The factors of ΔW_pt take a few dozen
tiny ops per layer, and an eager GPU step is bound by launching them, not by FLOPs: :class:`HTAPrelude` (installed
at ``model.prelude``) builds the factors of all layers of one shape in one batch at the start of each forward
(6,915 → 2,704 forward + backward ops per step on ViT-B/16, docs/PERFORMANCE.md), and on CUDA their GEMM weights
W + ΔW too (→ 2,043; ``batch_weights``). The forward has no graph breaks,
so ``torch.compile`` (CUDA graphs) can take the rest of the launch overhead.

Placements (HTA-D3): ``placement="linear"`` adapts ``targets`` (default q, k, v, proj in every block: 184,320
parameters on ViT-B/16 → 0.22 / 0.36 / 0.54 M with the mean heads); ``placement="ffn_adapter"`` is the adapter-style
variant of §3.4 (one square D×D HTA at the FFN output, h ← h + h·M, merged into fc2; 46,080 parameters).
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import (LINEAR_NAMES, PRELUDE_MAX_ELEMENTS, DeltaLinear, Method, autocast_dtype, autocast_input, by_device,
                   check_auto_flag, check_int, check_rate, check_targets, dropout_layer, full_precision, iter_linears,
                   merged_linear, prelude_batches, register, require, take_handover)

__all__ = ["HTA", "HTALinear", "HTAAdapter", "HTAPrelude", "hta_delta_weight", "hta_factors_many", "hta_weights_many",
           "hta_lowrank_branch", "hta_factors_batched", "hta_factors", "hta_branch_reference", "householder"]

_EPS = 1e-12  # guard for vᵀv (docs/methods/hta.md §3.1); with v ~ N(0, 1), vᵀv ≈ n


def _init_hta(module: nn.Module, n_in: int, n_out: int, rank: int, dropout: float, impl: str, device) -> None:
    """What HTALinear and HTAAdapter share: v_left, v_right, d (and down, up when rank > 0) in fp32, initialised per
    HTA-D1/D2; the branch dropout (HTA-D4); the training ``impl``; the slot the prelude hands factors through."""
    module.impl = impl
    module.dropout = float(dropout)
    module.drop = dropout_layer(dropout)
    module._factors = None  # this forward's (L, R, d), handed over by HTAPrelude (base.take_handover)
    module._weight = None  # or this forward's GEMM weight, W + ΔW or ΔW
    module.n_in, module.n_out, module.rank = n_in, n_out, rank
    module.v_left = nn.Parameter(torch.empty(n_in, device=device, dtype=torch.float32))
    module.v_right = nn.Parameter(torch.empty(n_out, device=device, dtype=torch.float32))
    module.d = nn.Parameter(torch.zeros(min(n_in, n_out), device=device, dtype=torch.float32))
    if rank > 0:
        module.down = nn.Parameter(torch.empty(rank, n_in, device=device, dtype=torch.float32))
        module.up = nn.Parameter(torch.zeros(n_out, rank, device=device, dtype=torch.float32))
    else:
        module.register_parameter("down", None)
        module.register_parameter("up", None)
    _reset_hta_parameters(module)


@torch.no_grad()
def _reset_hta_parameters(module: nn.Module) -> None:
    nn.init.normal_(module.v_left)    # HTA-D1: v ~ N(0, 1)
    nn.init.normal_(module.v_right)
    nn.init.zeros_(module.d)          # HTA-D2: d = 0, B = 0  → ΔW = 0 at step 0
    if module.down is not None:
        nn.init.kaiming_uniform_(module.down, a=math.sqrt(5))  # HTA-D2: U(±1/√n_in), the nn.Linear default
        nn.init.zeros_(module.up)


def hta_factors(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L, R, d) of one HTA module: ΔW_pt = L·R + diag(d); see :func:`hta_factors_batched`."""
    return hta_factors_batched(module.v_left, module.v_right, module.d, module.up, module.down)


def hta_factors_batched(v_left, v_right, d, up=None, down=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L, R, d) with ΔW_pt = L·R + diag(d) (rectangular diagonal, first k entries), for any leading batch dims:
    v_left (..., n_in), v_right (..., n_out), d (..., k), up (..., n_out, r), down (..., r, n_in) ->
    L (..., n_out, 2 + r), R (..., 2 + r, n_in), d.

    Applying the two reflections to M0 = D_Hᵀ as rank-1 updates (H(v)·M = M − 2·v·(vᵀM)/vᵀv, M·H(v) likewise)
    and expanding, with s_l = −2/‖v_l‖², s_r = −2/‖v_r‖², p = M0ᵀ·v_r = pad(d·v_r[:k]), q = M0·v_l = pad(d·v_l[:k])
    and c = v_rᵀ·M0·v_l:

        H(v_r)·M0·H(v_l) = M0 + v_r ⊗ s_r·(p + s_l·c·v_l) + q ⊗ s_l·v_l

    so L = [v_r, q, up] and R = [s_r·(p + s_l·c·v_l); s_l·v_l; down]: no Householder matrix is ever formed, and the
    whole update costs one (n_out × (2 + r)) @ ((2 + r) × n_in) product. Computed in fp32 (fp64 stays fp64), with
    few, small ops (the training step is launch-bound on GPU, not FLOP-bound).
    """
    dt = torch.promote_types(v_left.dtype, torch.float32)
    vl, vr, d = v_left.to(dt), v_right.to(dt), d.to(dt)
    n_in, n_out, k = vl.shape[-1], vr.shape[-1], d.shape[-1]
    s_l = -2.0 / (vl * vl).sum(-1, keepdim=True).clamp_min(_EPS)         # (..., 1)
    s_r = -2.0 / (vr * vr).sum(-1, keepdim=True).clamp_min(_EPS)
    dvl = d * vl[..., :k]                                                 # (..., k)   q before padding
    p = F.pad(d * vr[..., :k], (0, n_in - k))                             # (..., n_in)
    c = (vr[..., :k] * dvl).sum(-1, keepdim=True)                         # (..., 1)   v_rᵀ·M0·v_l
    row_r = torch.addcmul(p, vl, s_l * c) * s_r                           # (..., n_in)  s_r·(p + s_l·c·v_l)
    left = [vr.unsqueeze(-1), F.pad(dvl, (0, n_out - k)).unsqueeze(-1)]   # (..., n_out, 1) ×2
    right = [row_r.unsqueeze(-2), (s_l * vl).unsqueeze(-2)]               # (..., 1, n_in) ×2
    if down is not None:
        left.append(up.to(dt))
        right.append(down.to(dt))
    return torch.cat(left, -1), torch.cat(right, -2), d


def hta_delta_weight(module: nn.Module, base: torch.Tensor | None = None, factors=None) -> torch.Tensor:
    """ΔW_pt = up·down + H(v_r)·D_Hᵀ·H(v_l), shape (n_out, n_in), in fp32 (fp64 stays fp64); ``base`` + ΔW_pt
    when the frozen weight ``base`` is given (added inside the same ``addmm``, saving a pass over the weight).
    ``factors``: this module's (L, R, d) when already built (by :func:`hta_factors_many`).

    Autocast is switched off here, so the update is built in full precision under mixed precision (§3.3). No
    graph breaks: ``torch.compile`` can fuse the many small ops (tested with ``torch._dynamo.explain``).
    """
    with full_precision(module.v_left):
        left, right, d = hta_factors(module) if factors is None else factors
        w = left @ right if base is None else torch.addmm(base.to(left.dtype), left, right)
        w.diagonal().add_(d)  # + M0: the rectangular diagonal (first k entries)
        return w


def _stacked_factors(mods) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L, R, d) of several HTA modules of one shape and rank as ONE batch, (m, n_out, 2 + r), (m, 2 + r, n_in),
    (m, k), from their stacked parameters (gradients reach each module's own through the stack). Autocast off."""
    stack = lambda name: None if getattr(mods[0], name) is None else torch.stack([getattr(m, name) for m in mods])
    with full_precision(mods[0].v_left):
        return hta_factors_batched(stack("v_left"), stack("v_right"), stack("d"), stack("up"), stack("down"))


def hta_factors_many(modules) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The (L, R, d) of several HTA modules of one shape and rank, built as one batch: about 35 forward and 90
    backward ops for all of them instead of that many per module. Equal to ``hta_factors`` per module (to fp32
    rounding)."""
    left, right, d = _stacked_factors(list(modules))
    return list(zip(left.unbind(0), right.unbind(0), d.unbind(0)))


def hta_weights_many(modules, merged: bool) -> list[torch.Tensor]:
    """The ready GEMM weights of several HTA modules of one shape and rank, built as one batch: W + ΔW_pt (``merged``,
    HTALinear) or ΔW_pt, each (n_out, n_in), in the dtype their GEMM runs in (bf16 under bf16 autocast: one cast
    for the batch instead of one per layer). Built in fp32 like :func:`hta_delta_weight` (same values, to fp32
    rounding): one ``baddbmm`` and one diagonal add for all of them, so a layer's own forward is the frozen GEMM
    with its weight handed over; in backward the layers' weight gradients come back as one batch too."""
    mods = list(modules)
    left, right, d = _stacked_factors(mods)
    with full_precision(mods[0].v_left):
        if merged:
            base = torch.stack([m.base.weight for m in mods]).to(left.dtype)  # (m, n_out, n_in), frozen
            w = torch.baddbmm(base, left, right)
        else:
            w = left @ right
        w.diagonal(dim1=-2, dim2=-1).add_(d)  # + M0: the rectangular diagonal (first k entries)
    ref = mods[0].base.weight if merged else mods[0].v_left
    return list(w.to(autocast_dtype(ref)).unbind(0))


def hta_lowrank_branch(z: torch.Tensor, factors) -> torch.Tensor:
    """z·ΔWᵀ from the factors without forming ΔW: (z·Rᵀ)·Lᵀ + z[..., :k]·d (zero-padded to n_out), z (..., n_in).

    Two skinny GEMMs (rank 2 + r) and one element-wise product, like a LoRA branch: no n_out × n_in tensor, and no
    weight-gradient GEMM in backward (which the merged path pays, see docs/PERFORMANCE.md). The factors are cast to
    z's dtype (bf16 under autocast), so ΔW's contribution is added next to x·Wᵀ instead of being rounded into W.
    """
    left, right, d = factors
    dt = z.dtype
    u = (z @ right.t().to(dt)) @ left.t().to(dt)  # (..., n_out)
    k, n_out = d.shape[0], left.shape[0]
    if k == n_out:
        return torch.addcmul(u, z[..., :k], d.to(dt))
    return u + F.pad(z[..., :k] * d.to(dt), (0, n_out - k))


def _own_factors(layer: nn.Module):
    """The factors the prelude handed over for this forward, else built here (autocast off)."""
    factors = take_handover(layer, "_factors")
    if factors is None:
        with full_precision(layer.v_left):
            factors = hta_factors(layer)
    return factors


def householder(v: torch.Tensor) -> torch.Tensor:
    """The explicit reflection H(v) = I − 2·v·vᵀ/vᵀv (HTA-D1). For tests and analysis only; the layers never form it."""
    return torch.eye(v.shape[0], dtype=v.dtype, device=v.device) - 2.0 * torch.outer(v, v) / (v @ v).clamp_min(_EPS)


def hta_branch_reference(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """The per-token vector form of the HTA branch (docs/methods/hta.md §3.1 steps 1–4), with the layer's dropout.

    ``layer`` is an ``HTALinear`` or ``HTAAdapter``. Returns x̃·ΔW (paper layout), x̃ = Dropout(x), in x's dtype.
    A plain reference implementation: the fast path (``HTALinear.forward``) must agree with it.
    """
    z = layer.drop(x)  # one mask shared by both terms (HTA-D4)
    vl, vr, d = layer.v_left.to(z.dtype), layer.v_right.to(z.dtype), layer.d.to(z.dtype)
    k, n_out = d.shape[0], vr.shape[0]
    h = z - (2.0 * (z @ vl) / (vl @ vl).clamp_min(_EPS)).unsqueeze(-1) * vl   # 1. z·H(v_l)
    g = F.pad(h[..., :k] * d, (0, n_out - k))                                 # 2. ·D_H (pad to n_out)
    u = g - (2.0 * (g @ vr) / (vr @ vr).clamp_min(_EPS)).unsqueeze(-1) * vr   # 3. ·H(v_r)
    if layer.down is not None:
        u = u + (z @ layer.down.to(z.dtype).t()) @ layer.up.to(z.dtype).t()  # 4. + (z·A)·B
    return u


class HTALinear(DeltaLinear):
    """A frozen ``nn.Linear`` plus the HTA update (docs/methods/hta.md §3.1); parameters as in the module docstring.

    ``impl`` picks how training computes it (evaluation always runs the one-GEMM merged form): "merged" builds
    W + ΔW each step (one GEMM, dropout 0) or x·Wᵀ + Drop(x)·ΔWᵀ (dropout > 0); "lowrank" runs
    x·Wᵀ + :func:`hta_lowrank_branch` (Drop(x)). Same function (tested); "merged" measured faster on a GPU, hence
    the default (docs/PERFORMANCE.md, "Decisions taken from these runs").
    """

    def __init__(self, base: nn.Linear, rank: int = 1, dropout: float = 0.0, impl: str = "merged"):
        super().__init__(base)
        _init_hta(self, base.in_features, base.out_features, rank, dropout, impl, base.weight.device)

    def reset_parameters(self) -> None:
        _reset_hta_parameters(self)

    def delta_weight(self) -> torch.Tensor:
        return hta_delta_weight(self)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        w = take_handover(self, "_weight")  # ΔW_pt from the prelude, else built here
        if w is None:
            w = hta_delta_weight(self, factors=take_handover(self, "_factors")).to(x.dtype)
        return F.linear(self.drop(x), w)

    def _prelude_form(self) -> str:
        """What this forward needs from the prelude: "factors" (lowrank), "delta" (ΔW) or "merged" (W + ΔW)."""
        if self.training and self.impl == "lowrank":
            return "factors"
        return "delta" if self.training and self.dropout > 0 else "merged"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.impl == "lowrank":
            x = autocast_input(x)
            return self.base(x) + hta_lowrank_branch(self.drop(x), _own_factors(self))
        if self.training and self.dropout > 0:  # the mask applies to the branch only: two GEMMs, one input cast
            x = autocast_input(x)
            return self.base(x) + self.branch(x)
        w_eff = take_handover(self, "_weight")  # W + ΔW: one GEMM
        if w_eff is None:
            w = self.base.weight
            w_eff = hta_delta_weight(self, w, factors=take_handover(self, "_factors")).to(w.dtype)
        return F.linear(x, w_eff, self.base.bias)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, rank={self.rank}, dropout={self.dropout}, "
                f"impl={self.impl}")


class HTAAdapter(nn.Module):
    """Adapter-style HTA at the FFN output (docs/methods/hta.md §3.4, paper Eq. 7): h ↦ h + Dropout(h)·M, M square D×D.

    Installed at ``block.mlp_out`` (after the MLP's drop-path, before the residual add; the skip h is kept,
    [default] of §3.4). Same parameter names and init as ``HTALinear``.
    """

    def __init__(self, dim: int, rank: int = 1, dropout: float = 0.0, device=None, impl: str = "merged"):
        super().__init__()
        _init_hta(self, dim, dim, rank, dropout, impl, device)

    def delta_weight(self) -> torch.Tensor:
        return hta_delta_weight(self)

    def _prelude_form(self) -> str:
        return "factors" if self.training and self.impl == "lowrank" else "delta"

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.training and self.impl == "lowrank":
            return h + hta_lowrank_branch(self.drop(autocast_input(h)), _own_factors(self))
        w = take_handover(self, "_weight")  # ΔW from the prelude, else built here
        if w is None:
            w = hta_delta_weight(self, factors=take_handover(self, "_factors")).to(h.dtype)
        return h + F.linear(self.drop(h), w)

    def extra_repr(self) -> str:
        return f"dim={self.n_in}, rank={self.rank}, dropout={self.dropout}, impl={self.impl}"


class HTAPrelude(nn.Module):
    """``model.prelude`` for HTA: at the start of every forward, build what each HTA layer's forward needs for all
    layers at once, one batch per (n_in, n_out, rank) group, and hand each layer its own: the GEMM weight W + ΔW
    (or ΔW on the dropout path and for the adapter) from :func:`hta_weights_many`, or the factors (L, R, d) from
    :func:`hta_factors_many` when training with ``impl="lowrank"``.

    Why: per layer, the factors take about 35 small forward and 90 backward ops, and forming, casting and
    differentiating W + ΔW about a dozen more; on a GPU the eager step is bound by launching them
    (docs/PERFORMANCE.md). Batched, the 48 q/k/v/proj layers of ViT-B/16 cost about as many ops as one, and a
    layer's own forward is the frozen ViT's GEMM. The prelude owns nothing: it references the layers (registered at
    their own places), like ``SNELLQKVBranch``. A layer called outside a model forward builds its own (same values).
    A batch holds at most ``max_elements`` weight entries (128 MiB in fp32; ViT-B/16's 48 layers fit in one), so
    the transient memory stays bounded at any model size.
    """

    max_elements = PRELUDE_MAX_ELEMENTS
    # Whether the weights are batched too (else only the factors, each layer forming its own W + ΔW), by device
    # type ("default" for the rest), unless the method's ``batch_weights`` says. CUDA: batched, because the eager
    # step is bound by launching ops; the CPU: per layer, because a batch of all weights runs from DRAM and one
    # layer's weight from cache (measurements: docs/PERFORMANCE.md, "Decisions taken from these runs").
    WEIGHTS_BY_DEVICE = {"cuda": True, "default": False}

    def __init__(self, layers, batch_weights: bool | None = None):
        super().__init__()
        self.batch_weights = batch_weights
        self.__dict__["groups"] = prelude_batches(  # references, not submodules
            layers, key=lambda m: (m.n_in, m.n_out, m.rank), entries=lambda m: m.n_in * m.n_out,
            max_elements=self.max_elements)

    def forward(self) -> None:
        for group in self.groups:
            batch_weights = self.batch_weights
            if batch_weights is None:
                batch_weights = by_device(self.WEIGHTS_BY_DEVICE, group[0].v_left)
            by_form: dict[str, list] = {}  # one form per group in practice (same class, mode and options)
            for layer in group:
                by_form.setdefault(layer._prelude_form() if batch_weights else "factors", []).append(layer)
            for form, layers in by_form.items():
                if form == "factors":
                    for layer, factors in zip(layers, hta_factors_many(layers)):
                        layer._factors = factors
                else:
                    for layer, w in zip(layers, hta_weights_many(layers, merged=form == "merged")):
                        layer._weight = w

    def extra_repr(self) -> str:
        return ", ".join(f"{len(g)}× ({g[0].n_out}, {g[0].n_in}) rank {g[0].rank}" for g in self.groups) + \
            f", batch_weights={self.batch_weights}"


_PLACEMENTS = ("linear", "ffn_adapter")
_IMPLS = ("merged", "lowrank")
_DEFAULT_TARGETS = ("q", "k", "v", "proj")


@register
@dataclasses.dataclass
class HTA(Method):
    """HTA (docs/methods/hta.md). Keyword arguments:

    * ``rank`` — dimension r of the low-rank term A·B (paper: 1, the "1-dimension bottleneck"); 0 removes it.
    * ``targets`` — linears adapted in every block, any subset of q, k, v, proj, fc1, fc2 (HTA-D3 default q, k, v,
      proj; rectangular fc1/fc2 use k = min(n_in, n_out), §3.1).
    * ``dropout`` — rate on the branch input, one mask for both terms (HTA-D4; paper grid {0.5, 0.3, 0.2, 0.1, 0}).
    * ``placement`` — "linear" (default) or "ffn_adapter" (§3.4; ``targets`` must then stay at its default, it is
      not used).
    * ``impl`` — how training computes the update: "merged" (W + ΔW per step) or "lowrank" (a LoRA-like branch
      from the factors, no ΔW and no weight-gradient GEMM); same function, a speed choice (``HTALinear``).
    * ``batch_weights`` — whether the prelude also forms the layers' GEMM weights as one batch (True) or only their
      factors (False); None (default) decides by device, ``HTAPrelude.WEIGHTS_BY_DEVICE``. Same function.

    Head: zeros (docs/methods/hta.md §5.2). Weight-decay grouping is the training loop's job: ``train.py``'s
    ``no_decay`` option matches the parameter names ``v_left``, ``v_right``, ``d``, ``down``, ``up`` (module docstring).
    """

    name: ClassVar[str] = "hta"
    head_init: ClassVar[str] = "zeros"

    rank: int = 1
    targets: tuple = _DEFAULT_TARGETS
    dropout: float = 0.0
    placement: str = "linear"
    impl: str = "merged"
    batch_weights: bool | None = None

    def __post_init__(self):
        check_int("hta", "rank", self.rank, minimum=0, note=" (0 disables the low-rank term)")
        check_auto_flag("hta", "batch_weights", self.batch_weights)
        self.dropout = check_rate("hta", "dropout", self.dropout)
        if self.impl not in _IMPLS:
            raise ValueError(f"hta: unknown impl {self.impl!r}; use one of {', '.join(_IMPLS)}")
        if self.placement not in _PLACEMENTS:
            raise ValueError(f"hta: unknown placement {self.placement!r}; use one of {', '.join(_PLACEMENTS)}")
        self.targets = check_targets(self.targets, LINEAR_NAMES + ("qkv", "reduction"))
        if self.placement == "ffn_adapter" and self.targets != _DEFAULT_TARGETS:
            raise ValueError("hta: placement='ffn_adapter' adapts the FFN output of every block; "
                             "'targets' applies only to placement='linear'")

    def install(self, model: nn.Module) -> None:
        if self.placement == "ffn_adapter":
            require(model, "hta (placement='ffn_adapter')", "fc2_out")
            for blk in model.blocks:
                blk.mlp_out = HTAAdapter(blk.dim, self.rank, self.dropout, device=blk.mlp.fc2.weight.device,
                                         impl=self.impl)
            model.prelude = HTAPrelude([blk.mlp_out for blk in model.blocks], self.batch_weights)
            return
        layers = []
        for _, owner, name, layer in iter_linears(model, self.targets):
            if not isinstance(layer, nn.Linear):
                raise ValueError(f"hta: {name} is already wrapped ({type(layer).__name__}); install one method only")
            layers.append(HTALinear(layer, self.rank, self.dropout, self.impl))
            setattr(owner, name, layers[-1])
        model.prelude = HTAPrelude(layers, self.batch_weights)

    @torch.no_grad()
    def merge(self, model: nn.Module) -> None:
        """W_pt ← W_pt + ΔW_pt (fp32, cast back), bias unchanged (§3.3); the adapter variant folds into fc2:
        W' = (I + ΔW_pt)·W, b' = (I + ΔW_pt)·b. Layers that are already plain are left alone (idempotent)."""
        model.prelude = None
        for blk in model.blocks:
            if isinstance(blk.mlp_out, HTAAdapter):
                fc2, delta = blk.mlp.fc2, blk.mlp_out.delta_weight()  # (D, D)
                bias = None if fc2.bias is None else delta @ fc2.bias.to(delta.dtype)
                blk.mlp.fc2 = merged_linear(fc2, delta @ fc2.weight.to(delta.dtype), bias)
                blk.mlp_out = nn.Identity()
        for _, owner, name, layer in iter_linears(model, self.targets):
            if isinstance(layer, HTALinear):
                setattr(owner, name, layer.merged())
