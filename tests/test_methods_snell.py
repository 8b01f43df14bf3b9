"""SNELL (docs/methods/snell.md): counts, kernel, sparsification, gradients, wiring, fast path == naive
reference, merge."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import cdist
from timm.layers import DropPath
from torch import nn

import models
from fastpath import ARCH, DEVICES, FP64_TOL, fast_vs_reference, outputs_and_grads, rel_err
from models.methods import snell
from models.methods.snell import SNELLLinear, SNELLQKVBranch

MICRO = dict(num_classes=5, img_size=32)


def _micro(**kw):
    return models.create_model("vit_micro_patch8", "snell", **MICRO, **kw)


def _big_factors(model, std=1.0):
    """Factors with K ~ 0.1 (instead of ~1e-3 at init), so Kˢ = K·|K| matters next to W in the equivalence tests."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".A", ".B")):
                p.normal_(0, std)


# ------------------------------------------------------------------------------------------------------ counts


@pytest.mark.parametrize("rank,factors", [(8, 1_327_104), (16, 2_654_208), (32, 5_308_416)])
def test_vit_b_counts(rank, factors):
    with torch.device("meta"):
        m = models.create_model("vit_base_patch16_224", "snell", num_classes=100, rank=rank)
    assert models.count_parameters(m, head=False) == factors + 768  # + trainable cls_token
    assert models.count_parameters(m) == factors + 768 + 769 * 100  # + head (D + 1)·C
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert "cls_token" in names and "pos_embed" not in names and len(names) == 12 * 6 * 2 + 3


@pytest.mark.parametrize("arch,rank,factors", [  # docs/methods/snell.md §7, r = 8 / 16 / 32
    ("vit_large_patch16_224", 8, 3_538_944), ("vit_large_patch16_224", 16, 7_077_888),
    ("vit_large_patch16_224", 32, 14_155_776), ("vit_huge_patch14_224", 8, 5_898_240),
    ("vit_huge_patch14_224", 16, 11_796_480), ("vit_huge_patch14_224", 32, 23_592_960)])
def test_large_huge_factor_counts(arch, rank, factors):
    with torch.device("meta"):
        m = models.create_model(arch, "snell", num_classes=10, rank=rank)
    assert models.count_parameters(m, head=False) == factors + m.cls_token.numel()


def test_sparsity_does_not_change_count_and_alpha_is_fixed():
    a, b = _micro(sparsity=0.0), _micro(sparsity=0.9)
    assert models.count_parameters(a) == models.count_parameters(b)
    lin = b.blocks[0].attn.q
    assert torch.equal(lin.alpha.flatten(), torch.tensor([0.1, -0.1])) and not lin.alpha.requires_grad
    assert "blocks.0.attn.q.alpha" not in b.state_dict()


# ------------------------------------------------------------------------------------------------------ kernel


