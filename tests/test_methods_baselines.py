"""Adapter (BASE-2), AdaptFormer, VPT shallow/deep and SSF (docs/methods/baselines.md §5–8): exact ViT-B/16
counts, init, hook placement, identity at init, VPT token layout, SSF merge equivalence, merge refusals, one optimizer
step moves exactly the trainable tensors, bad kwargs."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from models.methods.adapter import BottleneckAdapter
from models.methods.adaptformer import AdaptFormerBranch
from models.methods.ssf import SSF, SSFLinear
from models.methods.vpt import PromptInsert, PromptReplace, prompt_init_bound

D, N_PATCH, DEPTH = 64, 16, 2  # vit_micro_patch8 at 32 px


def _meta(method, **kw):
    with torch.device("meta"):
        return models.create_model("vit_base_patch16_224", method, num_classes=10, **kw)


def _micro(method, seed=0, **kw):
    torch.manual_seed(seed)
    return models.create_model("vit_micro_patch8", method, num_classes=5, img_size=32, **kw)


def _x(seed=0, b=2):
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _method_params(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")}


# ---------------------------------------------------------------- counts (ViT-B/16, head excluded)

@pytest.mark.parametrize("method,kw,expected", [
    ("adapter", {}, 156_768),
    ("adapter", {"dim": 16}, 12 * (1536 * 16 + 16 + 768)),
    ("adapter", {"dim": 32}, 12 * (1536 * 32 + 32 + 768)),
    ("adapter", {"positions": ("attn", "ffn")}, 2 * 156_768),
    ("adaptformer", {}, 156_768),
    ("adaptformer", {"dim": 64}, 1_189_632),
    ("adapter", {"dim": 64}, 1_189_632),
    ("vpt_shallow", {}, 7_680),
    ("vpt_shallow", {"tokens": 50}, 38_400),
    ("vpt_deep", {}, 92_160),
    ("vpt_deep", {"tokens": 50}, 460_800),
    ("ssf", {}, 205_824)])
def test_vit_b16_counts(method, kw, expected):
    m = _meta(method, **kw)
    assert models.count_parameters(m, head=False) == expected
    assert models.count_parameters(m) - expected == 769 * 10
    # the backbone stays frozen: every trainable non-head tensor belongs to a method module
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert sum(p.numel() for n, p in m.named_parameters() if n in frozen) == 85_798_656


def test_defaults_recorded():
    M = models.METHODS
    assert M["adapter"]().config() == {"dim": 8, "dropout": 0.0, "init": "xavier", "positions": ("ffn",)}
    assert M["adaptformer"]().config() == {"dim": 8, "scale": 0.1, "dropout": 0.0}
    assert M["vpt_shallow"]().config() == M["vpt_deep"]().config() == {"tokens": 10, "dropout": 0.0}
    assert M["ssf"]().config() == {}
    for name in ("adapter", "adaptformer", "vpt_shallow", "vpt_deep"):
        assert not M[name].mergeable
    assert M["ssf"].mergeable


# ---------------------------------------------------------------- placement and init

def test_adapter_placement_and_noah_init():
    m = _micro("adapter")
    for blk in m.blocks:
        assert isinstance(blk.mlp_out, BottleneckAdapter) and isinstance(blk.attn_out, nn.Identity)
        assert blk.mlp_parallel is None
    a = m.blocks[0].mlp_out
    assert a.down.weight.shape == (8, D) and a.up.weight.shape == (D, 8)
    bound = math.sqrt(6 / (D + 8))  # xavier_uniform_
    for lin in (a.down, a.up):
        assert 0.7 * bound < lin.weight.abs().max() <= bound
        assert 0 < lin.bias.abs().max() < 1e-5  # N(0, (1e-6)²)
    z = torch.linspace(-4, 4, 9)
    assert torch.allclose(a.act(z), z * torch.sigmoid(1.702 * z))  # QuickGELU
    h = torch.randn(2, 5, D)
    assert torch.allclose(a(h), h + F.linear(a.act(F.linear(h, a.down.weight, a.down.bias)), a.up.weight, a.up.bias))
    houlsby = _micro("adapter", positions=("attn", "ffn"))
    assert all(isinstance(b.attn_out, BottleneckAdapter) and isinstance(b.mlp_out, BottleneckAdapter)
               for b in houlsby.blocks)


class _DropAll(torch.nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


def test_adapter_sits_after_the_mlp_before_the_residual():
    """Block output == x' + Adapter(MLP(LN2(x'))) with x' = x + Attn(LN1(x)), computed by hand."""
    m = _micro("adapter").eval()
    blk = m.blocks[0]
    x = torch.randn(2, 1 + N_PATCH, D)
    x1 = x + blk.attn(blk.norm1(x))
    ref = x1 + blk.mlp_out(blk.mlp(blk.norm2(x1)))
    assert torch.allclose(blk(x), ref, atol=1e-6)
    # and the adapter really is active (not the identity) at NOAH init
    assert not torch.allclose(blk.mlp_out(ref), ref, atol=1e-4)
    # x + Adapter(DropPath(MLP)), not x + DropPath(Adapter(MLP)): a dropped sample still gets Adapter(0), which is
    # W_up·act(b_down) + b_up ≠ 0 (biases made visible here)
    with torch.no_grad():
        blk.mlp_out.down.bias.fill_(1.0)
        blk.mlp_out.up.bias.fill_(0.5)
    blk.drop_path2 = _DropAll()  # stochastic depth that drops every sample
    dropped = x1 + blk.mlp_out(torch.zeros_like(x1))
    assert torch.allclose(blk(x), dropped, atol=1e-6) and not torch.allclose(dropped, x1, atol=1e-2)


