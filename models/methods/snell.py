"""SNELL: sparse tuning with kernelized LoRA ("Expanding Sparse Tuning for Low Memory Usage", NeurIPS 2024), with the
official-code semantics of ``ssfgunner/SNELL`` (docs/methods/snell.md; decisions SNELL-D0, SNELL-1).

Every targeted frozen linear (default: q, k, v, proj, fc1, fc2 of every block) gets a dense update built from two
factor tensors and sparsified at every forward (docs/methods/snell.md §2–3)::

    K[i, j] = 0.1·‖A[0, i] − B[0, j]‖₂ − 0.1·‖A[1, i] − B[1, j]‖₂          A: (2, n_in, r/2), B: (2, n_out, r/2)
    Kˢ = K ⊙ sg(|K|) ⊙ [|K| > t],  t = quantile(|K|, s)  (per matrix)    s = 0: Kˢ = K (plain KLoRA, no |K| factor)
    y  = x·Wᵀ + c + DropPath(Drop(x)·Kˢ)                                  nn.Linear layout: ΔW = Kˢᵀ

Module layout (a choice the paper and the official code leave open): each adapted linear is a :class:`SNELLLinear` that
owns its own A, B and exposes ``delta_weight()`` = Kˢᵀ, also for q, k and v. Their one shared dropout draw of LN1(x)
(docs/methods/snell.md §4) is made by :class:`SNELLQKVBranch` at ``attn.qkv_branch``, which references (does not own)
the q/k/v layers.

Fast paths (all exact; :func:`reference_kernel` is the naive version the tests compare against):

* each threshold is selected once per step, outside autograd and outside the activation checkpoint (whose
  backward recomputation rebuilds K and the mask, not the selection): two order statistics by a radix-select top-k
  (measured fastest on the CPU and on CUDA, docs/PERFORMANCE.md; the ``select`` argument picks another) with
  ``torch.quantile``'s own rank arithmetic and interpolation (:func:`quantile_threshold`);
* all thresholds of a forward are selected together, one batch per matrix shape (:class:`SNELLPrelude` at
  ``model.prelude``: 3 selections per step on ViT-B/16 instead of 48), bit-identical to each layer's own;
* optionally (``batch_weights``; default by device, ``SNELLPrelude.WEIGHTS_BY_DEVICE``) the prelude also builds the
  kernels themselves as one batch per shape, Kˢ (or W + Kˢᵀ on the one-GEMM path) in the GEMM's dtype, under one
  checkpoint per batch (:func:`snell_weights_many`), so a layer's forward is its GEMM(s) only;
* when a branch is deterministic (eval mode, or dropout = drop_path = 0) the layer runs ONE GEMM with W + Kˢᵀ instead
  of a second, full-size branch GEMM;
* the q, k, v kernels (same shape) are built and thresholded as one batch;
* non-reentrant activation checkpointing (SNELL-1) around the branch dropout, kernel construction and the branch
  GEMM, so K, the distance matrices, the masks and the dropout mask are recomputed in backward (the dropout from the
  saved RNG state) instead of stored (docs/methods/snell.md §5): a branch keeps only its input, as LoRA's does.

Ablation (SNELL Table 5(a), docs/methods/snell.md §12): ``delta`` changes only how the dense update K before the
sparsification is parameterised — ``kernel`` (the default, KLoRA, everything above), ``lora`` (K = (B·A)ᵀ, LoRA's
factors) or ``dense`` (K itself a trainable n_in × n_out matrix). The sparsification, dropouts, drop-paths,
checkpointing, merge and the threshold prelude apply unchanged; the batched-kernel fast path (``batch_weights``) is
KLoRA's and is refused for the other two, which run per layer (:func:`delta_update`).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from .base import (LINEAR_NAMES, PRELUDE_MAX_ELEMENTS, DeltaLinear, Method, autocast_dtype, autocast_input, by_device,
                   check_auto_flag, check_int, check_rate, check_targets, dropout_layer, full_precision, iter_linears,
                   prelude_batches, register, take_handover)

__all__ = ["ALPHA", "DELTAS", "SNELL", "SNELLLinear", "SNELLPrelude", "SNELLQKVBranch", "kernel", "kernel_threshold",
           "delta_update", "sparsify", "sparse_kernel", "quantile_threshold", "reference_kernel", "snell_weights_many"]

ALPHA = (0.1, -0.1)  # the fixed segment coefficients α of K (`shared_coeff_fc`, SNELL-D0)
# How the dense update K before sparsification is parameterised (docs/methods/snell.md §12): KLoRA's kernel (SNELL
# itself), LoRA's product B·A, or a dense trainable matrix (SNELL Table 5(a)'s three rows).
DELTAS = ("kernel", "lora", "dense")
_QKV = ("q", "k", "v")
_NO_INPUT_DROPOUT = ("proj",)  # the attention output feeds its branch undropped (docs/methods/snell.md §4)


# --------------------------------------------------------------------------------------------------------- kernels


def kernel(A: torch.Tensor, B: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Dense KLoRA update K = Σ_p α_p·cdist(A_p, B_p), Euclidean, not squared (docs/methods/snell.md §2).

    A: (..., 2, n_in, r/2), B: (..., 2, n_out, r/2), alpha: (2, 1, 1) -> K: (..., n_in, n_out).
    """
    return (alpha * torch.cdist(A, B)).sum(-3)


