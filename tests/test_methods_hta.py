"""HTA (docs/methods/hta.md): counts, init (HTA-D1/D2), fast path == per-token reference, Householder/SVD facts (scipy,
float64), identity at init, gradient-flow order with the zero head, merge equivalence, bad kwargs."""
import copy
import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

import models
from fastpath import ARCH, DEVICES, FP64_TOL, fast_vs_reference, rel_err
from models.methods.hta import HTA, HTAAdapter, HTALinear, hta_branch_reference, householder


HTA_NAMES = ("v_left", "v_right", "d", "down", "up")
VTAB_SUM_C, FGVC_SUM_C = 940, 1173  # 19 VTAB tasks, 5 FGVC datasets (specs README, docs/methods/hta.md §4)


def _meta(arch="vit_base_patch16_224", num_classes=10, **kw):
    with torch.device("meta"):
        return models.create_model(arch, "hta", num_classes=num_classes, **kw)


def _micro(method="hta", seed=0, **kw):
    torch.manual_seed(seed)
    return models.create_model("vit_micro_patch8", method, num_classes=5, img_size=32, **kw)


def _hta_params(model):
    return {n: p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in HTA_NAMES}


def _randomise(model, seed=1):
    """Non-zero d, up and head, so every term of ΔW is active."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and n.rsplit(".", 1)[-1] in ("d", "up") or n.startswith("head."):
                p.copy_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))


# ---------------------------------------------------------------- counts (docs/methods/hta.md §4)

@pytest.mark.parametrize("kw,expected", [
    ({}, 184_320), ({"rank": 0}, 110_592), ({"rank": 2}, 258_048), ({"rank": 4}, 405_504),
    ({"targets": ("q", "v")}, 92_160), ({"targets": ("q", "v", "fc1", "fc2")}, 294_912),
    ({"placement": "ffn_adapter"}, 46_080)])
def test_vit_b16_trainable_counts(kw, expected):
    m = _meta(**kw)
    assert models.count_parameters(m, head=False) == expected
    # nothing but HTA tensors (and the head) trains
    trainable = [n for n, p in m.named_parameters() if p.requires_grad and not n.startswith("head.")]
    assert trainable and all(n.rsplit(".", 1)[-1] in HTA_NAMES for n in trainable)


def test_per_matrix_formula_and_head():
    # P(n_in, n_out, r) = n_in + n_out + min(n_in, n_out) + r·(n_in + n_out); fc1 768→3072 at r = 1: 8,448
    m = _meta(targets=("fc1",), num_classes=37)
    fc1 = m.blocks[0].mlp.fc1
    assert sum(p.numel() for p in fc1.parameters() if p.requires_grad) == 768 + 3072 + 768 + 3840 == 8_448
    assert models.count_parameters(m) - models.count_parameters(m, head=False) == (768 + 1) * 37


def test_printed_totals_round_to_paper():
    b = models.count_parameters(_meta(), head=False)
    l = models.count_parameters(_meta("vit_large_patch16_224"), head=False)
    assert l == 24 * 4 * 5 * 1024 == 491_520
    vtab_b, fgvc_b, vtab_l = b + 769 * VTAB_SUM_C / 19, b + 769 * FGVC_SUM_C / 5, l + 1025 * VTAB_SUM_C / 19
    assert (round(vtab_b), round(fgvc_b), round(vtab_l)) == (222_365, 364_727, 542_231)
    assert (round(vtab_b / 1e6, 2), round(fgvc_b / 1e6, 2), round(vtab_l / 1e6, 2)) == (0.22, 0.36, 0.54)
    # per-task totals (docs/methods/hta.md §4): cifar C = 100, sun397 C = 397
    assert models.count_parameters(_meta(num_classes=100)) == 261_220
    assert models.count_parameters(_meta(num_classes=397)) == 489_613


# ---------------------------------------------------------------- init (HTA-D1 / HTA-D2)

def test_init_follows_decisions():
    torch.manual_seed(0)
    layer = HTALinear(torch.nn.Linear(768, 768), rank=1)
    assert torch.equal(layer.d, torch.zeros(768)) and torch.equal(layer.up, torch.zeros(768, 1))
    for v in (layer.v_left, layer.v_right):  # N(0, 1)
        assert abs(v.mean().item()) < 0.15 and abs(v.std().item() - 1) < 0.1
    bound = 1 / math.sqrt(768)  # Kaiming-uniform a=√5: U(±1/√n_in) = ±0.0361
    assert layer.down.abs().max() <= bound and layer.down.abs().max() > 0.9 * bound
    assert torch.equal(layer.delta_weight(), torch.zeros(768, 768))
    rect = HTALinear(torch.nn.Linear(768, 3072), rank=2)
    assert rect.v_left.shape == (768,) and rect.v_right.shape == (3072,) and rect.d.shape == (768,)
    assert rect.down.shape == (2, 768) and rect.up.shape == (3072, 2)
    assert HTALinear(torch.nn.Linear(8, 8), rank=0).down is None


# ---------------------------------------------------------------- fast path == documented reference (§3.1)

@pytest.mark.parametrize("impl", ["merged", "lowrank"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("n_in,n_out,rank,dropout", [
    (64, 64, 1, 0.0), (64, 256, 2, 0.0), (256, 64, 1, 0.0), (64, 64, 0, 0.0), (64, 64, 1, 0.3), (256, 64, 3, 0.5)])
def test_fast_path_matches_reference_outputs_and_grads(dtype, tol, n_in, n_out, rank, dropout, impl):
    torch.manual_seed(0)
    base = torch.nn.Linear(n_in, n_out).to(dtype).requires_grad_(False)
    layer = HTALinear(base, rank=rank, dropout=dropout, impl=impl).to(dtype).train()
    with torch.no_grad():
        layer.d.normal_()
        if rank:
            layer.up.normal_()
    x = torch.randn(3, 7, n_in, dtype=dtype)
    w = torch.randn(3, 7, n_out, dtype=dtype)
    params = [p for p in layer.parameters() if p.requires_grad]
    assert len(params) == (5 if rank else 3)

    def run(fn):
        xx = x.clone().requires_grad_(True)
        torch.manual_seed(123)  # same dropout mask for both paths
        out = fn(xx)
        grads = torch.autograd.grad((out * w).sum(), [xx] + params)
        return out.detach(), grads

    fast, g_fast = run(layer)
    ref, g_ref = run(lambda xx: base(xx) + hta_branch_reference(xx, layer))
    scale = ref.abs().max()
    assert (fast - ref).abs().max() <= tol * scale
    for a, b in zip(g_fast, g_ref):
        assert (a - b).abs().max() <= tol * max(b.abs().max(), 1.0)
    if dropout:  # the mask really is applied in training, and is off in eval (one-GEMM path)
        layer.eval()
        assert not torch.allclose(layer(x), fast)
        assert torch.allclose(layer(x), F.linear(x, base.weight + layer.delta_weight(), base.bias), atol=tol * scale)


@pytest.mark.parametrize("batch_weights", [True, False])
@pytest.mark.parametrize("kw", [
    {"targets": ("q", "proj", "fc1", "fc2"), "rank": 2}, {"rank": 0, "dropout": 0.3}, {"placement": "ffn_adapter"},
    {"targets": ("q", "proj", "fc1", "fc2"), "rank": 2, "dropout": 0.1, "impl": "lowrank"},
    {"placement": "ffn_adapter", "impl": "lowrank"}])
@pytest.mark.parametrize("train", [True, False])
def test_batched_prelude_matches_per_layer_path(kw, batch_weights, train):
    # The prelude builds every layer's factors (and, with batch_weights, their GEMM weights W + ΔW or ΔW) in one
    # batch per shape group; with it switched off each layer builds its own. Same outputs and same gradients for
    # every trainable tensor, in train mode (dropout on where set) and in eval mode.
    model = _micro(**kw, batch_weights=batch_weights).train(train)
    _randomise(model)
    assert model.prelude is not None
    x = torch.randn(4, 3, 32, 32)
    params = [p for p in model.parameters() if p.requires_grad]
    layers = [m for m in model.modules() if isinstance(m, (HTALinear, HTAAdapter))]
    handed = []
    for layer in layers:  # what the layers receive from the prelude
        layer.register_forward_pre_hook(lambda m, _: handed.append((m._factors is None, m._weight is None)))

    def run():
        torch.manual_seed(7)  # same dropout masks
        out = model(x)
        return out.detach(), torch.autograd.grad(out.square().sum(), params)

    batched, g_batched = run()
    lowrank = train and kw.get("impl") == "lowrank"
    weights = batch_weights and not lowrank  # (factors missing, weight missing) per layer:
    assert handed == [(True, False) if weights else (False, True)] * len(layers)
    assert all(m._factors is None and m._weight is None for m in layers)  # each handover used once, then dropped
    handed.clear()
    prelude, model.prelude = model.prelude, None
    alone, g_alone = run()
    model.prelude = prelude
    assert handed == [(True, True)] * len(layers)  # nothing handed over: each layer built its own
    assert torch.allclose(batched, alone, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_batched, g_alone):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_prelude_cuts_dispatched_ops_per_training_step():
    # The eager GPU step is launch-bound (docs/PERFORMANCE.md): the batched prelude must keep HTA's extra ops
    # (beyond the frozen ViT's) to a fraction of the per-layer path's, and batching the weights too must cut them
    # further. bench.py on ViT-B/16 (48 layers): 6,915 → 2,704 (factors) → 2,043 (weights) forward + backward ops,
    # floor 1,269 (docs/PERFORMANCE.md). Here: 2 blocks × 4 layers (937 → 310 → 223 extra), same counter.
    from bench import OpCounter

    def ops(model):
        x = torch.randn(2, 3, 32, 32)
        with OpCounter() as counter:
            model(x).sum().backward()
        return counter.n

    floor = models.create_model("vit_micro_patch8", "linear", num_classes=5, img_size=32)
    floor.pos_embed.requires_grad_(True)
    model = _micro(batch_weights=False)
    batched = ops(model)
    weights = ops(_micro(batch_weights=True))
    model.prelude = None
    per_layer = ops(model)
    base = ops(floor)
    assert batched - base < 0.45 * (per_layer - base), (base, batched, per_layer)
    assert weights - base < 0.8 * (batched - base), (base, weights, batched)


def test_prelude_follows_deepcopy_and_leaves_with_merge():
    model = _micro().eval()
    _randomise(model)
    clone = models.merge(model)  # deep-copies, then merges the copy
    assert clone.prelude is None and model.prelude is not None
    import copy
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.blocks[0].attn.q.d.add_(1.0)  # must reach the twin's forward through ITS prelude, not the original's
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), clone(x), atol=1e-5)
        assert not torch.allclose(twin(x), model(x), atol=1e-3)
        with_prelude = twin(x)
        twin.prelude = None
        assert torch.allclose(twin(x), with_prelude, atol=1e-6)


def test_dropout_path_keeps_its_activations_in_the_autocast_dtype():
    # Under autocast the (fp32) layer input is cast once, before the dropout: what the two-GEMM path saves for
    # backward at the input's shape is bf16, never fp32.
    torch.manual_seed(0)
    layer = HTALinear(torch.nn.Linear(64, 48).requires_grad_(False), rank=1, dropout=0.1).train()
    x = torch.randn(2, 5, 64, requires_grad=True)  # inside a model gradients flow on through the input
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x)
    activations = [t for t in saved if t.numel() == x.numel()]  # (2, 5, 64), or (10, 64) inside F.linear
    assert activations and all(t.dtype == torch.bfloat16 for t in activations), [t.dtype for t in activations]


def test_delta_weight_equals_explicit_householder_product():
    # ΔW_pt = up·down + H(v_r)·D_Hᵀ·H(v_l) (docs/methods/hta.md §3.1), square and both rectangular shapes, float64
    torch.manual_seed(0)
    for n_in, n_out in ((48, 48), (48, 80), (80, 48)):
        layer = HTALinear(torch.nn.Linear(n_in, n_out), rank=2).double()
        with torch.no_grad():
            layer.d.normal_(), layer.up.normal_()
        k = min(n_in, n_out)
        dh = torch.zeros(n_in, n_out, dtype=torch.float64)
        dh[range(k), range(k)] = layer.d.detach()
        paper = householder(layer.v_left) @ dh @ householder(layer.v_right)  # (n_in, n_out), paper layout
        expected = paper.t() + layer.up @ layer.down
        assert (layer.delta_weight() - expected).abs().max() < 1e-12


def test_delta_weight_stays_fp32_under_autocast():
    torch.manual_seed(0)
    layer = HTALinear(torch.nn.Linear(32, 48), rank=1)
    with torch.no_grad():
        layer.d.normal_(), layer.up.normal_()
    x = torch.randn(5, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dw, y = layer.delta_weight(), layer(x)
    assert dw.dtype == torch.float32 and torch.equal(dw, layer.delta_weight())
    assert y.dtype == torch.bfloat16


# ---------------------------------------------------------------- Householder / SVD properties (§3.2, HTA-T)

def test_householder_matrices_orthogonal_symmetric_det_minus_one_scipy():
    m = _micro(targets=("q", "k", "v", "proj", "fc1", "fc2")).double()
    vs = [p.detach().numpy() for n, p in m.named_parameters() if n.endswith(("v_left", "v_right"))]
    assert len(vs) == 2 * 6 * 2
    for v in vs:
        h = householder(torch.from_numpy(v)).numpy()
        eye = np.eye(len(v))
        assert np.linalg.norm(h.T @ h - eye) < 1e-10
        assert np.linalg.norm(h - h.T) < 1e-10 and np.linalg.norm(h @ h - eye) < 1e-10
        assert abs(scipy.linalg.det(h) + 1) < 1e-10


@pytest.mark.parametrize("n_in,n_out", [(64, 64), (64, 256), (256, 64)])
def test_svd_of_householder_diag_householder_is_abs_d_scipy(n_in, n_out):
    torch.manual_seed(0)
    layer = HTALinear(torch.nn.Linear(n_in, n_out), rank=0).double()
    k = min(n_in, n_out)
    d = torch.randn(k, dtype=torch.float64)
    d[::5] = 0.0  # exact zeros → rank drops
    with torch.no_grad():
        layer.d.copy_(d)
    m = layer.delta_weight().detach().numpy().T  # paper layout H_l·D_H·H_r, (n_in, n_out)
    sv = scipy.linalg.svdvals(m)  # min(n_in, n_out) values: |d|, the rectangular D_H is padded with zeros
    assert len(sv) == k
    np.testing.assert_allclose(np.sort(sv), np.sort(np.abs(d.numpy())), atol=1e-10)
    nnz = int((d != 0).sum())
    assert nnz < k and np.linalg.matrix_rank(m, tol=1e-8) == nnz == int((sv > 1e-8).sum())
    # full SVD view: the rectangular D_H's extra rows/cols carry only zero singular values
    full = scipy.linalg.svd(np.pad(m, ((0, max(0, n_out - n_in)), (0, max(0, n_in - n_out)))), compute_uv=False)
    np.testing.assert_allclose(np.sort(full), np.sort(np.pad(np.abs(d.numpy()), (0, max(n_in, n_out) - k))),
                               atol=1e-10)


# ---------------------------------------------------------------- identity at init (§3.2)

@pytest.mark.parametrize("kw", [{}, {"targets": ("q", "v", "fc1", "fc2"), "rank": 2}, {"placement": "ffn_adapter"},
                                {"targets": ("q", "v", "fc1", "fc2"), "rank": 2, "impl": "lowrank"},
                                {"placement": "ffn_adapter", "impl": "lowrank"},
                                {"batch_weights": True}, {"placement": "ffn_adapter", "batch_weights": True}])
def test_identity_at_init_bit_for_bit(kw):
    frozen, hta = _micro("linear"), _micro(**kw)
    plain = {n.replace(".base.", "."): p for n, p in hta.state_dict().items()}
    for n, p in frozen.state_dict().items():
        if not n.startswith("head."):
            assert torch.equal(plain[n], p), n
    with torch.no_grad():  # same (non-zero) head in both, otherwise logits are trivially 0
        torch.nn.init.normal_(frozen.head.weight)
        hta.head.load_state_dict(frozen.head.state_dict())
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(hta.eval()(x), frozen.eval()(x))
    assert torch.equal(hta.train()(x), frozen.train()(x))  # the training paths too (no dropout here)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # and in mixed precision: W + 0 rounds to bf16 as W does
        assert torch.equal(hta.train()(x), frozen.train()(x))


# ---------------------------------------------------------------- gradient flow with the zero head (§3.2)

def test_gradient_flow_order_with_zero_head_and_three_adamw_steps():
    m = _micro(rank=1, targets=("q", "k", "v", "proj", "fc1")).train()
    assert torch.equal(m.head.weight, torch.zeros_like(m.head.weight))  # head_init 'zeros' (docs/methods/hta.md §5.2)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 5, (6,))
    start = {n: p.detach().clone() for n, p in m.state_dict().items()}
    hta = _hta_params(m)

    def step():
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        grads = {n: p.grad.clone() for n, p in hta.items()}
        opt.step()
        return grads

    def moved(kind):
        return [not torch.equal(p, start[n]) for n, p in m.state_dict().items() if n.endswith("." + kind)]

    g1 = step()  # zero head: nothing below the head gets gradient
    assert all(torch.count_nonzero(g) == 0 for g in g1.values())
    assert not any(any(moved(k)) for k in HTA_NAMES) and not torch.equal(m.head.weight, start["head.weight"])
    g2 = step()  # d and B move; ∂L/∂A = 0 while B = 0 and ∂L/∂v = 0 while d = 0
    for n, g in g2.items():
        active = n.endswith((".d", ".up"))
        assert (torch.count_nonzero(g) > 0) == active, n
    assert all(moved("d")) and all(moved("up")) and not any(moved("down")) and not any(moved("v_left"))
    step()  # now A and v move too
    end = m.state_dict()
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert len(trainable) == 5 * 5 * 2 + 2
    for n, p in end.items():  # full state-dict compare: every trainable tensor changed, nothing frozen did
        assert torch.equal(p, start[n]) != (n in trainable), n


# ---------------------------------------------------------------- merge (§3.3, §3.4)

@pytest.mark.parametrize("kw", [{}, {"targets": ("q", "k", "v", "proj", "fc1", "fc2"), "rank": 2},
                                {"rank": 0, "targets": ("v",)}, {"placement": "ffn_adapter"}])
def test_merge_equivalence(kw):
    m = _micro(**kw)
    _randomise(m)
    x = torch.randn(4, 3, 32, 32)
    m.eval()
    merged = models.merge(m)
    out, out_merged = m(x), merged(x)
    assert (out - out_merged).abs().max() < 1e-4
    assert models.method_modules(merged) == []
    assert all(isinstance(b.mlp_out, torch.nn.Identity) for b in merged.blocks)
    # the branch was really active (the same model with ΔW = 0 answers otherwise), and the input model is untouched
    inactive = copy.deepcopy(m)
    with torch.no_grad():
        for n, p in inactive.named_parameters():
            if n.rsplit(".", 1)[-1] in ("d", "up"):
                p.zero_()
    assert (out - inactive(x)).abs().max() > 1e-3
    assert any(isinstance(mod, (HTALinear, HTAAdapter)) for mod in m.modules())
    # merging again is idempotent (a merged model is a plain ViT)
    again = models.merge(merged)
    assert torch.equal(again(x), out_merged)
    m.method.merge(merged)  # the method's own merge on already-merged layers is a no-op
    assert torch.equal(merged(x), out_merged)


def test_merge_in_place_and_unchanged_bias():
    m = _micro()
    _randomise(m)
    bias = m.blocks[0].attn.q.bias.clone()
    w = m.blocks[0].attn.q.weight.clone()
    dw = m.blocks[0].attn.q.delta_weight().detach()
    models.merge(m, inplace=True)
    q = m.blocks[0].attn.q
    assert type(q) is torch.nn.Linear and not q.weight.requires_grad
    assert torch.equal(q.bias, bias) and torch.allclose(q.weight, w + dw, atol=1e-7)


# ---------------------------------------------------------------- kwargs

@pytest.mark.parametrize("kw,match", [
    ({"targets": ("q", "qkv")}, "targets"), ({"targets": ()}, "targets"), ({"rank": -1}, "rank"),
    ({"rank": 1.5}, "rank"), ({"dropout": 1.0}, "dropout"), ({"placement": "adapter"}, "placement"),
    ({"placement": "ffn_adapter", "targets": ("q",)}, "ffn_adapter"), ({"impl": "vector"}, "impl"),
    ({"batch_weights": "yes"}, "batch_weights")])
def test_bad_kwargs_raise_value_error(kw, match):
    with pytest.raises(ValueError, match=match):
        models.create_model("vit_micro_patch8", "hta", num_classes=2, img_size=32, **kw)


def test_registered_with_defaults():
    m = models.METHODS["hta"]()
    assert isinstance(m, HTA) and m.config() == {"rank": 1, "targets": ("q", "k", "v", "proj"), "dropout": 0.0,
                                                 "placement": "linear", "impl": "merged", "batch_weights": None}
    assert HTA.head_init == "zeros" and models.METHODS["hta"](targets=["q", "v"]).targets == ("q", "v")


@pytest.mark.parametrize("kw", [{"dropout": 0.1}, {"batch_weights": True}, {"batch_weights": True, "dropout": 0.1}])
def test_forward_compiles_without_graph_breaks_under_autocast(kw):
    # The eager step is launch-bound (many tiny ops per layer); torch.compile fuses them only if nothing breaks the
    # graph, e.g. the autocast switch inside hta_delta_weight. dynamo.explain traces without compiling any code.
    import torch._dynamo as dynamo

    m = _micro(targets=("q", "fc1"), **kw).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explained = dynamo.explain(lambda x: m(x).sum())(torch.randn(2, 3, 32, 32))
    assert explained.graph_break_count == 0, explained.break_reasons


@pytest.mark.parametrize("kw", [{}, {"batch_weights": True}, {"batch_weights": True, "dropout": 0.1}])
def test_compiled_training_step_equals_eager(kw):
    # What --compile runs: dynamo + AOT autograd over the prelude's hand-over (module attributes written and read in
    # one graph). aot_eager runs the traced ATen graph without code generation: this checks the tracing.
    m = _micro(**kw).train()
    _randomise(m)
    x = torch.randn(3, 3, 32, 32)
    params = [p for p in m.parameters() if p.requires_grad]

    def run(model):
        torch.manual_seed(7)
        out = model(x)
        return [out.detach(), *torch.autograd.grad(out.square().sum(), params)]

    eager = run(m)
    compiled = torch.compile(m, backend="aot_eager")
    for _ in range(2):  # the second call runs the cached graph
        for a, b in zip(run(compiled), eager):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert all(layer._factors is None and layer._weight is None for layer in m.modules() if isinstance(layer, HTALinear))


# ------------------------------------------------ the batched prelude on each device (fp64 verdicts, tests/fastpath.py)
def _perturbed_hta(device, **kw):
    """HTA on the device's checking ViT (tests/fastpath.py ARCH) with non-zero d, up and head, in training mode."""
    arch, size = ARCH[device]
    torch.manual_seed(0)
    model = models.create_model(arch, "hta", num_classes=10, img_size=size, **kw).to(device).train()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith((".d", ".up")) or n.startswith("head."):
                p.normal_(0, 0.2)
    return model, torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)