def test_adaptformer_placement_and_init():
    m = _micro("adaptformer", dim=4).eval()
    blk = m.blocks[0]
    br = blk.mlp_parallel
    assert isinstance(br, AdaptFormerBranch) and isinstance(blk.mlp_out, nn.Identity)
    assert br.scale == 0.1 and br.down.weight.shape == (4, D)
    bound = 1 / math.sqrt(D)  # kaiming_uniform(a=√5)
    assert 0.7 * bound < br.down.weight.abs().max() <= bound
    for t in (br.down.bias, br.up.weight, br.up.bias):
        assert torch.equal(t, torch.zeros_like(t))
    # reads the residual stream after attention, not LN2's output: x ← x1 + MLP(LN2(x1)) + s·up(ReLU(down(x1)))
    with torch.no_grad():
        br.up.weight.normal_()
        br.up.bias.normal_()
    x = torch.randn(2, 1 + N_PATCH, D)
    x1 = x + blk.attn(blk.norm1(x))
    ref = x1 + blk.mlp(blk.norm2(x1)) + 0.1 * br.up(torch.relu(br.down(x1)))
    assert torch.allclose(blk(x), ref, atol=1e-5)


@pytest.mark.parametrize("method,kw", [("adaptformer", {}), ("adaptformer", {"dim": 64, "dropout": 0.2}),
                                       ("adapter", {"init": "zero_up"}),
                                       ("adapter", {"init": "zero_up", "positions": ("attn", "ffn")})])
def test_identity_at_init_bit_for_bit(method, kw):
    plain = _micro("linear").eval()
    m = _micro(method, **kw)
    missing, unexpected = m.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".mlp_" in k or ".attn_out." in k for k in missing)
    x = _x()
    with torch.no_grad():
        assert torch.equal(m.eval()(x), plain(x))
        m.train()  # dropout inside a zero branch changes nothing either
        assert torch.equal(m(x), plain.train()(x))