def delta_update(delta: str, factors, alpha: torch.Tensor) -> torch.Tensor:
    """The dense update K (..., n_in, n_out) before sparsification, by parameterisation (docs/methods/snell.md §12):

    * ``kernel``: factors (A, B) of shapes (..., 2, n_in, r/2), (..., 2, n_out, r/2): :func:`kernel` (KLoRA);
    * ``lora``: factors (A, B) in LoRA's layout, A (..., r, n_in), B (..., n_out, r): K = (B·A)ᵀ = Aᵀ·Bᵀ, so that the
      merged ``nn.Linear`` update Kᵀ is LoRA's B·A;
    * ``dense``: factors (D,), D (..., n_in, n_out): K = D.
    """
    if delta == "kernel":
        return kernel(*factors, alpha)
    if delta == "lora":
        A, B = factors
        return A.transpose(-1, -2) @ B.transpose(-1, -2)
    (D,) = factors
    return D


def _round_to_float32(x: float) -> float:
    """The float32 nearest to ``x`` (ties to even), in plain Python arithmetic, so ``torch.compile`` traces it as a
    constant instead of breaking the graph on a tensor's ``.item()``. Exact for normal float32 values."""
    m, e = math.frexp(x)  # x = m·2^e, 0.5 <= |m| < 1: a float32 keeps 24 bits of m
    return math.ldexp(round(m * 2**24) / 2**24, e)


def _quantile_ranks(q: float, n: int, dtype: torch.dtype) -> tuple[int, int, float]:
    """(floor index, ceil index, weight) of quantile ``q`` among ``n`` sorted values, with ``torch.quantile``'s
    arithmetic (checked against it bit for bit): q is first rounded to the input dtype, then rank = q·(n − 1) and
    weight = rank − floor(rank) are formed in float64; the weight is rounded to the input dtype by the caller."""
    q_in = q if dtype == torch.float64 else _round_to_float32(q)
    rank = q_in * (n - 1)
    return math.floor(rank), math.ceil(rank), rank - math.floor(rank)


def _select_kthvalue(a: torch.Tensor, ranks: tuple[int, ...]) -> list[torch.Tensor]:
    """The values of 0-based ``ranks`` along the last dim by quickselect (linear time; fastest on the CPU)."""
    return [a.kthvalue(r + 1, dim=-1).values for r in ranks]  # kthvalue is 1-based


def _select_sort(a: torch.Tensor, ranks: tuple[int, ...]) -> list[torch.Tensor]:
    """The same values from one sort. On CUDA ``kthvalue`` over a few very long rows (one 768×768 |K| per row) runs
    one thread block per row, while a segmented sort of the same rows is a few fast kernels (top-k is faster still
    there, ``SELECT_BY_DEVICE``; docs/PERFORMANCE.md)."""
    srt = a.sort(dim=-1).values
    return [srt[..., r] for r in ranks]


def _select_topk(a: torch.Tensor, ranks: tuple[int, ...]) -> list[torch.Tensor]:
    """The same values from a radix-select top-k: the n − r0 largest entries (r0 = the smallest rank) are, as a
    multiset, the sorted entries of ranks r0 … n−1, so the few wanted ranks are the smallest of those. Touches the
    data a few times instead of sorting it; bench rows ``snell:select=topk`` / ``snell:select=sort`` compare them on
    a device."""
    r0 = min(ranks)
    top = a.topk(a.shape[-1] - r0, dim=-1, largest=True, sorted=False).values      # (..., n − r0)
    low = top.topk(max(ranks) - r0 + 1, dim=-1, largest=False, sorted=True).values  # ascending
    return [low[..., r - r0] for r in ranks]


# Order-statistic strategies by device type ("default" for the rest): top-k measured fastest on the CPU and on a
# GPU (docs/PERFORMANCE.md, "SNELL threshold selection"); the table stays so that a device where another strategy
# measures faster (bench.py --methods snell:select=sort,...) gets it without touching the callers.
SELECTORS = {"kthvalue": _select_kthvalue, "sort": _select_sort, "topk": _select_topk}
SELECT_BY_DEVICE = {"cuda": "topk", "default": "topk"}