@torch.no_grad()
def _handover_rel_err(model) -> float:
    """Max relative error between what ``model.prelude`` hands each HTA layer (factors, ΔW or W + ΔW) and what that
    layer builds on its own; the slots are emptied again."""
    from models.methods.base import take_handover
    from models.methods.hta import hta_delta_weight, hta_factors

    model.prelude()
    errs = []
    for layer in model.modules():
        if isinstance(layer, HTALinear):
            w, factors = take_handover(layer, "_weight"), take_handover(layer, "_factors")
            if factors is not None:
                errs += map(rel_err, factors, hta_factors(layer))
            else:  # W + ΔW ("merged") or ΔW ("delta")
                base = layer.base.weight if layer._prelude_form() == "merged" else None
                errs.append(rel_err(w, hta_delta_weight(layer, base).to(w.dtype)))
    return max(errs)


PRELUDE_FORMS = {"factors": {"dropout": 0.1, "batch_weights": False}, "delta": {"dropout": 0.1, "batch_weights": True},
                 "merged": {"batch_weights": True}}


@pytest.mark.parametrize("form", PRELUDE_FORMS)
@pytest.mark.parametrize("device", DEVICES)
def test_batched_prelude_equals_per_layer_path_on_each_device_in_fp64(device, form):
    # What the prelude hands each layer (the factors; the GEMM weight ΔW with dropout; W + ΔW without) is what the
    # layer builds itself, and the whole model's output and every gradient agree with the prelude switched off.
    model, x = _perturbed_hta(device, **PRELUDE_FORMS[form])
    prelude = model.prelude
    model.double()
    assert _handover_rel_err(model) <= FP64_TOL
    err = fast_vs_reference(model, x, lambda: setattr(model, "prelude", prelude),
                            lambda: setattr(model, "prelude", None))
    assert err <= FP64_TOL, err