def test_noah_adapter_is_not_identity_at_init():
    plain = _micro("linear").eval()
    m = _micro("adapter").eval()
    m.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        assert not torch.allclose(m(_x()), plain(_x()), atol=1e-5)


def test_vpt_init_bound():
    assert prompt_init_bound(_meta("vpt_shallow")) == 0.0625
    m = _micro("vpt_deep", tokens=50)
    v = math.sqrt(6 / (3 * 8 * 8 + D))
    assert prompt_init_bound(m) == pytest.approx(v)
    for blk in m.blocks:
        p = blk.tokens_in.prompt
        assert p.shape == (1, 50, D) and 0.9 * v < p.abs().max() <= v


def _tokens_seen(model, x):
    """Per block: the tokens after ``tokens_in`` (what attention sees) and the block output."""
    seen = []
    hooks = [blk.norm1.register_forward_hook(lambda mod, inp, out, i=i: seen.append(("in", i, inp[0].clone())))
             for i, blk in enumerate(model.blocks)]
    hooks += [blk.register_forward_hook(lambda mod, inp, out, i=i: seen.append(("out", i, out.clone())))
              for i, blk in enumerate(model.blocks)]
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    ins = [t for kind, _, t in seen if kind == "in"]
    outs = [t for kind, _, t in seen if kind == "out"]
    return ins, outs, logits


@pytest.mark.parametrize("method", ["vpt_shallow", "vpt_deep"])
def test_vpt_token_layout(method):
    p = 3
    m = _micro(method, tokens=p).eval()
    assert isinstance(m.blocks[0].tokens_in, PromptInsert)
    later = PromptReplace if method == "vpt_deep" else nn.Identity
    assert all(isinstance(b.tokens_in, later) for b in m.blocks[1:])
    x = _x()
    ins, outs, logits = _tokens_seen(m, x)
    for t in ins + outs:  # 1 + p + N inside every block, never accumulating
        assert t.shape == (2, 1 + p + N_PATCH, D)
    # block 0: [cls + pos, prompts (no pos), patches + pos]
    with torch.no_grad():
        emb = m.embed_hook(m.patch_embed(x))
        emb = torch.cat([m.cls_token.expand(2, -1, -1), emb], 1) + m.pos_embed
    assert torch.equal(ins[0][:, :1], emb[:, :1]) and torch.equal(ins[0][:, 1 + p:], emb[:, 1:])
    assert torch.equal(ins[0][:, 1:1 + p], m.blocks[0].tokens_in.prompt.expand(2, -1, -1))
    for i in range(1, DEPTH):
        assert torch.equal(ins[i][:, :1], outs[i - 1][:, :1]) and torch.equal(ins[i][:, 1 + p:], outs[i - 1][:, 1 + p:])
        if method == "vpt_deep":  # replaced by this block's own prompts
            assert torch.equal(ins[i][:, 1:1 + p], m.blocks[i].tokens_in.prompt.expand(2, -1, -1))
            assert not torch.allclose(ins[i][:, 1:1 + p], outs[i - 1][:, 1:1 + p])
        else:  # carried along
            assert torch.equal(ins[i][:, 1:1 + p], outs[i - 1][:, 1:1 + p])
    # the head reads the cls token (token 0) of the final-normed sequence
    with torch.no_grad():
        ref = m.head(m.norm(outs[-1])[:, 0])
    assert torch.allclose(logits, ref, atol=1e-6)


@pytest.mark.parametrize("method", ["vpt_shallow", "vpt_deep"])
def test_vpt_output_depends_on_every_prompt_set(method):
    m = _micro(method, tokens=2).eval()
    x = _x()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        base = m(x)
        for blk in m.blocks:
            if isinstance(blk.tokens_in, nn.Identity):
                continue
            old = blk.tokens_in.prompt.clone()
            blk.tokens_in.prompt.add_(torch.randn(old.shape, generator=g))  # not a constant: LN1 removes those
            assert (m(x) - base).abs().max() > 1e-4
            blk.tokens_in.prompt.copy_(old)
        assert torch.equal(m(x), base)


