"""FacT-TK (docs/methods/baselines.md §9): counts, one shared module, the official slice layout (fc1/fc2 interleave),
identity at init, training moves every factor, merge equivalence, bad kwargs."""
import copy

import pytest
import torch
import torch.nn.functional as F

import models
from models.methods.fact_tk import FacTLinear, FacTShared


def _micro(seed=0, **kw):
    torch.manual_seed(seed)
    return models.create_model("vit_micro_patch8", "fact_tk", num_classes=5, img_size=32, **kw)


def _randomise(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.fact.v.copy_(0.3 * torch.randn(model.fact.v.shape, generator=g))


@pytest.mark.parametrize("rank,expected", [(8, 13_952), (16, 30_976), (32, 86_528)])
def test_vit_b16_counts(rank, expected):
    with torch.device("meta"):
        m = models.create_model("vit_base_patch16_224", "fact_tk", num_classes=10, rank=rank)
    assert models.count_parameters(m, head=False) == expected == 2 * 768 * rank + 144 * rank + rank ** 3
    assert models.count_parameters(m) - expected == 769 * 10
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {
        "fact.u", "fact.v", "fact.core", "fact.p", "head.weight", "head.bias"}


def test_vit_l16_count_formula():
    with torch.device("meta"):
        m = models.create_model("vit_large_patch16_224", "fact_tk", num_classes=10, rank=8)
    assert models.count_parameters(m, head=False) == 2 * 1024 * 8 + 12 * 24 * 8 + 8 ** 3


def test_shared_factors_registered_once_and_follow_deepcopy():
    m = _micro(rank=4)
    assert isinstance(m.fact, FacTShared) and m.fact.p.shape == (4, 24)
    assert [k for k in m.state_dict() if "fact" in k] == ["fact.u", "fact.v", "fact.core", "fact.p"]
    layers = [mod for mod in m.modules() if isinstance(mod, FacTLinear)]
    assert len(layers) == 12 and all(layer.shared is m.fact for layer in layers)
    assert sorted(layer.start for layer in layers) == [0, 1, 2, 3, 4, 8, 12, 13, 14, 15, 16, 20]
    c = copy.deepcopy(m)
    assert all(mod.shared is c.fact for mod in c.modules() if isinstance(mod, FacTLinear))
    assert m.method.backbone_drop_path == 0.1 and type(m.blocks[-1].drop_path1).__name__ == "DropPath"


def test_init():
    m = _micro(rank=4)
    assert torch.equal(m.fact.v, torch.zeros_like(m.fact.v))
    assert all(torch.count_nonzero(t) == t.numel() for t in (m.fact.u, m.fact.core, m.fact.p))
    assert m.method.config() == {"rank": 4, "scale": 1.0, "dropout": 0.1}


def _core(fact, j):
    """C_j = Σ_k core[:, :, k]·P[k, j], written out."""
    return sum(fact.core[:, :, k] * fact.p[k, j] for k in range(fact.rank))


def test_delta_weights_follow_the_official_slice_layout():
    # Hand-written from the semantics of JieShibo/PETL-ViT FacT/fact_tk.py (module docstring), entry by entry.
    r, D, s = 4, 64, 0.7
    m = _micro(rank=r, scale=s)
    _randomise(m)
    f = m.fact
    U, V = f.u.detach(), f.v.detach()
    with torch.no_grad():
        for i, blk in enumerate(m.blocks):
            for j, lin in enumerate((blk.attn.q, blk.attn.k, blk.attn.v, blk.attn.proj)):
                C = _core(f, 12 * i + j)  # x ↦ V(U(x)·C): (out, in) = V·Cᵀ·U
                assert torch.allclose(lin.delta_weight(), s * V @ C.t() @ U, atol=1e-6)
            for name, first, out_blocked in (("fc1", 4, True), ("fc2", 8, False)):
                cores = [_core(f, 12 * i + first + jj) for jj in range(4)]
                expected = torch.zeros(4 * D, D) if out_blocked else torch.zeros(D, 4 * D)
                for blk_m in range(4):
                    K = torch.zeros(r, r)  # [input code index, output code index]
                    for a in range(r):
                        for c in range(r):
                            if out_blocked:  # fc1: G[a, 4b + jj] = C_jj[a, b]; block m reads columns m·r + c
                                b, jj = divmod(blk_m * r + c, 4)
                                K[a, c] = cores[jj][a, b]
                            else:  # fc2: code = Σ_m U(x_m) · Gᵀ[m·r + a, c] = G[c, m·r + a]
                                b, jj = divmod(blk_m * r + a, 4)
                                K[a, c] = cores[jj][c, b]
                    part = s * V @ K.t() @ U  # (D, D)
                    if out_blocked:
                        expected[blk_m * D:(blk_m + 1) * D] = part
                    else:
                        expected[:, blk_m * D:(blk_m + 1) * D] = part
                assert torch.allclose(getattr(blk.mlp, name).delta_weight(), expected, atol=1e-6), (i, name)


def test_branch_forward_equals_delta_weight_in_eval():
    m = _micro(rank=4, scale=0.5).eval()
    _randomise(m)
    for lin in (m.blocks[1].attn.proj, m.blocks[1].mlp.fc1, m.blocks[1].mlp.fc2):
        x = torch.randn(2, 9, lin.in_features)
        assert torch.allclose(lin(x), F.linear(x, lin.weight + lin.delta_weight(), lin.bias), atol=1e-5)


def test_identity_at_init_bit_for_bit():
    frozen, m = _micro_linear(), _micro(rank=4)
    m.head.load_state_dict(frozen.head.state_dict())
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(m.eval()(x), frozen.eval()(x))


def _micro_linear():
    torch.manual_seed(0)
    return models.create_model("vit_micro_patch8", "linear", num_classes=5, img_size=32, drop_path_rate=0.1)


def test_two_steps_move_every_factor_and_nothing_frozen():
    m = _micro(rank=4).train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 5, (6,))
    start = {n: p.detach().clone() for n, p in m.state_dict().items()}
    for step in range(2):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        if step == 0:  # V = 0: only V (and the head) get gradient at step 1
            assert torch.count_nonzero(m.fact.v.grad) > 0
            assert all(torch.count_nonzero(t.grad) == 0 for t in (m.fact.u, m.fact.core, m.fact.p))
        opt.step()
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    for n, p in m.state_dict().items():
        assert torch.equal(p, start[n]) != (n in trainable), n


@pytest.mark.parametrize("kw", [{}, {"rank": 4, "scale": 0.1}])
def test_merge_equivalence(kw):
    m = _micro(**kw)
    _randomise(m)
    m.eval()
    x = torch.randn(4, 3, 32, 32)
    merged = models.merge(m)
    out = m(x)
    assert (out - merged(x)).abs().max() < 1e-4
    assert (out - _micro_linear()(x)).abs().max() > 1e-3  # the branch was active
    assert models.method_modules(merged) == [] and not hasattr(merged, "fact")
    assert hasattr(m, "fact")  # the input model is untouched
    m.method.merge(merged)  # idempotent
    assert torch.allclose(merged(x), out, atol=1e-4)


@pytest.mark.parametrize("kw,match", [({"rank": 0}, "rank"), ({"rank": -2}, "rank"), ({"dropout": 1.0}, "dropout"),
                                      ({"targets": ("q",)}, "targets")])
def test_bad_kwargs_raise_value_error(kw, match):
    with pytest.raises(ValueError, match=match):
        models.create_model("vit_micro_patch8", "fact_tk", num_classes=2, img_size=32, **kw)
