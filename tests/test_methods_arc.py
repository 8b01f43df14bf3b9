"""ARC / ARC_att (docs/methods/arc.md): counts, initialisation, sharing, identity at init, merge, training
actually happens."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import models
from models.methods.arc import ARCAdapter, ARCShared

MICRO = dict(num_classes=5, img_size=32)


def _micro(method, **kw):
    return models.create_model("vit_micro_patch8", method, **MICRO, **kw)


def _randomise(model, std=0.1):
    """Non-zero values for every trainable tensor (adapters and head), so merge tests exercise every term."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, std)


@pytest.mark.parametrize("arch,arc,arc_att", [
    ("vit_base_patch16_224", 96_432, 48_216),  # docs/methods/arc.md §6 / §10
    ("vit_large_patch16_224", 153_952, 76_976),
    ("vit_huge_patch14_224", 213_120, 106_560),
])
def test_parameter_counts(arch, arc, arc_att):
    with torch.device("meta"):
        m = models.create_model(arch, "arc", num_classes=100)
        a = models.create_model(arch, "arc_att", num_classes=100)
    D, L, d = m.embed_dim, len(m.blocks), 50
    assert models.count_parameters(m, head=False) == arc == 2 * D * d + 2 * L * (d + D)
    assert models.count_parameters(a, head=False) == arc_att == D * d + L * (d + D)
    assert models.count_parameters(m) == arc + (D + 1) * 100  # head = (D + 1)·C
    assert models.count_parameters(a) == arc_att + (D + 1) * 100


def test_vit_b_trainable_set_is_explicit():
    # docs/methods/arc.md §4: U_att, U_mlp, every λ and b, head — and nothing of the backbone (cls, pos, LNs, linears).
    with torch.device("meta"):
        m = models.create_model("vit_base_patch16_224", "arc", num_classes=10)
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    expected = {"arc.u_att", "arc.u_mlp", "head.weight", "head.bias"}
    for i in range(12):
        expected |= {f"blocks.{i}.{pos}.{t}" for pos in ("attn_in", "mlp_in") for t in ("scale", "bias")}
    assert names == expected


def test_initialisation_table():
    torch.manual_seed(0)
    m = _micro("arc")  # D = 64, d = 50
    D, d = 64, 50
    u_bound, lam_bound = math.sqrt(6 / (D + d)), math.sqrt(6 / (1 + d))  # docs/methods/arc.md §3
    for u in (m.arc.u_att, m.arc.u_mlp):
        assert u.shape == (D, d)
        assert u.abs().max() <= u_bound and u.abs().max() > 0.8 * u_bound
    assert not torch.equal(m.arc.u_att, m.arc.u_mlp)
    for blk in m.blocks:
        assert torch.count_nonzero(blk.attn_in.scale) == 0
        assert torch.count_nonzero(blk.attn_in.bias) == 0 and torch.count_nonzero(blk.mlp_in.bias) == 0
        lam = blk.mlp_in.scale
        assert lam.shape == (d,) and lam.abs().max() <= lam_bound and torch.count_nonzero(lam) == d
    assert not torch.equal(m.blocks[0].mlp_in.scale, m.blocks[1].mlp_in.scale)  # independent per layer
    assert torch.count_nonzero(m.head.weight) == 0 and torch.count_nonzero(m.head.bias) == 0  # zero head
    z = _micro("arc", mlp_lambda_init="zeros")
    assert all(torch.count_nonzero(b.mlp_in.scale) == 0 for b in z.blocks)


def test_u_is_shared_once_and_up_projection_is_tied():
    m = _micro("arc")
    assert isinstance(m.arc, ARCShared)
    for blk in m.blocks:
        assert blk.attn_in.u is m.arc.u_att and blk.mlp_in.u is m.arc.u_mlp
        for ad in (blk.attn_in, blk.mlp_in):
            assert {n for n, _ in ad.named_parameters()} == {"scale", "bias"}  # no U, no separate up-projection
    # exactly one (D, d) tensor per position in the whole model and in its state dict
    assert sum(p.shape == (64, 50) for p in m.parameters()) == 2
    assert [k for k in m.state_dict() if "u_" in k] == ["arc.u_att", "arc.u_mlp"]
    c = copy.deepcopy(m)
    assert c.blocks[1].attn_in.u is c.arc.u_att and c.arc.u_att is not m.arc.u_att
    a = _micro("arc_att")
    assert a.arc.u_mlp is None and isinstance(a.blocks[0].mlp_in, nn.Identity)


def test_bottleneck_dropout_acts_on_d_dims():
    m = _micro("arc", dim=7, dropout=0.5).train()
    seen = []
    m.blocks[0].attn_in.drop.register_forward_hook(lambda mod, i, o: seen.append(o.shape[-1]))
    m(torch.randn(2, 3, 32, 32))
    assert seen == [7] and m.blocks[0].attn_in.drop.p == 0.5


