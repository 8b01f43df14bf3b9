"""Official ARC / SNELL checkpoint layouts -> our models: the converted model computes what the official one does.

The official models are re-stated here as small functional forwards written from the equations of
(docs/methods/arc.md §2, docs/methods/snell.md §2–4), reading the official key layouts directly.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import models
from models.convert import from_official_arc, from_official_snell, model_args

D, L, HEADS, PATCH, IMG, HIDDEN, C = 64, 2, 2, 8, 32, 256, 7  # vit_micro_patch8 at 32 px
TOKENS = (IMG // PATCH) ** 2 + 1


def _t(*shape, std=0.05, g):
    return torch.randn(*shape, generator=g) * std


def _ln(prefix, g):
    return {f"{prefix}.weight": 1 + _t(D, std=0.1, g=g), f"{prefix}.bias": _t(D, g=g)}


def _linear(prefix, n_out, n_in, g):
    return {f"{prefix}.weight": _t(n_out, n_in, g=g), f"{prefix}.bias": _t(n_out, g=g)}


def _attention(q, k, v):
    B, N, _ = q.shape
    q, k, v = (z.view(B, N, HEADS, D // HEADS).transpose(1, 2) for z in (q, k, v))
    att = (q @ k.transpose(-2, -1) / math.sqrt(D // HEADS)).softmax(-1)
    return (att @ v).transpose(1, 2).reshape(B, N, D)


def _lin(sd, prefix, x):
    return F.linear(x, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"])


def _ln_apply(sd, prefix, x):
    return F.layer_norm(x, (D,), sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps=1e-6)


# ---------------------------------------------------------------------------------------------------------- ARC


def official_arc_state_dict(variant="arc", d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {"embedding.cls": _t(1, 1, D, g=g), "embedding.position_embedding": _t(1, TOKENS, D, g=g),
          "embedding.projective.weight": _t(D, 3, PATCH, PATCH, g=g), "embedding.projective.bias": _t(D, g=g),
          "transformer.att_down_projection": _t(D, d, std=0.3, g=g)}
    if variant == "arc":
        sd["transformer.mlp_down_projection"] = _t(D, d, std=0.3, g=g)
    for i in range(L):
        p = f"transformer.layer.{i}."
        for name in ("query", "key", "value", "projective"):
            sd.update(_linear(p + f"attention.{name}", D, D, g))
        sd.update(_linear(p + "mlp.fc1", HIDDEN, D, g))
        sd.update(_linear(p + "mlp.fc2", D, HIDDEN, g))
        sd.update(_ln(p + "att_layer_norm", g))
        sd.update(_ln(p + "fnn_layer_norm", g))
        for pos in ("att", "mlp") if variant == "arc" else ("att",):
            sd[p + f"{pos}_adapter.adapter_rescale"] = _t(1, d, std=0.5, g=g)
            sd[p + f"{pos}_adapter.adapter_bias"] = _t(D, g=g)
    sd.update(_ln("transformer.layer_norm", g))
    sd.update(_linear("head_mlp.head", C, D, g))
    return sd


def official_arc_forward(sd, x):
    """ARC_ViT in eval mode: x <- x + MHA(ARC_att(LN1 x)); x <- x + MLP(ARC_mlp(LN2 x)), ARC(h) = h + (h·U⊙λ)·Uᵀ + b."""

    def adapter(h, u, prefix):
        if prefix + ".adapter_rescale" not in sd:
            return h
        return h + (h @ (u * sd[prefix + ".adapter_rescale"])) @ u.t() + sd[prefix + ".adapter_bias"]

    t = F.conv2d(x, sd["embedding.projective.weight"], sd["embedding.projective.bias"], stride=PATCH)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat([sd["embedding.cls"].expand(len(t), -1, -1), t], 1) + sd["embedding.position_embedding"]
    for i in range(L):
        p = f"transformer.layer.{i}."
        h = adapter(_ln_apply(sd, p + "att_layer_norm", t), sd["transformer.att_down_projection"], p + "att_adapter")
        o = _attention(*(_lin(sd, p + f"attention.{n}", h) for n in ("query", "key", "value")))
        t = t + _lin(sd, p + "attention.projective", o)
        h = adapter(_ln_apply(sd, p + "fnn_layer_norm", t), sd.get("transformer.mlp_down_projection"),
                    p + "mlp_adapter")
        t = t + _lin(sd, p + "mlp.fc2", F.gelu(_lin(sd, p + "mlp.fc1", h)))
    return _lin(sd, "head_mlp.head", _ln_apply(sd, "transformer.layer_norm", t)[:, 0])


@pytest.mark.parametrize("variant", ["arc", "arc_att"])
def test_arc_converted_model_matches_official_forward(variant):
    off = official_arc_state_dict(variant)
    sd = from_official_arc(off, variant=variant)
    args = model_args(sd)
    assert args == dict(arch="vit_micro_patch8", num_classes=C, img_size=IMG, dim=6)
    model = models.create_model(method=variant, **args).eval()
    model.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = official_arc_forward(off, x)
        out = model(x)
        assert (out - ref).abs().max() < 1e-5
        assert ref.abs().max() > 0.05  # a non-trivial output
        assert (models.merge(model)(x) - ref).abs().max() < 1e-5


def test_arc_conversion_errors():
    off = official_arc_state_dict("arc")
    with pytest.raises(ValueError, match="not part of a DavidYanAnDe/ARC checkpoint: transformer.extra"):
        from_official_arc({**off, "transformer.extra": torch.zeros(1)})
    missing = dict(off)
    del missing["transformer.layer.1.attention.key.bias"]
    with pytest.raises(ValueError, match="missing blocks.1.attn.k.bias"):
        from_official_arc(missing)
    with pytest.raises(ValueError, match="variant='arc'"):
        from_official_arc(off, variant="arc_att")
    with pytest.raises(ValueError, match="it is an 'arc_att' checkpoint.*--variant arc_att"):
        from_official_arc(official_arc_state_dict("arc_att"), variant="arc")
    bad = {**off, "transformer.layer.0.att_adapter.adapter_bias": torch.zeros(D + 1)}
    with pytest.raises(ValueError, match="wrong shape.*blocks.0.attn_in.bias"):
        from_official_arc(bad)
    with pytest.raises(ValueError, match="variant"):
        from_official_arc(off, variant="ARC")
    wrapped = from_official_arc({"model": off, "optimizer": {}})  # a training checkpoint
    assert set(wrapped) == set(from_official_arc(off))
    ddp = from_official_arc({"state_dict": {f"module.{k}": v for k, v in off.items()}})  # saved from a DDP wrapper
    assert set(ddp) == set(from_official_arc(off))


# -------------------------------------------------------------------------------------------------------- SNELL


def official_snell_state_dict(rank=4, klora_1=False, seed=0, coeff=(0.1, -0.1)):
    """``klora_1``: the factor names of ``KLoRA`` (s = 0) in older commits; today KLoRA and SNELL both say In_Qs."""
    g = torch.Generator().manual_seed(seed)
    a_name, b_name = ("In_Qs_1", "Out_Qs_1") if klora_1 else ("In_Qs", "Out_Qs")
    sd = {"cls_token": _t(1, 1, D, g=g), "pos_embed": _t(1, TOKENS, D, g=g),
          "patch_embed.proj.weight": _t(D, 3, PATCH, PATCH, g=g), "patch_embed.proj.bias": _t(D, g=g)}
    shapes = {"q": (D, D), "k": (D, D), "v": (D, D), "proj": (D, D), "fc1": (D, HIDDEN), "fc2": (HIDDEN, D)}
    for i in range(L):
        sd.update(_ln(f"blocks.{i}.norm1", g))
        sd.update(_ln(f"blocks.{i}.norm2", g))
        for name, (n_in, n_out) in shapes.items():
            owner = "mlp" if name.startswith("fc") else "attn"
            sd.update(_linear(f"blocks.{i}.{owner}.{name}", n_out, n_in, g))
            p = f"blocks.{i}.{owner}.additional_{name}.learnable."
            sd[p + a_name] = _t(2, n_in, rank // 2, std=1.0, g=g)
            sd[p + b_name] = _t(2, n_out, rank // 2, std=1.0, g=g)
            sd[p + "shared_coeff_fc"] = torch.tensor(coeff).view(2, 1, 1)
    sd.update(_ln("norm", g))
    sd.update(_linear("head", C, D, g))
    return sd


def official_snell_forward(sd, x, sparsity):
    """VisionTransformerSNELL in eval mode: every linear y = x·Wᵀ + c + x·Kˢ, Kˢ from In_Qs/Out_Qs
    (docs/methods/snell.md §2–3)."""

    def k_sparse(prefix):
        a = sd.get(prefix + "In_Qs", sd.get(prefix + "In_Qs_1"))
        b = sd.get(prefix + "Out_Qs", sd.get(prefix + "Out_Qs_1"))
        coeff = sd[prefix + "shared_coeff_fc"]
        k = (coeff * torch.cdist(a, b)).sum(0)
        if sparsity == 0:
            return k
        t = torch.quantile(k.abs().flatten(), sparsity)
        return k * k.abs() * (k.abs() > t)

    def lin(i, owner, name, h):
        return _lin(sd, f"blocks.{i}.{owner}.{name}", h) + h @ k_sparse(f"blocks.{i}.{owner}.additional_{name}.learnable.")

    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=PATCH).flatten(2).transpose(1, 2)
    t = torch.cat([sd["cls_token"].expand(len(t), -1, -1), t], 1) + sd["pos_embed"]
    for i in range(L):
        h = _ln_apply(sd, f"blocks.{i}.norm1", t)
        t = t + lin(i, "attn", "proj", _attention(*(lin(i, "attn", n, h) for n in ("q", "k", "v"))))
        h = _ln_apply(sd, f"blocks.{i}.norm2", t)
        t = t + lin(i, "mlp", "fc2", F.gelu(lin(i, "mlp", "fc1", h)))
    return _lin(sd, "head", _ln_apply(sd, "norm", t)[:, 0])


@pytest.mark.parametrize("sparsity,klora_1", [(0.9, False), (0.0, False), (0.0, True)])
def test_snell_converted_model_matches_official_forward(sparsity, klora_1):
    off = official_snell_state_dict(rank=4, klora_1=klora_1)
    sd = from_official_snell(off, rank=4, sparsity=sparsity)
    args = model_args(sd)
    assert args == dict(arch="vit_micro_patch8", num_classes=C, img_size=IMG, rank=4)
    model = models.create_model(method="snell", sparsity=sparsity, **args).eval()
    model.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = official_snell_forward(off, x, sparsity)
        plain = official_snell_forward({k: v for k, v in off.items() if "additional" not in k or "coeff" in k}
                                       | {k: torch.zeros_like(v) for k, v in off.items() if "Qs" in k}, x, 0.0)
        assert (model(x) - ref).abs().max() < 1e-5
        assert (ref - plain).abs().max() > 1e-3  # the SNELL branches matter in this comparison


def test_snell_conversion_errors():
    off = official_snell_state_dict()
    with pytest.raises(ValueError, match="fixed"):
        from_official_snell(official_snell_state_dict(coeff=(0.2, -0.1)), rank=4)
    with pytest.raises(ValueError, match="rank 4"):
        from_official_snell(off, rank=8)
    with pytest.raises(ValueError, match="older KLoRA factors.*sparsity=0.9: pass sparsity=0"):
        from_official_snell(official_snell_state_dict(klora_1=True), rank=4, sparsity=0.9)
    mixed = {(k + "_1" if "additional_fc1" in k and k.endswith("Qs") else k): v for k, v in off.items()}
    with pytest.raises(ValueError, match="mixes the older KLoRA names"):
        from_official_snell(mixed, rank=4, sparsity=0.0)
    with pytest.raises(ValueError, match="not part of a ssfgunner/SNELL checkpoint: blocks.0.attn.qkv.weight"):
        from_official_snell({**off, "blocks.0.attn.qkv.weight": torch.zeros(3 * D, D)}, rank=4)
    missing = {k: v for k, v in off.items() if "additional_fc2.learnable.Out_Qs" not in k}
    with pytest.raises(ValueError, match="missing blocks.0.mlp.fc2.B"):
        from_official_snell(missing, rank=4)
    no_coeff = {k: v for k, v in off.items() if not k.endswith("shared_coeff_fc")}  # optional
    assert set(from_official_snell(no_coeff, rank=4)) == set(from_official_snell(off, rank=4))


def test_snell_klora_checkpoint_converts_under_both_namings():
    # s = 0 (KLoRA): today's official code names the factors In_Qs/Out_Qs like SNELL (s > 0), so the sparsity comes
    # from the caller; older commits named them In_Qs_1/Out_Qs_1. Both give the same dense-K (unsparsified) model.
    x = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    current, older = official_snell_state_dict(rank=4), official_snell_state_dict(rank=4, klora_1=True)
    assert any(k.endswith(".In_Qs") for k in current) and any(k.endswith(".In_Qs_1") for k in older)
    converted = [from_official_snell(off, rank=4, sparsity=0.0) for off in (current, older)]
    assert converted[0].keys() == converted[1].keys()
    assert all(torch.equal(converted[0][k], converted[1][k]) for k in converted[0])
    ref = official_snell_forward(current, x, 0.0)  # KLoRA: y = x·Wᵀ + c + x·K, K = Σ_h α_h cdist(A_h, B_h), dense
    for sd in converted:
        model = models.create_model(method="snell", sparsity=0.0, **model_args(sd)).eval()
        model.load_state_dict(sd, strict=True)
        with torch.no_grad():
            assert (model(x) - ref).abs().max() < 1e-5
    sparse = models.create_model(method="snell", sparsity=0.9, **model_args(converted[0])).eval()
    sparse.load_state_dict(from_official_snell(current, rank=4, sparsity=0.9), strict=True)
    with torch.no_grad():
        assert (sparse(x) - ref).abs().max() > 1e-3  # the caller's sparsity decides which model the file is


def test_model_args_rejects_unknown_architectures():
    sd = from_official_snell(official_snell_state_dict(), rank=4)
    wide = dict(sd, pos_embed=torch.zeros(1, TOKENS, 96))
    with pytest.raises(ValueError, match="no known architecture has width 96"):
        model_args(wide)
    with pytest.raises(ValueError, match="square"):
        model_args(dict(sd, pos_embed=torch.zeros(1, TOKENS + 1, D)))


# -------------------------------------------------------------------------------------------------- eval.py


def test_eval_py_reads_an_official_checkpoints_shapes_and_refuses_contradicting_flags(tmp_path, monkeypatch, capsys):
    # eval.py --checkpoint: arch, input size, ARC's d and variant, SNELL's rank come from the checkpoint (an ARC
    # checkpoint with d = 6 used to be built with d = 50 and crash); SNELL's sparsity, not stored, must be given
    import argparse

    import eval as E

    monkeypatch.setenv("VIT_PEFT_CACHE", str(tmp_path / "cache"))
    four = lambda sd, head: {**sd, **{k: v[:4] for k, v in sd.items() if k.startswith(head)}}  # noqa: E731  demo: 4
    arc = tmp_path / "arc_att.pth"  # as FGVC_ARC_train.py saves it by default, with its argparse.Namespace
    torch.save({"model": four(official_arc_state_dict("arc_att", d=6), "head_mlp.head."),
                "args": argparse.Namespace(lr=0.005)}, arc)
    common = ["--dataset", "demo", "--device", "cpu", "--batch-size", "64"]
    assert E.main(["--checkpoint", str(arc), "--format", "arc", *common]) == 0
    out = capsys.readouterr().out
    assert "official arc_att checkpoint, vit_micro_patch8 at 32 px, dim 6" in out and "% top-1" in out
    snell = tmp_path / "snell.pth"
    torch.save(four(official_snell_state_dict(rank=4), "head."), snell)
    assert E.main(["--checkpoint", str(snell), "--format", "snell", "--sparsity", "0.5", *common]) == 0
    assert "official snell checkpoint, vit_micro_patch8 at 32 px, rank 4, sparsity 0.5" in capsys.readouterr().out
    for args, message in ((["--checkpoint", str(snell), "--format", "snell"], "needs --sparsity"),
                          (["--checkpoint", str(arc), "--format", "arc", "--arch", "vit_base_patch16_224"],
                           "--arch vit_base_patch16_224: the checkpoint holds vit_micro_patch8"),
                          (["--checkpoint", str(arc), "--format", "arc", "--img-size", "224"],
                           "--img-size 224: the checkpoint holds 32"),
                          (["--checkpoint", str(arc), "--format", "arc", "--variant", "arc"], "--variant arc_att")):
        assert E.main([*args, *common]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    import datetime

    bad = tmp_path / "bad.pth"  # an arbitrary pickled object (here a date) is not loaded
    torch.save({"model": official_arc_state_dict("arc_att"), "saved": datetime.date(2026, 11, 27)}, bad)
    assert E.main(["--checkpoint", str(bad), "--format", "arc", *common]) == 2
    assert "holds Python objects other than tensors" in capsys.readouterr().err