def quantile_threshold(a: torch.Tensor, q: float, select: str | None = None) -> torch.Tensor:
    """``torch.quantile(a, q, dim=-1)`` (linear interpolation) by selection. a: (..., n) -> (...).

    Bit-identical to ``torch.quantile`` for float32/float64 (same rank arithmetic, same ``lerp``), and free of its
    2²⁴-element limit (docs/methods/snell.md §3 "Size limit"). ``select`` names a strategy of ``SELECTORS``; by default
    ``SELECT_BY_DEVICE`` (top-k, measured fastest on the CPU and on CUDA).
    """
    lo, hi, w = _quantile_ranks(float(q), a.shape[-1], a.dtype)
    if select is None:
        select = by_device(SELECT_BY_DEVICE, a)
    fn = SELECTORS[select]
    if hi == lo:
        return fn(a, (lo,))[0]  # torch.quantile: lerp(v, v, 0) == v
    v_lo, v_hi = fn(a, (lo, hi))
    return torch.lerp(v_lo, v_hi, torch.full_like(v_lo, w))


def sparsify(k: torch.Tensor, sparsity: float, threshold: torch.Tensor | None = None) -> torch.Tensor:
    """Kˢ = K ⊙ sg(|K|) ⊙ [|K| > t], t = per-matrix quantile of |K| at ``sparsity`` (code semantics,
    docs/methods/snell.md §3).

    k: (..., n_in, n_out), one threshold per trailing matrix; ``threshold`` (...,) when already selected (it must be
    :func:`kernel_threshold` of the same factors). ``sparsity == 0`` returns K unchanged (KLoRA: no |K| factor).
    The gradient reaching K is upstream ⊙ |K| ⊙ M: zero on masked entries, no straight-through estimator.
    """
    if sparsity == 0:
        return k
    with torch.no_grad():  # selection and mask stay out of the autograd graph
        mag = k.abs()
        t = quantile_threshold(mag.flatten(-2), sparsity) if threshold is None else threshold  # (...,)
        keep = mag * (mag > t[..., None, None])  # sg(|K|) ⊙ M
    return k * keep


@torch.no_grad()
def kernel_threshold(A: torch.Tensor, B: torch.Tensor, alpha: torch.Tensor, sparsity: float,
                     select: str | None = None) -> torch.Tensor | None:
    """The per-matrix threshold t of :func:`sparsify` for factors A, B (None when ``sparsity == 0``). Selected once
    per step OUTSIDE the activation checkpoint, so the backward recomputation rebuilds K and its mask (cheap,
    element-wise) but not the order statistics (the expensive part, which it otherwise ran a second time).
    ``select``: the strategy of :func:`quantile_threshold` (None: by device)."""
    if sparsity == 0:
        return None
    # kernel()'s arithmetic with the product in place (bit-identical; one (..., 2, n_in, n_out) buffer fewer)
    mag = torch.cdist(A, B).mul_(alpha).sum(-3).abs_()  # (..., n_in, n_out)
    return quantile_threshold(mag.flatten(-2), sparsity, select)


def sparse_kernel(A: torch.Tensor, B: torch.Tensor, alpha: torch.Tensor, sparsity: float,
                  threshold: torch.Tensor | None = None) -> torch.Tensor:
    """Kˢ from the factors, batched over leading dims: (..., 2, n_in, h), (..., 2, n_out, h) -> (..., n_in, n_out)."""
    return sparsify(kernel(A, B, alpha), sparsity, threshold)


