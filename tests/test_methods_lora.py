"""LoRA (docs/methods/baselines.md §4, BASE-1): counts, the shared-A qkv branch, identity at init, gradients of A and B,
merge equivalence, bad kwargs."""
import pytest
import torch
import torch.nn.functional as F

import models
from models.methods.lora import LoRALinear, LoRAQKV


def _meta(method="lora", **kw):
    with torch.device("meta"):
        return models.create_model("vit_base_patch16_224", method, num_classes=10, **kw)


def _micro(method="lora", seed=0, **kw):
    torch.manual_seed(seed)
    return models.create_model("vit_micro_patch8", method, num_classes=5, img_size=32, **kw)


def _randomise_up(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".up"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("method,kw,expected", [
    ("lora", {}, 294_912), ("lora_qv", {}, 294_912),
    ("lora", {"rank": 4}, 36_864 * 4), ("lora_qv", {"rank": 16}, 36_864 * 16),
    # shared A for q/k/v plus its own A, B on proj: 12·(768·8 + 3·768·8 + 2·768·8)
    ("lora", {"targets": ("q", "k", "v", "proj")}, 12 * 768 * 8 * 6),
    ("lora", {"targets": ("fc1",)}, 12 * 8 * (768 + 3072)),
    ("lora", {"shared": False}, 12 * 3 * 8 * 1536)])
def test_vit_b16_counts(method, kw, expected):
    m = _meta(method, **kw)
    assert models.count_parameters(m, head=False) == expected
    assert models.count_parameters(m) - expected == 769 * 10


def test_default_is_noah_shared_a_on_the_qkv_branch():
    m = _micro()
    for blk in m.blocks:
        br = blk.attn.qkv_branch
        assert isinstance(br, LoRAQKV) and br.down.shape == (8, 64) and br.up.shape == (3 * 64, 8)
        assert all(type(getattr(blk.attn, t)) is torch.nn.Linear for t in ("q", "k", "v", "proj"))
    assert models.METHODS["lora"]().config() == {"rank": 8, "targets": ("q", "k", "v"), "shared": True,
                                                 "dropout": 0.0}
    qv = _micro("lora_qv")
    assert models.METHODS["lora_qv"]().config() == {"rank": 8, "targets": ("q", "v"), "shared": False,
                                                    "dropout": 0.0}
    for blk in qv.blocks:
        assert blk.attn.qkv_branch is None and type(blk.attn.k) is torch.nn.Linear
        assert isinstance(blk.attn.q, LoRALinear) and isinstance(blk.attn.v, LoRALinear)
        assert blk.attn.q.down is not blk.attn.v.down


def test_init_kaiming_a_zero_b():
    m = _micro()
    br = m.blocks[0].attn.qkv_branch
    bound = 1 / 64 ** 0.5
    assert torch.equal(br.up, torch.zeros_like(br.up))
    assert 0.8 * bound < br.down.abs().max() <= bound


def test_qkv_branch_equals_per_target_delta_weight():
    m = _micro(targets=("q", "v"))
    _randomise_up(m)
    attn = m.blocks[0].attn
    x = torch.randn(2, 17, 64)
    dq, dk, dv = attn.qkv_branch(x)
    assert dk is None
    A, B = attn.qkv_branch.down, attn.qkv_branch.up
    assert torch.allclose(dq, x @ A.t() @ B[:64].t(), atol=1e-6)
    assert torch.allclose(dv, x @ A.t() @ B[64:].t(), atol=1e-6)
    for t, dt in (("q", dq), ("v", dv)):
        lin = getattr(attn, t)
        assert attn.qkv_branch.delta_weight(t).shape == (64, 64)
        assert torch.allclose(lin(x) + dt, F.linear(x, lin.weight + attn.qkv_branch.delta_weight(t), lin.bias),
                              atol=1e-5)


@pytest.mark.parametrize("method,kw", [("lora", {}), ("lora_qv", {}), ("lora", {"targets": ("q", "k", "v", "fc2")})])
def test_identity_at_init_bit_for_bit(method, kw):
    frozen, m = _micro("linear"), _micro(method, **kw)
    m.head.load_state_dict(frozen.head.state_dict())  # both trunc-normal from the same seed anyway
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(m.eval()(x), frozen.eval()(x))


@pytest.mark.parametrize("method,kw", [("lora", {}), ("lora_qv", {}), ("lora", {"targets": ("q", "v", "proj")})])
def test_gradients_reach_every_target_and_two_steps_move_every_tensor(method, kw):
    m = _micro(method, **kw).train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 5, (6,))
    start = {n: p.detach().clone() for n, p in m.state_dict().items()}

    opt.zero_grad()
    F.cross_entropy(m(x), y).backward()
    # guard against the zero-A-and-B bug: for EVERY target the pair (A, B) has a non-zero gradient (B's, at step 1)
    n_targets = 0
    for blk in m.blocks:
        br = blk.attn.qkv_branch
        if br is not None:
            for i, t in enumerate(br.targets):
                n_targets += 1
                assert torch.count_nonzero(br.up.grad[i * 64:(i + 1) * 64]) > 0, t
        for lin in (blk.attn.q, blk.attn.k, blk.attn.v, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
            if isinstance(lin, LoRALinear):
                n_targets += 1
                assert torch.count_nonzero(lin.up.grad) > 0
                assert torch.count_nonzero(lin.down.grad) == 0  # ∂L/∂A = 0 while B = 0
    assert n_targets == 2 * len(m.method.targets)
    opt.step()
    opt.zero_grad()
    F.cross_entropy(m(x), y).backward()
    opt.step()
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    for n, p in m.state_dict().items():  # full state-dict compare
        assert torch.equal(p, start[n]) != (n in trainable), n


def test_dropout_on_branch_input():
    m = _micro(dropout=0.5)
    _randomise_up(m)
    x = torch.randn(2, 3, 32, 32)
    m.train()
    torch.manual_seed(0)
    a = m(x)
    m.eval()
    e = m(x)
    assert not torch.allclose(a, e)
    m2 = _micro(dropout=0.0)
    _randomise_up(m2)
    assert torch.equal(e, m2.eval()(x))  # eval: dropout is the identity


@pytest.mark.parametrize("method,kw", [("lora", {}), ("lora_qv", {}),
                                       ("lora", {"targets": ("q", "k", "v", "proj", "fc1", "fc2"), "rank": 2})])
def test_merge_equivalence(method, kw):
    m = _micro(method, **kw)
    _randomise_up(m)
    x = torch.randn(4, 3, 32, 32)
    m.eval()
    merged = models.merge(m)
    out = m(x)
    assert (out - merged(x)).abs().max() < 1e-4
    assert (out - _micro("linear")(x)).abs().max() > 1e-3  # the branch was active
    assert models.method_modules(merged) == []
    assert all(b.attn.qkv_branch is None for b in merged.blocks)
    m.method.merge(merged)  # idempotent on an already merged model
    assert torch.allclose(merged(x), out, atol=1e-4)


@pytest.mark.parametrize("method,kw,match", [
    ("lora", {"rank": 0}, "rank"), ("lora", {"rank": -1}, "rank"), ("lora_qv", {"targets": ("q", "o")}, "targets"),
    ("lora", {"dropout": -0.1}, "dropout"), ("lora", {"targets": ("q", "q")}, "twice")])
def test_bad_kwargs_raise_value_error(method, kw, match):
    with pytest.raises(ValueError, match=match):
        models.create_model("vit_micro_patch8", method, num_classes=2, img_size=32, **kw)