def test_vpt_prompt_dropout():
    m = _micro("vpt_shallow", tokens=40, dropout=0.5)
    ins, _, _ = _tokens_seen(m.train(), _x())
    prompts = ins[0][:, 1:41]
    assert 0.3 < (prompts == 0).float().mean() < 0.7  # dropped in training
    ins, _, _ = _tokens_seen(m.eval(), _x())
    assert torch.equal(ins[0][:, 1:41], m.blocks[0].tokens_in.prompt.expand(2, -1, -1))


def test_ssf_placement_and_init():
    m = _micro("ssf")
    assert isinstance(m.embed_hook, SSF) and isinstance(m.norm_hook, SSF)
    for blk in m.blocks:
        assert isinstance(blk.attn_in, SSF) and isinstance(blk.mlp_in, SSF)
        for lin in (blk.attn.q, blk.attn.k, blk.attn.v, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
            assert isinstance(lin, SSFLinear) and type(lin.base) is nn.Linear
            assert lin.ssf.scale.shape == (lin.out_features,) and lin.weight is lin.base.weight
        assert blk.mlp.fc1.out_features == 4 * D
    # γ ~ N(1, .02²), β ~ N(0, .02²): pooled over the micro model's 1,536 SSF channels
    big = _meta("ssf")
    assert big.blocks[0].mlp.fc1.ssf.scale.shape == (3072,)
    g = torch.cat([mod.scale for mod in _micro("ssf", seed=3).modules() if isinstance(mod, SSF)])
    b = torch.cat([mod.shift for mod in _micro("ssf", seed=3).modules() if isinstance(mod, SSF)])
    assert abs(g.mean() - 1) < 0.005 and abs(g.std() - 0.02) < 0.003
    assert abs(b.mean()) < 0.005 and abs(b.std() - 0.02) < 0.003
    lin = m.blocks[0].mlp.fc1
    x = torch.randn(3, D)
    assert torch.allclose(lin(x), lin.base(x) * lin.ssf.scale + lin.ssf.shift)


# ---------------------------------------------------------------- merge

def _randomise_ssf(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, SSF):
                mod.scale.copy_(1 + 0.5 * torch.randn(mod.scale.shape, generator=g))
                mod.shift.copy_(0.5 * torch.randn(mod.shift.shape, generator=g))


def test_ssf_merge_equivalence():
    m = _micro("ssf")
    _randomise_ssf(m)
    m.eval()
    x = _x(b=4)
    merged = models.merge(m)
    assert models.method_modules(merged) == []
    assert isinstance(merged.embed_hook, nn.Identity) and isinstance(merged.norm_hook, nn.Identity)
    for blk in merged.blocks:
        assert isinstance(blk.attn_in, nn.Identity) and isinstance(blk.mlp_in, nn.Identity)
        assert all(type(getattr(blk.attn, t)) is nn.Linear for t in ("q", "k", "v", "proj"))
        assert type(blk.mlp.fc1) is nn.Linear and type(blk.mlp.fc2) is nn.Linear
    with torch.no_grad():
        out, ref = merged.eval()(x), m(x)
    assert (out - ref).abs().max() < 1e-4
    assert (ref - _micro("linear")(x)).abs().max() > 1e-2  # the SSFs were doing something
    # the input model is untouched, and the merged model loads into a fresh plain ViT
    assert isinstance(m.embed_hook, SSF)
    plain = _micro("linear").eval()
    plain.load_state_dict(merged.state_dict())
    with torch.no_grad():
        assert torch.equal(plain(x), out)


def test_ssf_merge_in_place_is_idempotent():
    m = _micro("ssf")
    _randomise_ssf(m, seed=2)
    m.eval()
    x = _x()
    with torch.no_grad():
        ref = m(x)
    models.merge(m, inplace=True)
    m.method = models.METHODS["ssf"]()
    models.merge(m, inplace=True)  # nothing left to fold: unchanged
    with torch.no_grad():
        assert (m(x) - ref).abs().max() < 1e-4


@pytest.mark.parametrize("method", ["adapter", "adaptformer", "vpt_shallow", "vpt_deep"])
def test_merge_refused(method):
    with pytest.raises(ValueError, match="cannot be merged"):
        models.merge(_micro(method))


# ---------------------------------------------------------------- training step

@pytest.mark.parametrize("method,kw", [
    ("adapter", {}), ("adapter", {"init": "zero_up", "positions": ("attn", "ffn")}), ("adaptformer", {}),
    ("vpt_shallow", {"tokens": 3}), ("vpt_deep", {"tokens": 3}), ("ssf", {})])
def test_two_steps_move_every_trainable_tensor_and_nothing_frozen(method, kw):
    """Zero-initialised up-projections block the gradient to the down-projection at step 1, so take two steps."""
    m = _micro(method, **kw).train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable - {"head.weight", "head.bias"} == set(_method_params(m))
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    x, y = _x(b=4), torch.tensor([0, 1, 2, 3])
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(m(x), y).backward()
        opt.step()
    after = m.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        moved = not torch.equal(before[k], after[k])
        assert moved == (k in trainable), f"{k}: moved={moved}, trainable={k in trainable}"


def test_adaptformer_first_step_moves_up_only():
    m = _micro("adaptformer").train()
    F.cross_entropy(m(_x(b=4)), torch.tensor([0, 1, 2, 3])).backward()
    for blk in m.blocks:
        br = blk.mlp_parallel
        assert br.up.weight.grad.abs().max() > 0 and br.up.bias.grad.abs().max() > 0
        assert not br.down.weight.grad.any()  # W_up = 0 at init


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("method,kw,match", [
    ("adapter", {"dim": 0}, "dim"), ("adapter", {"dim": 2.5}, "dim"), ("adapter", {"dim": True}, "dim"),
    ("adapter", {"dropout": 1.0}, "dropout"), ("adapter", {"dropout": -0.1}, "dropout"),
    ("adapter", {"init": "zeros"}, "init"), ("adapter", {"positions": ("mlp",)}, "positions"),
    ("adapter", {"positions": ()}, "positions"), ("adapter", {"positions": ("ffn", "ffn")}, "positions"),
    ("adapter", {"rank": 8}, "Valid arguments"),
    ("adaptformer", {"dim": -1}, "dim"), ("adaptformer", {"scale": "0.1"}, "scale"),
    ("adaptformer", {"scale": float("nan")}, "scale"), ("adaptformer", {"dropout": 1.5}, "dropout"),
    ("vpt_shallow", {"tokens": 0}, "tokens"), ("vpt_deep", {"tokens": 1.0}, "tokens"),
    ("vpt_deep", {"dropout": 1.0}, "dropout"), ("vpt_shallow", {"prompts": 10}, "Valid arguments"),
    ("ssf", {"dim": 8}, "ssf")])
def test_bad_kwargs_raise_value_error(method, kw, match):
    with pytest.raises(ValueError, match=match):
        models.create_model("vit_micro_patch8", method, num_classes=5, img_size=32, **kw)


def test_second_method_on_the_same_hook_is_refused():
    m = _micro("adapter")
    with pytest.raises(ValueError, match="already in use"):
        models.METHODS["adapter"]().install(m)
    m = _micro("ssf")
    with pytest.raises(ValueError, match="already"):
        models.METHODS["ssf"]().install(m)
    m = _micro("vpt_deep")
    with pytest.raises(ValueError, match="already in use"):
        models.METHODS["vpt_shallow"]().install(m)
    m = _micro("adaptformer")
    with pytest.raises(ValueError, match="already in use"):
        models.METHODS["adaptformer"]().install(m)