def test_fp64_verdict_passes_a_rearranged_sum_and_fails_a_real_difference(monkeypatch):
    # Why the device checks decide in float64 (tests/fastpath.py): re-rounding every batched weight ((w*3)/3) moves
    # the float32 comparison by more than 1e-7 but the float64 one by ~1e-15; a real 1e-7 change looks like rounding
    # in float32 and stands out in float64.
    from models.methods import hta

    original = hta.hta_weights_many

    def check(dtype):
        model, x = _perturbed_hta("cpu", batch_weights=True)
        prelude = model.prelude
        return fast_vs_reference(model, x, lambda: setattr(model, "prelude", prelude),
                                 lambda: setattr(model, "prelude", None), dtype)

    monkeypatch.setattr(hta, "hta_weights_many", lambda mods, merged: [(w * 3) / 3 for w in original(mods, merged)])
    rounding = check(torch.float32)
    assert 0 < check(torch.float64) < 1e-12 and rounding > 1e-7
    monkeypatch.setattr(hta, "hta_weights_many", lambda mods, merged: [w * (1 + 1e-7) for w in original(mods, merged)])
    assert check(torch.float64) > 1e-7 > FP64_TOL
    assert check(torch.float32) < 10 * rounding  # float32 alone could not tell them apart


def test_handover_check_sees_a_wrong_batched_weight(monkeypatch):
    # the per-layer comparison of what the prelude hands over (no network between to amplify rounding) is zero when
    # the batch equals each layer's own build, and sees a 1 % error in one batch
    from models.methods import hta

    model, _ = _perturbed_hta("cpu", batch_weights=True)
    assert _handover_rel_err(model) < 1e-6
    original = hta.hta_weights_many
    monkeypatch.setattr(hta, "hta_weights_many", lambda mods, merged: [w * 1.01 for w in original(mods, merged)])
    assert _handover_rel_err(model) > 5e-3