def test_kernel_equals_scipy_cdist_reference_and_init_scale():
    torch.manual_seed(0)
    lin = SNELLLinear(nn.Linear(48, 40), rank=8)
    A, B = lin.A.detach().double().numpy(), lin.B.detach().double().numpy()
    ref = 0.1 * cdist(A[0], B[0]) - 0.1 * cdist(A[1], B[1])  # (n_in, n_out), Euclidean, not squared
    K = snell.kernel(lin.A, lin.B, lin.alpha).detach().double().numpy()
    assert K.shape == (48, 40) and np.abs(K - ref).max() < 1e-6
    # kaiming_uniform(a=√5) on the 3-D tensor: bound 1/sqrt(n·r/2)
    assert lin.A.abs().max() <= 1 / math.sqrt(48 * 4) and lin.B.abs().max() <= 1 / math.sqrt(40 * 4)
    assert lin.A.abs().max() > 0.9 / math.sqrt(48 * 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_selection_threshold_equals_torch_quantile_exactly(dtype):
    g = torch.Generator().manual_seed(0)
    for n in (2, 7, 105, 1920, 4097):
        a = torch.rand(3, n, generator=g, dtype=dtype)
        for s in (0.01, 0.08, 0.1, 0.15, 0.25, 0.37, 0.5, 0.74, 0.88, 0.9, 0.99, 0.995):
            assert torch.equal(snell.quantile_threshold(a, s), torch.quantile(a, s, dim=-1)), (n, s)
            assert torch.equal(snell.quantile_threshold(a[1], s), torch.quantile(a[1], s)), (n, s)
    ties = (torch.rand(2, 500, generator=g, dtype=dtype) * 10).round()  # many equal values
    for s in (0.1, 0.5, 0.9):
        assert torch.equal(snell.quantile_threshold(ties, s), torch.quantile(ties, s, dim=-1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_order_statistic_selection_agrees(dtype):
    """top-k (CPU default), sort (CUDA default) and quickselect give the same order statistics, and
    each of them the same threshold as torch.quantile, also with many ties."""
    g = torch.Generator().manual_seed(1)
    for a in (torch.rand(3, 4097, generator=g, dtype=dtype), (torch.rand(2, 500, generator=g, dtype=dtype) * 10).round()):
        ref = a.sort(dim=-1).values
        for ranks in ((0, 1, 250, 499, a.shape[-1] - 1), (449, 450), (a.shape[-1] - 1,)):
            for name, fn in snell.SELECTORS.items():
                got = fn(a, ranks)
                assert all(torch.equal(x, ref[..., r]) for x, r in zip(got, ranks)), (name, ranks)
        for name in snell.SELECTORS:
            for q in (0.1, 0.9, 0.9999):
                assert torch.equal(snell.quantile_threshold(a, q, select=name), torch.quantile(a, q, dim=-1)), name


@pytest.mark.parametrize("shape,s", [((48, 40), 0.1), ((48, 40), 0.37), ((48, 40), 0.5), ((48, 40), 0.9),
                                     ((48, 40), 0.995), ((5, 21), 0.25)])
def test_exact_fraction_zeroed(shape, s):
    torch.manual_seed(0)
    k = torch.randn(shape)  # distinct |K| values
    n = k.numel()
    ks = snell.sparsify(k, s)
    zeros = int((ks == 0).sum())
    # |K| <= t is zeroed; t interpolates sorted|K|[floor(s(n-1))] and [ceil(...)], so with distinct values exactly
    # floor(s·(n−1)) + 1 entries are zeroed ((5, 21) at s = 0.25 has an integral rank 26: t = sorted|K|[26]).
    assert zeros == math.floor(s * (n - 1)) + 1
    t = torch.quantile(k.abs().flatten(), s)
    assert zeros == int((k.abs() <= t).sum())
    assert abs(zeros / n - s) <= 1.0 / n + 1e-12 or s * (n - 1) % 1 == 0
    survivors = ks != 0
    assert torch.equal(ks[survivors], (k * k.abs())[survivors])  # K ⊙ |K| on survivors


def test_s0_is_plain_klora():
    torch.manual_seed(0)
    k = torch.randn(30, 20)
    assert snell.sparsify(k, 0.0) is k
    lin = SNELLLinear(nn.Linear(30, 20), rank=4, sparsity=0.0)
    assert torch.equal(lin.sparse_kernel(), snell.kernel(lin.A, lin.B, lin.alpha))  # no |K| factor, no zeros


def test_gradient_wrt_k_is_upstream_times_abs_k_on_survivors_zero_on_masked():
    torch.manual_seed(0)
    k = torch.randn(32, 24, requires_grad=True)
    up = torch.randn(32, 24)
    ks = snell.sparsify(k, 0.7)
    ks.backward(up)
    mask = ks.detach() != 0
    assert int((~mask).sum()) == math.floor(0.7 * (32 * 24 - 1)) + 1
    assert torch.equal(k.grad[~mask], torch.zeros(int((~mask).sum())))
    assert torch.equal(k.grad[mask], (up * k.detach().abs())[mask])  # no straight-through estimator


def test_mask_is_recomputed_every_forward():
    torch.manual_seed(0)
    lin = SNELLLinear(nn.Linear(16, 12), rank=4, sparsity=0.5)
    before = lin.sparse_kernel() != 0
    with torch.no_grad():
        lin.A.mul_(-3.0).add_(0.5)
    after = lin.sparse_kernel() != 0
    assert not torch.equal(before, after)


# ------------------------------------------------------------------------------------------------------ wiring


def test_wiring_dropouts_and_drop_paths():
    m = _micro(dropout=0.1, drop_path=0.1)
    for blk in m.blocks:
        a, mlp = blk.attn, blk.mlp
        assert isinstance(a.qkv_branch, SNELLQKVBranch) and a.qkv_branch.drop.p == 0.1
        assert a.qkv_branch.linears == (a.q, a.k, a.v)
        for lin in (a.q, a.k, a.v):  # the input dropout is the hook's single draw
            assert lin.shared_input and isinstance(lin.drop, nn.Identity)
        assert not a.proj.shared_input and isinstance(a.proj.drop, nn.Identity)  # proj: no input dropout
        assert isinstance(mlp.fc1.drop, nn.Dropout) and isinstance(mlp.fc2.drop, nn.Dropout)
        assert mlp.fc1.drop is not mlp.fc2.drop
        for lin in (a.q, a.k, a.v, a.proj, mlp.fc1, mlp.fc2):
            assert isinstance(lin.drop_path, DropPath) and lin.drop_path.drop_prob == 0.1
    assert m.blocks[1].drop_path1.drop_prob == pytest.approx(0.1)  # backbone stochastic depth 0 -> 0.1


def test_qkv_share_one_dropout_mask_and_proj_has_none():
    torch.manual_seed(0)
    m = _micro(dropout=0.5, drop_path=0.0).train()
    _big_factors(m)
    attn = m.blocks[0].attn
    seen = {}
    attn.qkv_branch.drop.register_forward_hook(lambda mod, i, o: seen.__setitem__("xd", o))
    attn.qkv_branch.register_forward_hook(lambda mod, i, o: seen.__setitem__("d", o))
    h = torch.randn(2, 17, 64)
    attn(h)
    xd, (dq, dk, dv) = seen["xd"], seen["d"]
    assert (xd == 0).float().mean() > 0.3  # the dropout really fired
    for d, lin in zip((dq, dk, dv), (attn.q, attn.k, attn.v)):
        torch.testing.assert_close(d, xd @ lin.sparse_kernel(), rtol=1e-5, atol=1e-6)
    o = torch.randn(2, 17, 64)
    with torch.no_grad():
        train_out = attn.proj(o)
        attn.proj.eval()
        eval_out = attn.proj(o)
    torch.testing.assert_close(train_out, eval_out, rtol=1e-5, atol=1e-6)  # no dropout on proj's branch input


def test_deterministic_branches_take_the_single_gemm_path():
    m = _micro(dropout=0.0, drop_path=0.0).train()
    blk = m.blocks[0]
    assert blk.attn.q.fused and blk.attn.qkv_branch(torch.randn(1, 17, 64)) == (None, None, None)
    r = _micro().train()
    assert not r.blocks[0].attn.q.fused
    r.eval()
    assert r.blocks[0].attn.q.fused and r.blocks[0].mlp.fc2.fused


# ------------------------------------------------------------------------------------------------------ fast == reference


def _ref_kernel(lin):
    return snell.reference_kernel(lin.A, lin.B, lin.alpha, lin.sparsity)


def _ref_linear(lin, x, x_branch):
    return F.linear(x, lin.base.weight, lin.base.bias) + lin.drop_path(x_branch @ _ref_kernel(lin))


def reference_forward(model, x):
    """The model's function with SNELL computed naively (cdist per segment, torch.quantile, separate branch GEMM),
    drawing random numbers in the same order as the modules (dropout before drop-path, q, k, v, proj, fc1, fc2)."""
    t = model.patch_embed(x)
    t = model.pos_drop(torch.cat([model.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + model.pos_embed)
    for blk in model.blocks:
        a, mlp = blk.attn, blk.mlp
        h = blk.norm1(t)
        hd = a.qkv_branch.drop(h)
        q, k, v = (_ref_linear(lin, h, hd) for lin in (a.q, a.k, a.v))
        B, N, C = q.shape
        q, k, v = (z.view(B, N, a.num_heads, a.head_dim).transpose(1, 2) for z in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C)
        t = t + blk.drop_path1(_ref_linear(a.proj, o, o))
        h = blk.norm2(t)
        z = mlp.drop1(mlp.act(_ref_linear(mlp.fc1, h, mlp.fc1.drop(h))))
        t = t + blk.drop_path2(mlp.drop2(_ref_linear(mlp.fc2, z, mlp.fc2.drop(z))))
    return model.head(model.norm(t)[:, 0])


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _step_vs_reference(m, reference):
    """A training step's logits and gradients through the model, then through ``reference(m, x)``, on one batch
    with the same dropout and drop-path draws: (out, grads, reference out, reference grads)."""
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(1)
    out = m(x)
    F.cross_entropy(out, y).backward()
    fast = _grads(m)
    m.zero_grad()
    torch.manual_seed(1)
    ref_out = reference(m, x)
    F.cross_entropy(ref_out, y).backward()
    return out, fast, ref_out, _grads(m)


@pytest.mark.parametrize("train,sparsity", [(False, 0.9), (True, 0.9), (True, 0.0), (False, 0.0)])
def test_fast_path_equals_naive_reference(train, sparsity):
    torch.manual_seed(0)
    m = _micro(sparsity=sparsity, dropout=0.3, drop_path=0.2).train(train)
    _big_factors(m)
    out, fast, ref_out, ref = _step_vs_reference(m, reference_forward)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    assert set(fast) == set(ref) and {"cls_token", "head.weight", "blocks.1.mlp.fc2.A"} <= set(fast)
    for name in fast:  # A, B of every layer, head, cls_token
        torch.testing.assert_close(fast[name], ref[name], rtol=1e-4, atol=1e-6, msg=name)


def test_checkpointing_on_off_gives_equal_gradients():
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    grads = []
    for ckpt in (True, False):
        torch.manual_seed(0)
        m = _micro(checkpoint=ckpt).train()
        torch.manual_seed(1)
        F.cross_entropy(m(x), y).backward()
        grads.append(_grads(m))
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-6, atol=1e-9, msg=name)


@pytest.mark.parametrize("regularised", [True, False])
def test_threshold_is_selected_once_per_step_even_with_checkpointing(regularised, monkeypatch):
    # The backward recomputation of a checkpointed branch rebuilds K and the mask from the threshold selected in the
    # forward; it must not run the order statistics again (they dominate the step): one selection per step.
    calls = []
    original = snell.quantile_threshold
    monkeypatch.setattr(snell, "quantile_threshold", lambda *a, **k: calls.append(1) or original(*a, **k))
    torch.manual_seed(0)
    base = nn.Linear(64, 48).requires_grad_(False)
    p = 0.1 if regularised else 0.0
    layer = SNELLLinear(base, rank=8, sparsity=0.9, dropout=p, drop_path=p, checkpoint=True).train()
    layer(torch.randn(2, 5, 64)).square().sum().backward()
    assert len(calls) == 1
    assert layer.A.grad is not None and layer.A.grad.abs().sum() > 0


@pytest.mark.parametrize("kw,train", [({}, True), ({"dropout": 0.0, "drop_path": 0.0}, True),
                                      ({"checkpoint": False}, True), ({"targets": ("q", "v", "fc2")}, True),
                                      ({}, False)])
def test_prelude_hands_each_layer_the_threshold_it_would_select_alone(kw, train):
    # The prelude selects every threshold of a forward in one batch per shape; with it switched off each layer (or
    # the q/k/v stack) selects its own. Bit-identical thresholds on the CPU, hence the same outputs and gradients
    # (regularised, fused and unregularised, no checkpointing, a target subset, eval).
    torch.manual_seed(0)
    m = _micro(**kw).train(train)
    _big_factors(m)
    layers = [mod for mod in m.modules() if isinstance(mod, SNELLLinear)]
    assert isinstance(m.prelude, snell.SNELLPrelude)
    assert sum(map(len, m.prelude.groups)) == len(layers)
    x = torch.randn(3, 3, 32, 32)
    batched = outputs_and_grads(m, x)
    assert all(lin._threshold is None for lin in layers)  # each handed-over threshold was used once and dropped
    with torch.no_grad():
        m.prelude()
        per_layer = [snell.kernel_threshold(lin.A, lin.B, lin.alpha, lin.sparsity) for lin in layers]
        assert all(torch.equal(lin._threshold, t) for lin, t in zip(layers, per_layer))
        for lin in layers:
            lin._threshold = None
    m.prelude, prelude = None, m.prelude
    alone = outputs_and_grads(m, x)
    m.prelude = prelude
    for a, b in zip(batched, alone):
        assert torch.equal(a, b)


def test_prelude_selects_once_per_shape_batch_per_step(monkeypatch):
    # vit_micro (D = 64, 2 blocks): q/k/v/proj (64×64), fc1 (64×256), fc2 (256×64): three selections per training
    # step instead of eight (q/k/v stack, proj, fc1, fc2 per block); capped batches split, same result.
    calls = []
    original = snell.quantile_threshold
    monkeypatch.setattr(snell, "quantile_threshold", lambda a, *r, **k: calls.append(tuple(a.shape)) or original(a, *r, **k))
    torch.manual_seed(0)
    m = _micro().train()
    x = torch.randn(2, 3, 32, 32)
    ref = outputs_and_grads(m, x)
    assert sorted(calls) == [(2, 64 * 256)] * 2 + [(8, 64 * 64)]
    calls.clear()
    m.prelude = None
    outputs_and_grads(m, x)
    assert sorted(calls) == sorted([(64 * 256,)] * 4 + [(64 * 64,)] * 2 + [(3, 64 * 64)] * 2)
    calls.clear()
    monkeypatch.setattr(snell.SNELLPrelude, "max_elements", 3 * 64 * 64)  # a new prelude batches 3 q/k/v/proj
    m.prelude = snell.SNELLPrelude([mod for mod in m.modules() if isinstance(mod, SNELLLinear)])
    capped = outputs_and_grads(m, x)
    assert sorted(calls) == sorted([(1, 64 * 256)] * 4 + [(2, 64 * 64), (3, 64 * 64), (3, 64 * 64)])
    assert all(torch.equal(a, b) for a, b in zip(capped, ref))
    assert _micro(sparsity=0.0).prelude is None  # KLoRA selects nothing


@pytest.mark.parametrize("arch,sizes", [
    ("vit_base_patch16_224", [48, 12, 12]),  # q/k/v/proj (768²), fc1, fc2: one batch each
    ("vit_huge_patch14_224", [19] * 6 + [14] + [5] * 6 + [2] + [5] * 6 + [2]),  # 128 × 1280² split under the cap
])
def test_prelude_batches_layers_by_shape_under_the_memory_cap(arch, sizes):
    with torch.device("meta"):
        m = models.create_model(arch, "snell", num_classes=10)
    batches = m.prelude.groups
    assert [len(b) for b in batches] == sizes
    assert all(len({(lin.in_features, lin.out_features) for lin in b}) == 1 for b in batches)
    assert all(len(b) * b[0].in_features * b[0].out_features <= snell.SNELLPrelude.max_elements for b in batches)
    layers = [mod for mod in m.modules() if isinstance(mod, SNELLLinear)]
    assert sorted(id(lin) for b in batches for lin in b) == sorted(map(id, layers))  # each layer exactly once


def test_snell_prelude_follows_deepcopy_and_leaves_with_merge():
    import copy

    torch.manual_seed(0)
    m = _micro().eval()
    _big_factors(m)
    merged = models.merge(m)  # deep-copies, then merges the copy
    assert merged.prelude is None and m.prelude is not None
    twin = copy.deepcopy(m)
    own = {id(mod) for mod in twin.modules() if isinstance(mod, SNELLLinear)}
    assert {id(lin) for g in twin.prelude.groups for lin in g} == own  # the copy's layers, not the original's
    with torch.no_grad():
        twin.blocks[0].mlp.fc1.A.mul_(3.0)  # must reach the twin's thresholds through ITS prelude
        x = torch.randn(2, 3, 32, 32)
        assert (m(x) - merged(x)).abs().max() < 1e-4
        with_prelude = twin(x)
        twin.prelude = None
        assert torch.equal(with_prelude, twin(x))
        assert not torch.allclose(with_prelude, m(x), atol=1e-3)


@pytest.mark.parametrize("shared_input", [False, True])
def test_branch_keeps_only_its_input_in_the_autocast_dtype(shared_input):
    # SNELL's memory target is LoRA-on-all-linears' peak: a branch may keep for backward only its input, in bf16
    # under autocast (LayerNorm outputs are fp32), as the frozen GEMM does. Its dropout runs inside the checkpoint,
    # so neither the dropped copy nor the dropout mask is stored (both are recomputed from the saved RNG state).
    torch.manual_seed(0)
    lin = SNELLLinear(nn.Linear(64, 64).requires_grad_(False), rank=8, dropout=0.1, drop_path=0.1,
                      shared_input=shared_input).train()
    branch = SNELLQKVBranch(lin, None, None, dropout=0.1).train()
    x = torch.randn(2, 5, 64, requires_grad=True)  # inside a model gradients flow on through the input
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = branch(x)[0] if shared_input else lin(x)
    assert out.requires_grad
    activations = [t for t in saved if t.numel() == x.numel()]
    assert len(activations) == 1 and activations[0].dtype == torch.bfloat16, [t.dtype for t in activations]


def test_forward_compiles_without_graph_breaks_under_autocast():
    # --compile (CUDA graphs) can only remove the launch overhead of one whole graph: the quantile rank arithmetic
    # once broke it 32 times (a tensor's .item() per selection). dynamo.explain traces without compiling.
    import torch._dynamo as dynamo

    torch.manual_seed(0)
    m = models.create_model("vit_micro_patch8", "snell", num_classes=5, img_size=32).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explained = dynamo.explain(lambda x: m(x).sum())(torch.randn(2, 3, 32, 32))
    assert explained.graph_break_count == 0, explained.break_reasons


@pytest.mark.parametrize("kw", [{}, {"dropout": 0.0, "drop_path": 0.0}])
def test_compiled_training_step_equals_eager(kw):
    # What --compile runs: dynamo + AOT autograd over the prelude's hand-over (module attributes written and read in
    # one graph), the checkpointed branches and the fused GEMM path. aot_eager runs the traced ATen graph without
    # code generation, so this checks the tracing, not a backend's arithmetic.
    torch.manual_seed(0)
    m = _micro(**kw).train()
    _big_factors(m)
    x = torch.randn(3, 3, 32, 32)
    eager = outputs_and_grads(m, x)
    compiled = torch.compile(m, backend="aot_eager")
    for _ in range(2):  # the second call runs the cached graph, with the prelude's slots emptied by the first
        got = outputs_and_grads(compiled, x)
        for a, b in zip(got, eager):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(lin._threshold is None for lin in m.modules() if isinstance(lin, SNELLLinear))


def test_float32_rounding_of_q_matches_torch():
    g = torch.Generator().manual_seed(0)
    qs = torch.rand(20000, generator=g, dtype=torch.float64).tolist() + [0.9, 0.1, 0.5, 0.0, 1 - 2**-30, 1e-30]
    assert [snell._round_to_float32(q) for q in qs] == torch.tensor(qs, dtype=torch.float32).tolist()


def test_meta_built_layer_is_restored_by_reset_parameters_and_state_dict():
    # alpha is a constant, not saved: a model built on the meta device and materialised with to_empty gets it back
    # from reset_parameters (the PyTorch convention), and then loads A, B like any other.
    torch.manual_seed(0)
    ref = models.create_model("vit_micro_patch8", "snell", num_classes=5, img_size=32).eval()
    with torch.device("meta"):
        m = models.create_model("vit_micro_patch8", "snell", num_classes=5, img_size=32)
    m.to_empty(device="cpu")
    for mod in m.modules():
        if isinstance(mod, SNELLLinear):
            mod.reset_parameters()
    m.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m.eval()(x), ref(x))
    assert all(torch.equal(mod.alpha.flatten(), torch.tensor([0.1, -0.1])) for mod in m.modules()
               if isinstance(mod, SNELLLinear))


# ------------------------------------------------------------------------------------------------------ merge / training


@pytest.mark.parametrize("sparsity", [0.9, 0.0])
def test_merge_equivalence(sparsity):
    torch.manual_seed(0)
    m = _micro(sparsity=sparsity)
    _big_factors(m)
    m.eval()
    x = torch.randn(3, 3, 32, 32)
    merged = models.merge(m)
    with torch.no_grad():
        assert (m(x) - merged(x)).abs().max() < 1e-4
        assert (reference_forward(m, x) - merged(x)).abs().max() < 1e-4
    assert models.method_modules(merged) == []
    assert all(b.attn.qkv_branch is None for b in merged.blocks)
    lin = m.blocks[0].mlp.fc1
    torch.testing.assert_close(merged.blocks[0].mlp.fc1.weight, lin.base.weight + _ref_kernel(lin).t(),
                               rtol=1e-5, atol=1e-6)  # W_eff = W₀ + Kˢᵀ
    assert lin.delta_weight().shape == (256, 64)  # nn.Linear layout (out, in)


def _assert_three_adamw_steps_move_only_the_trainable(m, weight_decay):
    """Three AdamW steps on a micro batch move every trainable tensor and leave the frozen backbone bit-equal."""
    trainable = {n: p for n, p in m.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    start = {n: p.detach().clone() for n, p in trainable.items()}
    opt = torch.optim.AdamW(trainable.values(), lr=1e-3, weight_decay=weight_decay)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    assert all(not torch.equal(p, start[n]) for n, p in trainable.items()), \
        [n for n, p in trainable.items() if torch.equal(p, start[n])]
    assert all(torch.equal(p, frozen[n]) for n, p in m.named_parameters() if not p.requires_grad)


def test_three_adamw_steps_train_every_trainable_tensor():
    torch.manual_seed(0)
    _assert_three_adamw_steps_move_only_the_trainable(_micro().train(), weight_decay=0.01)


def test_targets_subset_and_bad_arguments():
    m = _micro(targets=("q", "v", "fc2"))
    a = m.blocks[0].attn
    assert isinstance(a.q, SNELLLinear) and isinstance(a.k, nn.Linear) and a.qkv_branch.linears[1] is None
    m.train()
    dq, dk, dv = a.qkv_branch(torch.randn(1, 17, 64))
    assert dk is None and dq.shape == dv.shape == (1, 17, 64)
    m(torch.randn(1, 3, 32, 32))
    merged = models.merge(m.eval())
    assert models.method_modules(merged) == []
    for kw, match in [({"rank": 7}, "rank"), ({"rank": 8.0}, "rank"), ({"rank": True}, "rank"), ({"sparsity": 1.0}, "sparsity"), ({"sparsity": -0.1}, "sparsity"),
                      ({"targets": ("qkv",)}, "targets"), ({"dropout": 1.0}, "dropout")]:
        with pytest.raises(ValueError, match=match):
            _micro(**kw)


# ------------------------------------------------------------------------------- batched kernels (batch_weights)


@pytest.mark.parametrize("kw,train,autocast", [
    ({}, True, False), ({}, True, True), ({"dropout": 0.0, "drop_path": 0.0}, True, False),
    ({"dropout": 0.0, "drop_path": 0.0}, True, True), ({"checkpoint": False}, True, True),
    ({"targets": ("q", "v", "fc2")}, True, False), ({}, False, False), ({}, False, True)])
def test_batched_kernels_equal_each_layer_building_its_own(kw, train, autocast):
    # batch_weights=True: the prelude builds Kˢ (branch path) or W + Kˢᵀ (one-GEMM path) for all layers of a shape
    # under one checkpoint and hands them over; False: each layer builds its own inside its checkpoint. Same
    # function: outputs and every gradient agree (regularised, fused, no checkpointing, a subset, eval; fp32 and
    # bf16 autocast, where the handed-over kernels arrive in bf16 as the layers' own GEMMs would cast them).
    torch.manual_seed(0)
    m = _micro(batch_weights=True, **kw).train(train)
    _big_factors(m)
    x = torch.randn(3, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        batched = outputs_and_grads(m, x)
        layers = [mod for mod in m.modules() if isinstance(mod, SNELLLinear)]
        assert all(lin._weight is None and lin._kernel is None and lin._threshold is None for lin in layers)
        m.prelude.batch_weights = False
        alone = outputs_and_grads(m, x)
    assert not batched[0].isnan().any()
    for a, b in zip(batched, alone):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("batch_weights,per_step", [(True, 3 * 3), (False, 3 + 2 * 8)])
def test_batched_kernels_are_built_once_per_batch_and_rebuilt_once_in_backward(batch_weights, per_step, monkeypatch):
    # vit_micro: 3 shape batches. Batched, each batch computes K three times per training step: the threshold
    # selection, the build, and the checkpoint's one rebuild in backward. Per layer: the 3 selections, then each of
    # the 8 checkpointed regions (q/k/v stack, proj, fc1, fc2 per block) builds and rebuilds its own.
    calls = []
    original = torch.cdist
    monkeypatch.setattr(torch, "cdist", lambda *a, **k: calls.append(1) or original(*a, **k))
    torch.manual_seed(0)
    m = _micro(batch_weights=batch_weights).train()
    m(torch.randn(2, 3, 32, 32)).square().sum().backward()
    assert len(calls) == per_step
    assert all(p.grad is not None for n, p in m.named_parameters() if n.endswith((".A", ".B")))


@pytest.mark.parametrize("regularised", [True, False])
def test_batched_kernels_keep_only_bf16_copies_for_backward(regularised):
    # What the batched path costs in memory: the handed-over kernels (or W + Kˢᵀ) are kept for backward in the GEMM
    # dtype, one copy per layer, and nothing of K's construction (distances, |K|, masks: fp32) is kept.
    torch.manual_seed(0)
    p = 0.1 if regularised else 0.0
    m = _micro(batch_weights=True, dropout=p, drop_path=p).train()
    shapes = {(64, 64), (64, 256), (256, 64)}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t.detach(), lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m(torch.randn(2, 3, 32, 32))
    matrices = [t for t in saved if tuple(t.shape[-2:]) in shapes and t.dim() >= 2]
    assert matrices and all(t.dtype == torch.bfloat16 for t in matrices), {(tuple(t.shape), t.dtype) for t in matrices}
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in matrices}
    weights = sum(mod.weight.numel() for mod in m.modules() if isinstance(mod, SNELLLinear))
    assert sum(storages.values()) <= 2 * 2 * weights  # bf16 kernels (or W + Kˢᵀ) and the frozen GEMMs' bf16 W


def test_batched_kernels_compile_to_the_same_training_step():
    torch.manual_seed(0)
    m = _micro(batch_weights=True).train()
    _big_factors(m)
    x = torch.randn(3, 3, 32, 32)
    eager = outputs_and_grads(m, x)
    compiled = torch.compile(m, backend="aot_eager")
    for _ in range(2):
        for a, b in zip(outputs_and_grads(compiled, x), eager):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(lin._kernel is None for lin in m.modules() if isinstance(lin, SNELLLinear))


def test_batch_weights_must_be_a_boolean_or_null():
    with pytest.raises(ValueError, match="batch_weights must be true, false or null"):
        _micro(batch_weights="yes")
    assert _micro().prelude.batch_weights is None and _micro(batch_weights=False).prelude.batch_weights is False


# ------------------------------------------------- the fast paths on each device (fp64 verdicts, tests/fastpath.py)
def _device_snell(device, **kw):
    """SNELL on the device's checking ViT (tests/fastpath.py ARCH), training mode, and an input batch."""
    arch, size = ARCH[device]
    torch.manual_seed(0)
    model = models.create_model(arch, "snell", num_classes=10, img_size=size, **kw).to(device).train()
    return model, torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_every_selection_strategy_equals_torch_quantile_on_each_device(device):
    # |K| of the device arch's q/k/v shape (D x D), with SNELL's initial factors: the thresholds every strategy
    # selects are torch.quantile's, bit for bit, on this device's kernels
    model, _ = _device_snell(device)
    lin = model.blocks[0].attn.q
    stack = torch.stack([model.blocks[0].attn.q.A, model.blocks[0].attn.k.A, model.blocks[0].attn.v.A]).detach()
    B = torch.stack([model.blocks[0].attn.q.B, model.blocks[0].attn.k.B, model.blocks[0].attn.v.B]).detach()
    mag = snell.kernel(stack, B, lin.alpha).abs().flatten(-2)  # (3, D·D)
    ref = torch.quantile(mag, 0.9, dim=-1)
    for name in snell.SELECTORS:
        assert torch.equal(snell.quantile_threshold(mag, 0.9, select=name), ref), name


@pytest.mark.parametrize("device", DEVICES)
def test_batched_kernels_and_checkpointing_equal_the_reference_paths_on_each_device_in_fp64(device):
    # batch_weights: the prelude builds every kernel, one batch per shape, vs each layer its own; checkpointing on
    # vs off (same dropout and drop-path draws). Output and every gradient, in float64.
    model, x = _device_snell(device, batch_weights=True)
    err = fast_vs_reference(model, x, lambda: setattr(model.prelude, "batch_weights", True),
                            lambda: setattr(model.prelude, "batch_weights", False))
    assert err <= FP64_TOL, err
    ckpt = [m for m in model.modules() if hasattr(m, "checkpoint")]
    err = fast_vs_reference(model, x, lambda: [setattr(m, "checkpoint", True) for m in ckpt],
                            lambda: [setattr(m, "checkpoint", False) for m in ckpt])
    assert err <= FP64_TOL, err


@pytest.mark.parametrize("device", DEVICES)
def test_batched_thresholds_equal_each_layers_own_on_each_device(device):
    # the prelude's one selection per shape batch against each layer's own selection, float32 as trained (per-layer
    # kernels: with batch_weights, CUDA's default, the prelude hands over the kernels built from these thresholds)
    model, _ = _device_snell(device, batch_weights=False)
    layers = [lin for group in model.prelude.groups for lin in group]
    with torch.no_grad():
        model.prelude()
        errs = [rel_err(lin._threshold, snell.kernel_threshold(lin.A, lin.B, lin.alpha, lin.sparsity))
                for lin in layers]
    for lin in layers:
        lin._threshold = None
    assert max(errs) == 0.0 if device == "cpu" else max(errs) <= 1e-6, max(errs)


def test_select_argument_picks_the_strategy_and_changes_nothing_else(monkeypatch):
    # snell:select=... (bench.py rows) makes the prelude select by that strategy; all give the same step
    used = []
    for name, fn in list(snell.SELECTORS.items()):
        monkeypatch.setitem(snell.SELECTORS, name, lambda a, ranks, _n=name, _f=fn: used.append(_n) or _f(a, ranks))
    x = torch.randn(2, 3, 32, 32)
    runs = {}
    for name in ("kthvalue", "sort", "topk"):
        torch.manual_seed(0)
        m = _micro(select=name, dropout=0.0, drop_path=0.0).train()
        _big_factors(m)
        used.clear()
        runs[name] = outputs_and_grads(m, x)
        assert set(used) == {name} and m.method.config()["select"] == name
    for name in ("kthvalue", "sort"):
        assert all(torch.equal(a, b) for a, b in zip(runs[name], runs["topk"]))
    with pytest.raises(ValueError, match="select must be one of kthvalue, sort, topk"):
        _micro(select="median")


# ------------------------------------------------- delta: kernel | lora | dense (SNELL Table 5(a), snell.md §12)
def _big_update(model, std=0.3):
    """Non-negligible updates for every delta (K ~ 0.1 instead of ~1e-3), so that Kˢ = K·|K| matters next to W."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".A", ".B")):
                p.normal_(0, 1.0 if p.dim() == 3 else std)  # kernel factors (3-D) as _big_factors; lora's 2-D
            elif name.endswith(".D"):
                p.normal_(0, std)


def _ref_update_kernel(lin):
    """The naive Kˢ of any delta: K from its parameters, torch.quantile on the flattened |K|, strict mask."""
    if lin.delta == "dense":
        k = lin.D
    elif lin.delta == "lora":
        k = (lin.B @ lin.A).t()  # LoRA's B·A in nn.Linear layout, transposed to K's (n_in, n_out)
    else:
        return snell.reference_kernel(lin.A, lin.B, lin.alpha, lin.sparsity)
    if lin.sparsity == 0:
        return k
    mag = k.detach().abs()
    return k * mag * (mag > torch.quantile(mag.flatten(), lin.sparsity))


def test_delta_default_is_the_kernel_bit_for_bit():
    # the new argument changes nothing by default: same parameters (names, shapes, RNG draws), same prelude groups,
    # same outputs and gradients as a model built without it, in training (dropout, drop-path) and in eval
    x = torch.randn(3, 3, 32, 32)
    runs = []
    for kw in ({}, {"delta": "kernel"}):
        torch.manual_seed(0)
        m = _micro(**kw)
        runs.append((m, outputs_and_grads(m.train(), x), m.eval()(x).detach()))
    (a, ga, ea), (b, gb, eb) = runs
    assert a.method.config()["delta"] == b.method.config()["delta"] == "kernel"
    assert {n: p.shape for n, p in a.named_parameters()} == {n: p.shape for n, p in b.named_parameters()}
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert [len(g) for g in a.prelude.groups] == [len(g) for g in b.prelude.groups] == [8, 2, 2]
    assert all(torch.equal(u, v) for u, v in zip(ga, gb)) and torch.equal(ea, eb)
    assert not any(n.endswith(".D") for n, _ in a.named_parameters())


@pytest.mark.parametrize("delta,rank,factors", [  # ViT-B/16, six targets per block, 12 blocks (snell.md §7, §12)
    ("kernel", 8, 1_327_104), ("lora", 8, 1_327_104), ("lora", 16, 2_654_208), ("dense", 8, 84_934_656)])
def test_delta_counts(delta, rank, factors):
    # lora: r·(n_in + n_out) per matrix, as KLoRA; dense: n_in·n_out per matrix (every entry of every block linear)
    with torch.device("meta"):
        m = models.create_model("vit_base_patch16_224", "snell", num_classes=100, rank=rank, delta=delta)
    assert models.count_parameters(m, head=False) == factors + 768  # + the trainable cls_token
    assert models.count_parameters(m) == factors + 768 + 769 * 100
    fc1 = m.blocks[0].mlp.fc1
    assert [tuple(p.shape) for p in fc1.factors] == {"kernel": [(2, 768, rank // 2), (2, 3072, rank // 2)],
                                                     "lora": [(rank, 768), (3072, rank)],
                                                     "dense": [(768, 3072)]}[delta]
    per_matrix = sum(p.numel() for p in fc1.factors)
    assert per_matrix == (768 * 3072 if delta == "dense" else rank * (768 + 3072))


@pytest.mark.parametrize("delta", ["lora", "dense"])
@pytest.mark.parametrize("s", [0.37, 0.9, 0.995])
def test_delta_exact_fraction_zeroed(delta, s):
    # the same sparsification as the kernel (§3): exactly floor(s·(n − 1)) + 1 entries zeroed, survivors K·|K|
    torch.manual_seed(0)
    lin = SNELLLinear(nn.Linear(48, 40), rank=4, sparsity=s, delta=delta)
    k, ks = lin.update().detach(), lin.sparse_kernel().detach()
    n = k.numel()
    assert ks.shape == (48, 40) and int((ks == 0).sum()) == math.floor(s * (n - 1)) + 1
    keep = ks != 0
    assert torch.equal(ks[keep], (k * k.abs())[keep]) and torch.equal(ks, _ref_update_kernel(lin).detach())
    assert torch.equal(lin.delta_weight(), ks.t())  # nn.Linear layout (out, in)


@pytest.mark.parametrize("delta", ["lora", "dense"])
def test_delta_init_starts_from_the_frozen_model_where_it_can_train(delta):
    # s = 0: LoRA's init (B = 0) and D = 0, so Kˢ = 0 and the model is the frozen one at step 0. s > 0: a zero
    # update would get no gradient (next test), so B / D start at nn.Linear's default init: U(±1/√r), U(±1/√n_in).
    torch.manual_seed(0)
    lin0 = SNELLLinear(nn.Linear(256, 64), rank=8, sparsity=0.0, delta=delta)
    assert torch.equal(lin0.sparse_kernel(), torch.zeros(256, 64))
    lin = SNELLLinear(nn.Linear(256, 64), rank=8, sparsity=0.9, delta=delta)
    if delta == "lora":
        for l_ in (lin0, lin):  # LoRA's A: kaiming_uniform(a=√5) on (r, n_in) = U(±1/√n_in)
            assert l_.A.abs().max() <= 1 / math.sqrt(256) and l_.A.abs().max() > 0.9 / math.sqrt(256)
        assert lin.B.abs().max() <= 1 / math.sqrt(8) and lin.B.abs().max() > 0.9 / math.sqrt(8)
    else:
        assert lin.D.abs().max() <= 1 / math.sqrt(256) and lin.D.abs().max() > 0.9 / math.sqrt(256)
    assert (lin.sparse_kernel() != 0).any()
    m = _micro(delta=delta, sparsity=0.0).eval()
    merged, own = models.merge(m).state_dict(), m.state_dict()
    bases = [n for n in own if n.endswith(".base.weight")]
    assert len(bases) == 12 and all(torch.equal(merged[n.replace(".base", "")], own[n]) for n in bases)  # W + 0


@pytest.mark.parametrize("delta", ["lora", "dense"])
def test_delta_zero_update_gets_no_gradient_under_sparsification(delta):
    # why the s > 0 init is not zero: with K = 0, Kˢ = K ⊙ sg(|K|) ⊙ M passes upstream ⊙ |K| ⊙ M = 0 to K, so
    # no factor ever receives a gradient (LoRA's B = 0: neither A nor B)
    torch.manual_seed(0)
    m = _micro(delta=delta, sparsity=0.9).train()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith((".B", ".D")):
                p.zero_()
    F.cross_entropy(m(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    grads = [p.grad for n, p in m.named_parameters() if n.endswith((".A", ".B", ".D"))]
    assert grads and all(g is not None and not g.any() for g in grads)
    assert m.head.weight.grad.any()


@pytest.mark.parametrize("delta", ["lora", "dense"])
@pytest.mark.parametrize("sparsity", [0.9, 0.0])
def test_delta_merge_equivalence(delta, sparsity):
    torch.manual_seed(0)
    m = _micro(delta=delta, sparsity=sparsity)
    _big_update(m)
    m.eval()
    x = torch.randn(3, 3, 32, 32)
    merged = models.merge(m)
    with torch.no_grad():
        assert (m(x) - merged(x)).abs().max() < 1e-4
        assert (reference_forward_any(m, x) - merged(x)).abs().max() < 1e-4
    assert models.method_modules(merged) == [] and merged.prelude is None
    lin = m.blocks[1].mlp.fc2
    torch.testing.assert_close(merged.blocks[1].mlp.fc2.weight, lin.base.weight + _ref_update_kernel(lin).t(),
                               rtol=1e-5, atol=1e-6)  # W_eff = W₀ + Kˢᵀ
    assert (lin.delta_weight() != 0).float().mean() == pytest.approx(1 - sparsity, abs=1 / lin.D.numel()
                                                                     if delta == "dense" else 1 / (64 * 256))


def reference_forward_any(model, x):
    """``reference_forward`` with the naive Kˢ of any delta (``_ref_update_kernel``)."""
    global _ref_kernel
    saved, _ref_kernel = _ref_kernel, _ref_update_kernel
    try:
        return reference_forward(model, x)
    finally:
        _ref_kernel = saved


@pytest.mark.parametrize("delta", ["lora", "dense"])
@pytest.mark.parametrize("train,sparsity", [(True, 0.9), (False, 0.9), (True, 0.0)])
def test_delta_fast_path_equals_naive_reference(delta, train, sparsity):
    # the wiring (one q/k/v dropout draw, proj undropped, drop-paths), the checkpointed per-layer path, the prelude's
    # thresholds and the one-GEMM path against the naive reference: outputs and every gradient
    torch.manual_seed(0)
    m = _micro(delta=delta, sparsity=sparsity, dropout=0.3, drop_path=0.2).train(train)
    _big_update(m)
    out, fast, ref_out, ref = _step_vs_reference(m, reference_forward_any)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    factor = f"blocks.1.mlp.fc2.{'D' if delta == 'dense' else 'B'}"
    assert set(fast) == set(ref) and {"cls_token", "head.weight", factor} <= set(fast)
    for name in fast:
        torch.testing.assert_close(fast[name], ref[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("delta", ["lora", "dense"])
def test_delta_prelude_and_checkpointing_change_nothing(delta):
    # the prelude selects each layer's threshold (one batch per shape) as the layer would alone: bit-identical
    # outputs and gradients; checkpointing on and off: equal gradients
    torch.manual_seed(0)
    m = _micro(delta=delta).train()
    _big_update(m)
    assert [len(g) for g in m.prelude.groups] == [8, 2, 2]
    x = torch.randn(3, 3, 32, 32)
    batched = outputs_and_grads(m, x)
    layers = [mod for mod in m.modules() if isinstance(mod, SNELLLinear)]
    assert all(lin._threshold is None for lin in layers)  # each hand-over used once
    with torch.no_grad():
        m.prelude()
        assert all(torch.equal(lin._threshold, lin.threshold()) for lin in layers)
        for lin in layers:
            lin._threshold = None
    m.prelude, prelude = None, m.prelude
    alone = outputs_and_grads(m, x)
    assert all(torch.equal(a, b) for a, b in zip(batched, alone))
    m.prelude = prelude
    for lin in layers:
        lin.checkpoint = False
    for blk in m.blocks:
        blk.attn.qkv_branch.checkpoint = False
    plain = outputs_and_grads(m, x)
    for a, b in zip(plain, batched):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_delta_lora_at_s0_is_loras_b_times_a():
    # delta=lora, s = 0: K = (B·A)ᵀ, so the merged update is LoRA's B·A: with the factors of a `lora` model on all
    # six linears (shared=false) copied in, the two models compute the same function and the same updates
    torch.manual_seed(0)
    ref = models.create_model("vit_micro_patch8", "lora", **MICRO, targets=("q", "k", "v", "proj", "fc1", "fc2"),
                              shared=False).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith(".up"):
                p.normal_(0, 0.3)
    m = _micro(delta="lora", sparsity=0.0, dropout=0.0, drop_path=0.0).eval()
    state = {k.replace(".down", ".A").replace(".up", ".B"): v for k, v in ref.state_dict().items()}
    m.load_state_dict(state)  # strict: every tensor of one model is one of the other
    lin, own = m.blocks[0].attn.k, ref.blocks[0].attn.k
    assert torch.equal(lin.delta_weight(), own.delta_weight())  # Kᵀ = B·A exactly
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("delta", ["lora", "dense"])
@pytest.mark.parametrize("sparsity", [0.9, 0.0])
def test_delta_training_steps_move_every_trainable_tensor(delta, sparsity):
    # from the default init (s = 0: LoRA's B = 0 / D = 0; s = 0.9: nn.Linear's), without weight decay, so that only
    # gradients move them; the frozen backbone stays put
    torch.manual_seed(0)
    m = _micro(delta=delta, sparsity=sparsity).train()
    trainable = {n: p for n, p in m.named_parameters() if p.requires_grad}
    assert {n.rsplit(".", 1)[-1] for n in trainable if n.startswith("blocks.")} == (
        {"D"} if delta == "dense" else {"A", "B"})
    _assert_three_adamw_steps_move_only_the_trainable(m, weight_decay=0.0)


def test_delta_arguments_and_the_kernel_only_fast_path(monkeypatch):
    for kw, match in [({"delta": "sparse"}, "delta must be one of kernel, lora, dense"),
                      ({"delta": "lora", "batch_weights": True}, "batch_weights builds KLoRA kernels"),
                      ({"delta": "dense", "batch_weights": True}, "batch_weights builds KLoRA kernels"),
                      ({"delta": "lora", "rank": 0}, "rank must be an integer >= 1")]:
        with pytest.raises(ValueError, match=match):
            _micro(**kw)
    assert _micro(delta="lora", rank=3).blocks[0].attn.q.A.shape == (3, 64)  # an odd rank is fine for LoRA
    # where batch_weights is on by device (CUDA), a lora / dense prelude still hands over thresholds only
    monkeypatch.setattr(snell.SNELLPrelude, "WEIGHTS_BY_DEVICE", {"default": True})
    torch.manual_seed(0)
    m = _micro(delta="dense").train()
    x = torch.randn(2, 3, 32, 32)
    got = outputs_and_grads(m, x)
    m.prelude = None
    assert all(torch.equal(a, b) for a, b in zip(got, outputs_and_grads(m, x)))
    assert "delta=dense" in repr(m.blocks[0].mlp.fc1)