def reference_kernel(A: torch.Tensor, B: torch.Tensor, alpha: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The naive Kˢ of one matrix (docs/methods/snell.md §2–3): one ``cdist`` per segment, ``torch.quantile`` on the
    flattened |K|, strict mask. A: (2, n_in, h), B: (2, n_out, h), alpha: (2, 1, 1) -> (n_in, n_out). Kept as the
    test oracle for the fast path; the branch it defines is ``x @ reference_kernel(...)``."""
    k = sum(alpha[p] * torch.cdist(A[p], B[p]) for p in range(A.shape[0]))
    if sparsity == 0:
        return k
    mag = k.detach().abs()
    t = torch.quantile(mag.flatten(), sparsity)
    return k * mag * (mag > t)


def _checkpointed(enabled: bool, fn, x, A, B, alpha, sparsity, threshold=None):
    """``fn(x, A, B, threshold)`` under non-reentrant activation checkpointing (SNELL-1) when gradients are being
    recorded, with the threshold selected once, outside (``threshold`` when the prelude selected it, else
    :func:`kernel_threshold` here); without checkpointing ``fn(x, A, B, threshold)`` (None: selected inside)."""
    if enabled and torch.is_grad_enabled():
        t = kernel_threshold(A, B, alpha, sparsity) if threshold is None else threshold
        return _checkpoint(fn, x, A, B, t, use_reentrant=False)
    return fn(x, A, B, threshold)


def _branches(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: torch.Tensor, sparsity: float,
              threshold: torch.Tensor | None = None):
    """x·Kˢ_m for a batch of m same-shape kernels: x (..., n_in), A (m, 2, n_in, h), B (m, 2, n_out, h)."""
    return tuple(x @ k for k in sparse_kernel(A, B, alpha, sparsity, threshold).unbind(0))


def snell_weights_many(layers, A: torch.Tensor, B: torch.Tensor, t: torch.Tensor | None, merged: bool) -> torch.Tensor:
    """What the GEMMs of m same-shape :class:`SNELLLinear` layers need, built as one batch in fp32 and cast once to
    the dtype the GEMM runs in (bf16 under bf16 autocast): Kˢ (m, n_in, n_out) for a branch ``x·Kˢ``, or, with
    ``merged``, W + Kˢᵀ (m, n_out, n_in) for the one-GEMM path. A, B: the layers' stacked factors; t: their
    thresholds (:func:`kernel_threshold` of A, B). The same values as each layer's own forward (tested)."""
    first = layers[0]
    dtype = autocast_dtype(first.base.weight)  # read before autocast is switched off below
    with full_precision(A):
        k = sparse_kernel(A, B, first.alpha, first.sparsity, t)  # (m, n_in, n_out)
        if merged:
            k = torch.stack([lin.base.weight for lin in layers]).to(k.dtype) + k.transpose(-1, -2)  # W frozen
    return k.to(dtype)


def _checkpointed_branches(enabled: bool, drop: nn.Module, x: torch.Tensor, kernels) -> tuple:
    """``Drop(x)·Kˢ`` for handed-over kernels (one dropout draw for all of them), under non-reentrant checkpointing
    when gradients are recorded: the dropout mask and its output are recomputed in backward, not stored."""
    fn = lambda x_, *ks: tuple(d @ k for d in (drop(x_),) for k in ks)  # noqa: E731
    if enabled and torch.is_grad_enabled():
        return _checkpoint(fn, x, *kernels, use_reentrant=False)
    return fn(x, *kernels)


# --------------------------------------------------------------------------------------------------------- modules


class SNELLLinear(DeltaLinear):
    """A frozen ``nn.Linear`` plus a SNELL branch: y = base(x) + DropPath(Drop(x)·Kˢ) (docs/methods/snell.md §2–4).

    ``shared_input=True`` (q, k, v): the branch input is the dropout draw that :class:`SNELLQKVBranch` shares between
    q, k and v, so in regularised training this layer returns ``base(x)`` and the hook adds the branch. Whenever the
    branch is deterministic (:attr:`fused`) the layer computes ``x·(W + Kˢᵀ)ᵀ + c`` as one GEMM instead.

    ``delta`` (docs/methods/snell.md §12): ``kernel`` holds KLoRA's A (2, n_in, r/2) and B (2, n_out, r/2);
    ``lora`` holds LoRA's A (r, n_in) and B (n_out, r); ``dense`` holds D (n_in, n_out). The last two take the
    per-layer path of :meth:`_forward_update` (same wiring, sparsification and checkpointing).
    """

    def __init__(self, base: nn.Linear, rank: int = 8, sparsity: float = 0.9, dropout: float = 0.1,
                 drop_path: float = 0.1, checkpoint: bool = True, shared_input: bool = False, delta: str = "kernel"):
        super().__init__(base)
        if delta not in DELTAS:
            raise ValueError(f"delta must be one of {', '.join(DELTAS)}, got {delta!r}")
        if delta == "kernel" and (rank < 2 or rank % 2):
            raise ValueError(f"rank must be a positive even number (two halves of r/2), got {rank}")
        if delta == "lora" and rank < 1:
            raise ValueError(f"rank must be a positive integer, got {rank}")
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.delta, self.rank, self.sparsity = delta, rank, float(sparsity)  # reset_parameters reads delta, sparsity
        if delta == "kernel":
            self.A = nn.Parameter(torch.empty(2, self.in_features, rank // 2, **kw))  # `In_Qs`
            self.B = nn.Parameter(torch.empty(2, self.out_features, rank // 2, **kw))  # `Out_Qs`
        elif delta == "lora":
            self.A = nn.Parameter(torch.empty(rank, self.in_features, **kw))  # LoRA's A (`down`)
            self.B = nn.Parameter(torch.empty(self.out_features, rank, **kw))  # LoRA's B (`up`)
        else:
            self.D = nn.Parameter(torch.empty(self.in_features, self.out_features, **kw))  # K itself
        # Fixed ±0.1 segment coefficients (`shared_coeff_fc`, SNELL-D0): a constant, so not trained and not saved.
        self.register_buffer("alpha", torch.empty(2, 1, 1, **kw), persistent=False)
        self.reset_parameters()
        self.shared_input = shared_input
        self.drop = dropout_layer(0.0 if shared_input else dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.regularised = dropout > 0 or drop_path > 0
        self.checkpoint = checkpoint
        # this forward's share, handed over by SNELLPrelude (base.take_handover): the threshold t, or with
        # batch_weights the GEMM's own weight W + Kˢᵀ (one-GEMM path) or kernel Kˢ (branch path)
        self._threshold = self._weight = self._kernel = None

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """A, B ~ U(±1/sqrt(n·r/2)) (PyTorch's fan-in of a 3-D tensor, docs/methods/snell.md §2 init table) and
        α = (0.1, −0.1). Also what fills a layer materialised from the meta device with ``to_empty`` (α is not in the
        state dict).

        ``lora`` / ``dense`` (docs/methods/snell.md §12): at s = 0, LoRA's init (A Kaiming-uniform a=√5, i.e.
        U(±1/√n_in); B zeros) and D = 0, so the model starts as the frozen one. At s > 0 a zero update can never
        train (its gradient is upstream ⊙ |K| ⊙ M = 0, §3), so the tensor that would be zero gets ``nn.Linear``'s
        default init instead: B ~ U(±1/√r), D ~ U(±1/√n_in) (Kaiming-uniform a=√5 in ``nn.Linear`` layout)."""
        if self.delta == "kernel":
            nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.B, a=math.sqrt(5))
        elif self.delta == "lora":
            nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # (r, n_in): fan-in n_in, as LoRA's A
            if self.sparsity == 0:
                nn.init.zeros_(self.B)
            else:
                nn.init.kaiming_uniform_(self.B, a=math.sqrt(5))  # (n_out, r): fan-in r
        elif self.sparsity == 0:
            nn.init.zeros_(self.D)
        else:
            bound = 1.0 / math.sqrt(self.in_features)  # kaiming_uniform_(a=√5) of the (n_out, n_in) layout
            nn.init.uniform_(self.D, -bound, bound)
        self.alpha.copy_(torch.tensor(ALPHA).view(2, 1, 1))

    @property
    def fused(self) -> bool:
        """True when the branch is deterministic (eval mode, or no dropout/drop-path): one GEMM with W + Kˢᵀ."""
        return not (self.training and self.regularised)

    @property
    def factors(self) -> tuple[torch.Tensor, ...]:
        """The trainable tensors K is built from: (A, B), or (D,) for ``delta="dense"``."""
        return (self.D,) if self.delta == "dense" else (self.A, self.B)

    def update(self) -> torch.Tensor:
        """K (n_in, n_out), the dense update before sparsification (:func:`delta_update`)."""
        return delta_update(self.delta, self.factors, self.alpha)

    @torch.no_grad()
    def threshold(self) -> torch.Tensor | None:
        """This layer's threshold t = quantile(|K|, s) (None at s = 0), selected outside autograd: what the per-layer
        path of a ``lora`` / ``dense`` delta uses (the kernel path selects with :func:`kernel_threshold`)."""
        if self.sparsity == 0:
            return None
        return quantile_threshold(self.update().abs().flatten(-2), self.sparsity)

    def sparse_kernel(self) -> torch.Tensor:
        """Kˢ (n_in, n_out), exactly as the forward computes it."""
        if self.delta == "kernel":
            return sparse_kernel(self.A, self.B, self.alpha, self.sparsity)
        return sparsify(self.update(), self.sparsity)

    def _sparse_update(self, t: torch.Tensor | None, *factors: torch.Tensor) -> torch.Tensor:
        """Kˢ from ``factors`` (this layer's, passed in so that a checkpoint records them) and the threshold t."""
        return sparsify(delta_update(self.delta, factors, self.alpha), self.sparsity, t)

    def _run_update(self, fn, x: torch.Tensor, t: torch.Tensor | None):
        """``fn(x, t, *factors)`` under non-reentrant checkpointing (SNELL-1) when gradients are recorded, with t
        selected outside it (the prelude's, else :meth:`threshold`); otherwise plainly (None: selected inside)."""
        if self.checkpoint and torch.is_grad_enabled():
            t = self.threshold() if t is None else t
            return _checkpoint(fn, x, t, *self.factors, use_reentrant=False)
        return fn(x, t, *self.factors)

    def _forward_update(self, x: torch.Tensor) -> torch.Tensor:
        """The forward of a ``lora`` / ``dense`` delta: the kernel path's wiring (one GEMM with W + Kˢᵀ when
        deterministic, else base(x) + DropPath(Drop(x)·Kˢ), the q/k/v branches through the hook), per layer."""
        t = take_handover(self, "_threshold")
        if self.fused:
            fn = lambda x_, t_, *f: F.linear(x_, self.base.weight + self._sparse_update(t_, *f).t(),  # noqa: E731
                                             self.base.bias)
            return self._run_update(fn, x, t)
        y = self.base(x)
        if self.shared_input:
            return y
        fn = lambda x_, t_, *f: self.drop(x_) @ self._sparse_update(t_, *f)  # noqa: E731
        return y + self.drop_path(self._run_update(fn, autocast_input(x), t))

    def delta_weight(self) -> torch.Tensor:
        """The update in ``nn.Linear`` layout (out, in): Kˢᵀ (docs/methods/snell.md §6)."""
        return self.sparse_kernel().t()

    def _fused_forward(self, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, t: torch.Tensor | None):
        k = sparse_kernel(A, B, self.alpha, self.sparsity, t)  # (n_in, n_out)
        return F.linear(x, self.base.weight + k.t(), self.base.bias)

    def _branch(self, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        return self.drop(x) @ sparse_kernel(A, B, self.alpha, self.sparsity, t)  # dropout inside the checkpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.delta != "kernel":
            return self._forward_update(x)
        if self.fused:
            w = take_handover(self, "_weight")  # W + Kˢᵀ, built by the prelude
            if w is not None:
                return F.linear(x, w, self.base.bias)
            return _checkpointed(self.checkpoint, self._fused_forward, x, self.A, self.B, self.alpha, self.sparsity,
                                 take_handover(self, "_threshold"))
        y = self.base(x)
        if self.shared_input:  # the branch arrives through attn.qkv_branch (one dropout draw for q, k and v)
            return y
        k = take_handover(self, "_kernel")  # Kˢ, built by the prelude
        if k is not None:
            (branch,) = _checkpointed_branches(self.checkpoint, self.drop, autocast_input(x), (k,))
        else:
            branch = _checkpointed(self.checkpoint, self._branch, autocast_input(x), self.A, self.B, self.alpha,
                                   self.sparsity, take_handover(self, "_threshold"))
        return y + self.drop_path(branch)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"sparsity={self.sparsity}, shared_input={self.shared_input}"
                + (f", delta={self.delta}" if self.delta != "kernel" else ""))


class SNELLQKVBranch(nn.Module):
    """``attn.qkv_branch`` for SNELL: x = LN1(h) -> (dq, dk, dv), ONE dropout draw shared by q, k, v
    (docs/methods/snell.md §4).

    It owns only that dropout; the factors live in the :class:`SNELLLinear` layers at ``attn.q/k/v`` (``None`` for
    an untargeted one), which it references. Returns ``None`` for a layer whose branch is :attr:`SNELLLinear.fused`
    (that layer folded Kˢᵀ into its own GEMM). The q/k/v kernels are built and thresholded as one batch.
    """

    def __init__(self, q: SNELLLinear | None, k: SNELLLinear | None, v: SNELLLinear | None, dropout: float = 0.1,
                 checkpoint: bool = True):
        super().__init__()
        self.__dict__["linears"] = (q, k, v)  # references, not submodules: the layers are registered at attn.q/k/v
        self.drop = dropout_layer(dropout)
        self.checkpoint = checkpoint

    def forward(self, x: torch.Tensor):
        live = [lin for lin in self.linears if lin is not None and not lin.fused]
        if not live:
            return None, None, None
        if live[0].delta != "kernel":
            outs = iter(self._update_branches(x, live))
            return tuple(None if lin is None or lin.fused else lin.drop_path(next(outs)) for lin in self.linears)
        kernels = [take_handover(lin, "_kernel") for lin in live]  # built by the prelude (batch_weights)
        if all(k is not None for k in kernels):
            outs = iter(_checkpointed_branches(self.checkpoint, self.drop, autocast_input(x), kernels))
            return tuple(None if lin is None or lin.fused else lin.drop_path(next(outs)) for lin in self.linears)
        first = live[0]
        A = torch.stack([lin.A for lin in live])  # (m, 2, D, r/2)
        B = torch.stack([lin.B for lin in live])  # (m, 2, D, r/2)
        ts = [take_handover(lin, "_threshold") for lin in live]  # selected by the prelude, else below for the stack
        t = None if any(ti is None for ti in ts) else torch.stack(ts)  # (m,)
        # one dropout draw of x (B, N, D) for q, k and v, made inside the checkpoint like the kernels
        branches = lambda x_, A_, B_, t: _branches(self.drop(x_), A_, B_, first.alpha, first.sparsity, t)  # noqa: E731
        outs = iter(_checkpointed(self.checkpoint, branches, autocast_input(x), A, B, first.alpha, first.sparsity, t))
        return tuple(None if lin is None or lin.fused else lin.drop_path(next(outs)) for lin in self.linears)

    def _update_branches(self, x: torch.Tensor, live: list) -> tuple:
        """Drop(x)·Kˢ for each live ``lora`` / ``dense`` layer, one dropout draw for all of them, per layer (no
        stacking), under one non-reentrant checkpoint with the thresholds selected outside it."""
        ckpt = self.checkpoint and torch.is_grad_enabled()
        ts = [take_handover(lin, "_threshold") for lin in live]  # selected by the prelude, else here (or inside)
        if ckpt:
            ts = [lin.threshold() if t is None else t for lin, t in zip(live, ts)]
        flat = [f for lin in live for f in lin.factors]

        def fn(x_, *flat_):
            xd, i, out = self.drop(x_), 0, []
            for lin, t in zip(live, ts):
                n = len(lin.factors)
                out.append(xd @ lin._sparse_update(t, *flat_[i:i + n]))
                i += n
            return tuple(out)

        if ckpt:
            return _checkpoint(fn, autocast_input(x), *flat, use_reentrant=False)
        return fn(autocast_input(x), *flat)


class SNELLPrelude(nn.Module):
    """``model.prelude`` for SNELL: at the start of every forward, select the thresholds t of all SNELL layers, one
    batch per (n_in, n_out, rank, sparsity) group, and hand each layer its own (it uses it once).

    Why: per layer, selection is a handful of kernels over one |K|, and on a GPU the eager step is bound by launching
    them (docs/PERFORMANCE.md). Batched, ViT-B/16's 72 kernels take three selections (48 q/k/v/proj, 12 fc1,
    12 fc2), each over a (m, n_in·n_out) stack. The values are those each layer would select
    alone (same K, same :func:`quantile_threshold`; tested). Like ``HTAPrelude`` it owns nothing and references
    the layers registered at their own places. The selection runs outside autograd; a batch holds at most
    ``max_elements`` |K| entries (128 MiB in fp32, a few times that while it is built and selected from), only while
    the prelude runs, before any activation is stored.

    With ``batch_weights`` it also hands each layer the kernel its GEMM uses (:func:`snell_weights_many`: Kˢ for the
    dropout branch, W + Kˢᵀ for the one-GEMM path), built for the whole batch under one non-reentrant checkpoint, so
    backward rebuilds K and its masks once per batch rather than once per layer, and a layer's forward is its
    GEMM(s) only (the branch dropout stays recomputed, inside each layer's own small checkpoint).
    """

    max_elements = PRELUDE_MAX_ELEMENTS  # |K| entries per batch
    # Whether the prelude also builds the kernels (``batch_weights``), by device type ("default" for the rest),
    # unless the method's ``batch_weights`` says. Batched, a training step keeps one Kˢ per layer in the GEMM
    # dtype until backward (ViT-B/16, all six targets: 162 MiB in bf16, batch-independent) instead of rebuilding it
    # inside each layer's checkpoint. CUDA: batched (1.7 x faster with dropout, 6.7 x without, for 0.1 GiB more
    # peak memory); the CPU: per layer, where the batched build is slower (docs/PERFORMANCE.md, "Decisions taken
    # from these runs").
    WEIGHTS_BY_DEVICE = {"cuda": True, "default": False}

    def __init__(self, layers, batch_weights: bool | None = None, select: str | None = None):
        super().__init__()
        self.batch_weights = batch_weights
        self.select = select  # the threshold strategy (SELECTORS); None: SELECT_BY_DEVICE
        # ViT-B/16: 48 + 12 + 12 layers in 3 batches; ViT-H/14's 128 q/k/v/proj in 7. s = 0 (KLoRA) selects nothing.
        self.__dict__["groups"] = prelude_batches(  # references, not submodules
            [lin for lin in layers if lin.sparsity > 0],
            key=lambda lin: (lin.delta, lin.in_features, lin.out_features, lin.rank, lin.sparsity),
            entries=lambda lin: lin.in_features * lin.out_features, max_elements=self.max_elements)

    def forward(self) -> None:
        for group in self.groups:
            if group[0].delta != "kernel":  # lora / dense (§12): thresholds only, each K built as the layer builds it
                with torch.no_grad():
                    mag = torch.stack([lin.update() for lin in group]).abs_()  # (m, n_in, n_out)
                    t = quantile_threshold(mag.flatten(-2), group[0].sparsity, self.select)
                for lin, ti in zip(group, t.unbind(0)):
                    lin._threshold = ti
                continue
            A = torch.stack([lin.A for lin in group])  # (m, 2, n_in, r/2)
            B = torch.stack([lin.B for lin in group])  # (m, 2, n_out, r/2)
            t = kernel_threshold(A.detach(), B.detach(), group[0].alpha, group[0].sparsity, self.select)  # (m,)
            batch_weights = self.batch_weights
            if batch_weights is None:
                batch_weights = by_device(self.WEIGHTS_BY_DEVICE, group[0].A)
            if not batch_weights:
                for lin, ti in zip(group, t.unbind(0)):
                    lin._threshold = ti
                continue
            by_form: dict[bool, list[int]] = {}  # one form per group in practice (same mode and options)
            for i, lin in enumerate(group):
                by_form.setdefault(lin.fused, []).append(i)
            for fused, idx in by_form.items():
                layers = [group[i] for i in idx]
                a, b, ti = (A, B, t) if len(idx) == len(group) else (A[idx], B[idx], t[idx])
                # bound now, not looked up: the checkpoint calls it again in backward, after this loop has moved on
                build = functools.partial(snell_weights_many, layers, t=ti, merged=fused)
                if layers[0].checkpoint and torch.is_grad_enabled():  # K, |K|, masks: rebuilt in backward, once
                    w = _checkpoint(build, a, b, use_reentrant=False, preserve_rng_state=False)
                else:
                    w = build(a, b)
                for lin, wi in zip(layers, w.unbind(0)):
                    setattr(lin, "_weight" if fused else "_kernel", wi)

    def extra_repr(self) -> str:
        return ", ".join(f"{len(g)}× ({g[0].out_features}, {g[0].in_features})" for g in self.groups) + \
            f", batch_weights={self.batch_weights}"


# ---------------------------------------------------------------------------------------------------------- method


@register
@dataclasses.dataclass
class SNELL(Method):
    """SNELL-r on every block linear (docs/methods/snell.md). Trainable: all A, B (165,888·r for ViT-B/16 with all
    six targets), the cls_token (+768) and the head (+769·C; trunc-normal init). s = 0 gives plain KLoRA.
    ``delta=lora``: the same count (r·(n_in + n_out) per matrix); ``delta=dense``: n_in·n_out per matrix
    (84,934,656 on ViT-B/16), for the sparsification ablation of SNELL Table 5(a) (docs/methods/snell.md §12).

    Regularisers on by default, as in every official script: branch input Dropout 0.1 (q, k, v share one draw; proj
    has none; fc1 and fc2 draw their own), per-branch DropPath 0.1, backbone stochastic depth 0 → 0.1.
    """

    name = "snell"
    head_init = "trunc_normal"
    backbone_drop_path = 0.1  # `--drop-path` 0.1 in the official scripts (docs/methods/snell.md §4)

    rank: int = 8  # r (`--low_rank_dim`): A and B hold two r/2-wide halves
    sparsity: float = 0.9  # s (`--init_thres`): fraction of each |K| zeroed; 0 -> KLoRA
    targets: tuple = LINEAR_NAMES
    dropout: float = 0.1  # branch input dropout (`additional_drop`)
    drop_path: float = 0.1  # per-branch DropPath on the branch output
    checkpoint: bool = True  # non-reentrant activation checkpointing of kernel construction (SNELL-1)
    # whether the prelude also builds every layer's kernel, one batch per shape (same function; a speed/memory
    # choice, docs/PERFORMANCE.md); None: by device, SNELLPrelude.WEIGHTS_BY_DEVICE
    batch_weights: bool | None = None
    # how the prelude selects each step's thresholds (a key of SELECTORS: kthvalue, sort, topk; the same values,
    # bit for bit, at different speeds); None: by device, SELECT_BY_DEVICE
    select: str | None = None
    # how the dense update before sparsification is parameterised (DELTAS; SNELL Table 5(a), docs/methods/snell.md
    # §12): kernel (KLoRA-r: SNELL), lora (LoRA-r's B·A) or dense (a full n_in × n_out matrix; rank unused)
    delta: str = "kernel"

    def __post_init__(self):
        self.targets = check_targets(self.targets)
        if self.select is not None and self.select not in SELECTORS:
            raise ValueError(f"snell: select must be one of {', '.join(SELECTORS)} or null (by device), got "
                             f"{self.select!r}")
        if self.delta not in DELTAS:
            raise ValueError(f"snell: delta must be one of {', '.join(DELTAS)}, got {self.delta!r}")
        if self.delta == "kernel":
            check_int("snell", "rank", self.rank, minimum=2, note=" and even (two halves of r/2)")
            if self.rank % 2:
                raise ValueError(f"snell: rank must be an integer >= 2 and even (two halves of r/2), got "
                                 f"{self.rank!r}")
        else:
            check_int("snell", "rank", self.rank)
        check_auto_flag("snell", "batch_weights", self.batch_weights)
        if self.batch_weights and self.delta != "kernel":
            raise ValueError(f"snell: batch_weights builds KLoRA kernels in batches; delta={self.delta} has no such "
                             "path (its layers build their own update): set batch_weights to null or false")
        for name in ("sparsity", "dropout", "drop_path"):  # sparsity: the fraction of each |K| zeroed
            setattr(self, name, check_rate("snell", name, getattr(self, name)))

    def install(self, model: nn.Module) -> None:
        if "cls_token" in model.capabilities:
            model.cls_token.requires_grad_(True)  # ft_cls_token=True (docs/methods/snell.md §1)
        for _, owner, name, lin in iter_linears(model, self.targets):
            setattr(owner, name, SNELLLinear(
                lin, self.rank, self.sparsity, dropout=0.0 if name in _NO_INPUT_DROPOUT else self.dropout,
                drop_path=self.drop_path, checkpoint=self.checkpoint, shared_input=name in _QKV, delta=self.delta))
        for blk in model.blocks if set(self.targets) & set(_QKV) else ():
            qkv = [getattr(blk.attn, n) if isinstance(getattr(blk.attn, n), SNELLLinear) else None for n in _QKV]
            if any(lin is not None for lin in qkv):
                blk.attn.qkv_branch = SNELLQKVBranch(*qkv, dropout=self.dropout, checkpoint=self.checkpoint)
        if self.sparsity > 0:
            model.prelude = SNELLPrelude([lin for *_, lin in iter_linears(model, self.targets)], self.batch_weights,
                                         self.select)

    def merge(self, model: nn.Module) -> None:
        """W_eff = W₀ + Kˢᵀ per adapted linear, Kˢ computed exactly as in the eval forward (docs/methods/snell.md §6).
        Layers that are already plain are left alone (idempotent)."""
        model.prelude = None
        for _, owner, name, lin in iter_linears(model, self.targets):
            if isinstance(lin, SNELLLinear):
                setattr(owner, name, lin.merged())
        for blk in model.blocks if set(self.targets) & set(_QKV) else ():
            blk.attn.qkv_branch = None