def _with_head(model, head):
    model.head.load_state_dict(head.state_dict())
    return model


def test_identity_at_init():
    torch.manual_seed(0)
    head = nn.Linear(64, 5)
    x = torch.randn(2, 3, 32, 32)
    for method, kw, identity in [("arc_att", {}, True), ("arc", {}, False), ("arc", {"mlp_lambda_init": "zeros"}, True)]:
        torch.manual_seed(1)
        m = _with_head(_micro(method, **kw), head).eval()
        frozen = copy.deepcopy(m)
        for blk in frozen.blocks:
            blk.attn_in, blk.mlp_in = nn.Identity(), nn.Identity()
        assert torch.equal(m(x), frozen(x)) == identity, (method, kw)


@pytest.mark.parametrize("method", ["arc", "arc_att"])
def test_merge_equivalence(method):
    torch.manual_seed(0)
    m = _micro(method)
    _randomise(m)
    m.eval()
    x = torch.randn(3, 3, 32, 32)
    merged = models.merge(m)
    assert (m(x) - merged(x)).abs().max() < 1e-4
    assert models.method_modules(merged) == []
    assert not hasattr(merged, "arc")
    assert all(isinstance(b.attn_in, nn.Identity) and isinstance(b.mlp_in, nn.Identity) for b in merged.blocks)
    # the original is untouched and still adapted
    assert isinstance(m.blocks[0].attn_in, ARCAdapter)


def test_recomposed_matrix_symmetric_and_merge_equals_float64_product():
    torch.manual_seed(0)
    m = _micro("arc")
    _randomise(m)
    blk = m.blocks[1]
    U = blk.attn_in.u.detach().double().numpy()
    lam = blk.attn_in.scale.detach().double().numpy()
    b = blk.attn_in.bias.detach().double().numpy()
    A_np = np.eye(64) + U @ np.diag(lam) @ U.T  # I + U·diag(λ)·Uᵀ
    A = blk.attn_in.matrix().detach().double().numpy()
    assert np.allclose(A, A.T, atol=1e-7) and np.allclose(A, A_np, atol=1e-6)
    merged = models.merge(m)
    for name in ("q", "k", "v"):
        lin = getattr(blk.attn, name)
        W, c = lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy()
        new = getattr(merged.blocks[1].attn, name)
        assert np.abs(new.weight.double().numpy() - W @ A_np).max() < 1e-6  # W' = W·A
        assert np.abs(new.bias.double().numpy() - (c + W @ b)).max() < 1e-6  # c' = c + W·b
    W1 = blk.mlp.fc1.weight.detach().double().numpy()
    A1 = np.eye(64) + blk.mlp_in.u.detach().double().numpy() @ np.diag(
        blk.mlp_in.scale.detach().double().numpy()) @ blk.mlp_in.u.detach().double().numpy().T
    assert np.abs(merged.blocks[1].mlp.fc1.weight.double().numpy() - W1 @ A1).max() < 1e-6
    assert torch.equal(merged.blocks[1].mlp.fc2.weight, blk.mlp.fc2.weight)  # fc2 untouched


@pytest.mark.parametrize("method", ["arc", "arc_att"])
def test_three_adamw_steps_train_every_trainable_tensor(method):
    # docs/methods/arc.md §10 "Training actually happens" (guards against the official VTAB filter bug) and the §3
    # gradient order: zero head -> step 1 moves only the head; U_att needs λ_att ≠ 0 -> it first moves at step 3.
    torch.manual_seed(0)
    m = _micro(method).train()
    trainable = {n: p for n, p in m.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    start = {n: p.detach().clone() for n, p in trainable.items()}
    opt = torch.optim.AdamW(trainable.values(), lr=1e-2, weight_decay=0.0)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    moved = []
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
        moved.append({n for n, p in trainable.items() if not torch.equal(p, start[n])})
    assert moved[0] == {"head.weight", "head.bias"}
    assert "arc.u_att" not in moved[1] and "blocks.0.attn_in.scale" in moved[1]
    assert moved[2] == set(trainable)
    assert all(torch.equal(p, frozen[n]) for n, p in m.named_parameters() if not p.requires_grad)


def test_bad_arguments():
    with pytest.raises(ValueError, match="mlp_lambda_init"):
        _micro("arc", mlp_lambda_init="normal")
    with pytest.raises(ValueError, match="mlp_lambda_init"):  # ARC_att has no MLP adapter to initialise
        _micro("arc_att", mlp_lambda_init="zeros")
    with pytest.raises(ValueError, match="dim"):
        _micro("arc", dim=0)
    for bad in (8.0, True):  # a clear error, not torch.empty's TypeError (8.0) or a silent d = 1 (True)
        with pytest.raises(ValueError, match="dim must be an integer"):
            _micro("arc_att", dim=bad)
