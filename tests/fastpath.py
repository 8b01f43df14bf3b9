"""Shared by the fast-path tests of HTA and SNELL: the devices they run on, and the comparison of a fast path with
its reference through a whole model, in float64.

Why float64 decides: a perturbed ViT amplifies rounding. Two float32 paths that sum in different orders (a batched
GEMM against one per layer) differ by about a hundred ulps through 12 blocks, and by far more with TF32 on a GPU, so a
float32 comparison cannot tell a bug from rounding. In float64 the same rearrangement stays near 1e-14 while any
real difference keeps its size: a 1e-9 tolerance separates the two (``test_methods_hta``'s
``test_fp64_verdict_passes_a_rearranged_sum_and_fails_a_real_difference`` shows both cases).
"""
from __future__ import annotations

import torch

# The fast-path tests run on the CPU everywhere and on CUDA where a device is present (one pytest command checks a
# GPU machine: pytest tests/test_methods_hta.py tests/test_methods_snell.py -k cuda).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# The CPU checks the micro ViT (seconds); a GPU checks the real ViT-B/16 shapes, batching and kernels.
ARCH = {"cpu": ("vit_micro_patch8", 32), "cuda": ("vit_base_patch16_224", 224)}
FP64_TOL = 1e-9


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def outputs_and_grads(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """A training forward's output and the gradient of Σ y² for every trainable tensor; the RNG is seeded first, so
    two calls draw the same dropout masks and drop-path samples."""
    torch.manual_seed(0)
    y = model(x)
    params = [p for p in model.parameters() if p.requires_grad]
    return [y.detach(), *torch.autograd.grad(y.square().sum(), params)]


def fast_vs_reference(model: torch.nn.Module, x: torch.Tensor, fast, reference,
                      dtype: torch.dtype = torch.float64) -> float:
    """Max relative error over the output and every gradient of ``model`` with a fast path switched on (``fast()``)
    against its reference (``reference()``), the model and input in ``dtype``. The model is left in float32."""
    model.to(dtype)
    try:
        fast()
        got = outputs_and_grads(model, x.to(dtype))
        reference()
        want = outputs_and_grads(model, x.to(dtype))
    finally:
        model.float()
    return max(rel_err(a.double(), b.double()) for a, b in zip(got, want))
