"""Pre-trained weight loading (models/pretrained.py, docs/benchmarks.md §5): Google .npz, .safetensors, .pth and
timm names into our separate-q/k/v ViT. CPU only, no network: the timm-name path runs with timm's hub call replaced by
a local random model, and every name check happens before any download would."""
import hashlib

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer as TimmViT, checkpoint_filter_fn

import models
from models import pretrained as P
from models.vit import build_vit

D, HEADS, PATCH, DEPTH = 64, 2, 8, 2  # = our vit_micro_patch8


pytestmark = pytest.mark.usefixtures("no_hub")  # conftest.py: no test here may download


@pytest.fixture(scope="module")
def ref():
    """A tiny timm ViT with every tensor random (LayerNorms and biases too, so a mix-up in any of them shows)."""
    torch.manual_seed(0)
    m = TimmViT(img_size=32, patch_size=PATCH, embed_dim=D, depth=DEPTH, num_heads=HEADS, num_classes=10).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _our_keys(sd):
    """Independent of the code under test: split timm's fused qkv by hand."""
    out = {}
    for k, v in sd.items():
        if ".attn.qkv." in k:
            q, kk, vv = v.chunk(3)
            for n, t in zip("qkv", (q, kk, vv)):
                out[k.replace(".qkv.", f".{n}.")] = t.clone()
        else:
            out[k] = v.clone()
    return out


def export_google_npz(m: TimmViT, path, pre_logits=True):
    """Write a timm ViT in the layout of Google's ViT-B_16.npz (what timm's ``_load_weights`` reads)."""
    t = lambda a: a.detach().numpy().astype(np.float32)  # noqa: E731
    hd = D // HEADS
    w = {
        "embedding/kernel": t(m.patch_embed.proj.weight.permute(2, 3, 1, 0)),  # OIHW -> HWIO
        "embedding/bias": t(m.patch_embed.proj.bias),
        "cls": t(m.cls_token),  # (1, 1, D)
        "Transformer/posembed_input/pos_embedding": t(m.pos_embed),  # (1, N, D)
        "Transformer/encoder_norm/scale": t(m.norm.weight),
        "Transformer/encoder_norm/bias": t(m.norm.bias),
        "head/kernel": t(m.head.weight.T),  # (D, classes)
        "head/bias": t(m.head.bias),
    }
    if pre_logits:
        w["pre_logits/kernel"] = np.random.default_rng(0).standard_normal((D, D)).astype(np.float32)
        w["pre_logits/bias"] = np.zeros(D, np.float32)
    for i, b in enumerate(m.blocks):
        p = f"Transformer/encoderblock_{i}/"
        w[p + "LayerNorm_0/scale"], w[p + "LayerNorm_0/bias"] = t(b.norm1.weight), t(b.norm1.bias)
        w[p + "LayerNorm_2/scale"], w[p + "LayerNorm_2/bias"] = t(b.norm2.weight), t(b.norm2.bias)
        qkv_w, qkv_b = b.attn.qkv.weight.chunk(3), b.attn.qkv.bias.chunk(3)
        for n, wt, bs in zip(("query", "key", "value"), qkv_w, qkv_b):
            w[p + f"MultiHeadDotProductAttention_1/{n}/kernel"] = t(wt.T.reshape(D, HEADS, hd))  # (D, heads, hd)
            w[p + f"MultiHeadDotProductAttention_1/{n}/bias"] = t(bs.reshape(HEADS, hd))
        w[p + "MultiHeadDotProductAttention_1/out/kernel"] = t(b.attn.proj.weight.reshape(D, HEADS, hd).permute(1, 2, 0))
        w[p + "MultiHeadDotProductAttention_1/out/bias"] = t(b.attn.proj.bias)
        for r, fc in enumerate((b.mlp.fc1, b.mlp.fc2)):
            w[p + f"MlpBlock_3/Dense_{r}/kernel"], w[p + f"MlpBlock_3/Dense_{r}/bias"] = t(fc.weight.T), t(fc.bias)
    np.savez(path, **w)
    return path


@pytest.fixture(scope="module")
def files(ref, tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    sd = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    out = {"npz": export_google_npz(ref, d / "ViT-micro.npz")}
    save_file(sd, str(d / "timm.safetensors"))
    out["safetensors"] = d / "timm.safetensors"
    torch.save(sd, d / "timm.pth")
    out["pth"] = d / "timm.pth"
    torch.save({"model": _our_keys(sd), "epoch": 3}, d / "ours_wrapped.pt")
    out["ours_wrapped"] = d / "ours_wrapped.pt"
    torch.save({"state_dict": sd}, d / "timm_wrapped.pth")
    out["timm_wrapped"] = d / "timm_wrapped.pth"
    save_file(_our_keys(sd), str(d / "ours.safetensors"))
    out["ours_safetensors"] = d / "ours.safetensors"
    return out


def _micro(source, img_size=32):
    return models.create_model("vit_micro_patch8", "linear", num_classes=3, img_size=img_size,
                               pretrained=str(source)).eval()


@pytest.mark.parametrize("which,kind,fused", [
    ("npz", "npz", False), ("safetensors", "safetensors", True), ("pth", "pth", True),
    ("ours_wrapped", "pth", False), ("timm_wrapped", "pth", True), ("ours_safetensors", "safetensors", False)])
def test_every_file_kind_loads_to_timm_features_and_records_sha(files, ref, x, which, kind, fused):
    m = _micro(files[which])
    with torch.no_grad():
        assert (m.forward_features(x) - ref.forward_features(x)).abs().max() < 1e-5
    info = m.pretrained_info
    assert info["kind"] == kind and info["qkv_fused"] is fused
    assert info["sha256"] == _sha(files[which]) and info["path"] == info["source"] == str(files[which].resolve())
    assert info["checkpoint_arch"].startswith("ViT(width 64, depth 2") and info["pos_embed_resampled"] is None
    assert m.head.weight.shape == (3, D)  # the pre-trained 10-way head is never loaded
    if which in ("safetensors", "pth", "timm_wrapped"):
        assert sorted(info["ignored_keys"]) == ["head.bias", "head.weight"]


def test_npz_drops_pre_logits_and_head_and_gives_the_same_tensors_as_the_state_dict(files):
    a, b = _micro(files["npz"]), _micro(files["safetensors"])
    assert a.pretrained_info["ignored_keys"] == ["head/bias", "head/kernel", "pre_logits/bias", "pre_logits/kernel"]
    assert a.pretrained_info["checkpoint_arch"] == "ViT(width 64, depth 2, 2 heads, patch 8)"  # heads read from npz
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa if not k.startswith("head."))  # docs/benchmarks.md §5: identical
    # ... so the loaded backbone's own hash agrees across file kinds (also recorded where timm leaves no file)
    assert a.pretrained_info["backbone_sha256"] == b.pretrained_info["backbone_sha256"]
    assert a.pretrained_info["sha256"] != b.pretrained_info["sha256"]  # while the files differ
    from models.pretrained import sha256_tensors

    names = [k for k in sa if not k.startswith("head.")]
    changed = {**sa, names[0]: sa[names[0]] + 1e-7}
    assert sha256_tensors(names, changed) != a.pretrained_info["backbone_sha256"] == sha256_tensors(names, sa)


def test_timm_to_ours_splits_fused_qkv_in_q_k_v_order(ref):
    sd, ignored = P.timm_to_ours(ref.state_dict())
    qkv = ref.blocks[1].attn.qkv
    assert torch.equal(sd["blocks.1.attn.q.weight"], qkv.weight[:D]) and torch.equal(sd["blocks.1.attn.k.weight"],
                                                                                    qkv.weight[D:2 * D])
    assert torch.equal(sd["blocks.1.attn.v.weight"], qkv.weight[2 * D:]) and torch.equal(sd["blocks.1.attn.v.bias"],
                                                                                        qkv.bias[2 * D:])
    ours = {k for k in build_vit("vit_micro_patch8", img_size=32).state_dict() if not k.startswith("head.")}
    assert set(sd) == ours and sorted(ignored) == ["head.bias", "head.weight"]


def test_pos_embed_is_resampled_like_timm_when_img_size_differs(files, ref, no_hub):
    m = _micro(files["npz"], img_size=48)  # 4x4 -> 6x6 patch grid
    assert m.pos_embed.shape == (1, 37, D) and m.pretrained_info["pos_embed_resampled"] == "4x4 -> 6x6"
    # timm's own filter (bicubic, antialiased) on a 48 px timm model must give the same network.
    t48 = TimmViT(img_size=48, patch_size=PATCH, embed_dim=D, depth=DEPTH, num_heads=HEADS, num_classes=10).eval()
    t48.load_state_dict(checkpoint_filter_fn(ref.state_dict(), t48))
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert (m.forward_features(x) - t48.forward_features(x)).abs().max() < 1e-5


def test_timm_name_loads_through_timm_and_hashes_the_cached_file(monkeypatch, no_hub, tmp_path, x):
    """The hub call is replaced by a local random model at the checkpoint's native 224 px; everything after it (name
    resolution, arch check, conversion, 14x14 -> 2x2 pos-embed resampling, finding and hashing the file in the
    Hugging Face cache) is real."""
    import huggingface_hub.constants

    calls, served = [], []

    def fake_create(name, pretrained=False, **kw):
        calls.append((name, pretrained, kw))
        m = no_hub(name, pretrained=False, **kw)
        if pretrained:
            served.append({k: v.clone() for k, v in m.state_dict().items()})
        return m

    snap = tmp_path / "models--timm--vit_tiny_patch16_224.augreg_in21k" / "snapshots" / "c0ffee"
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("c0ffee")
    cached = snap / "model.safetensors"
    cached.write_bytes(b"stand-in for the hub file")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(timm, "create_model", fake_create)
    m = models.create_model("vit_tiny_patch16_224", "linear", num_classes=2, img_size=32,
                            pretrained="vit_tiny_patch16_224.augreg_in21k").eval()
    assert ("vit_tiny_patch16_224.augreg_in21k", True, {"num_classes": 0}) in calls  # native size, no head
    info = m.pretrained_info
    assert info["kind"] == "timm" and info["source"] == "vit_tiny_patch16_224.augreg_in21k"
    assert info["path"] == str(cached) and info["sha256"] == _sha(cached)
    assert info["pos_embed_resampled"] == "14x14 -> 2x2" and info["checkpoint_arch"] == "ViT-Ti/16"
    t32 = no_hub("vit_tiny_patch16_224", img_size=32, num_classes=0).eval()
    t32.load_state_dict(checkpoint_filter_fn(served[0], t32))  # timm's own resampling of the "hub" weights
    with torch.no_grad():
        assert (m.forward_features(x) - t32.forward_features(x)).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["vit_base_patch16_224_in21k", "vit_base_patch16_224.in21k"])
def test_bare_in21k_names_are_rejected_as_ambiguous_naming_both_choices(name):
    with pytest.raises(ValueError, match="ambiguous") as e:
        P.resolve_timm_name(name)
    assert "vit_base_patch16_224.orig_in21k" in str(e.value) and "vit_base_patch16_224.augreg_in21k" in str(e.value)
    with torch.device("meta"), pytest.raises(ValueError, match="ambiguous"):
        models.create_model("vit_base_patch16_224", "linear", pretrained=name)


def test_timm_name_resolution():
    assert P.resolve_timm_name("vit_base_patch16_224.orig_in21k") == "vit_base_patch16_224.orig_in21k"
    assert P.resolve_timm_name("vit_huge_patch14_224.orig_in21k") == "vit_huge_patch14_224.orig_in21k"
    bare = P.resolve_timm_name("vit_base_patch16_224")  # timm's default tag, recorded in full
    assert bare.startswith("vit_base_patch16_224.") and bare != "vit_base_patch16_224."
    with pytest.raises(ValueError, match="no pretrained weights 'vit_base_patch16_224.orig_in1k'.*orig_in21k"):
        P.resolve_timm_name("vit_base_patch16_224.orig_in1k")
    with pytest.raises(ValueError, match="neither an existing weight file nor a timm model name"):
        P.resolve_timm_name("vit_bsae_patch16_224.orig_in21k")


@pytest.mark.parametrize("name,arch,msg", [
    ("vit_large_patch16_224.orig_in21k", "vit_base_patch16_224", "weights are ViT-L/16 but --arch is vit_base_patch16_224"),
    ("vit_huge_patch14_224.orig_in21k", "vit_large_patch16_224", "weights are ViT-H/14 but --arch is vit_large_patch16"),
    ("vit_base_patch32_224.augreg_in21k", "vit_base_patch16_224", "weights are ViT-B/32 but --arch is vit_base_patch16")])
def test_timm_name_of_another_architecture_is_refused_before_download(name, arch, msg):
    with torch.device("meta"), pytest.raises(ValueError, match=msg):  # no_hub: a download attempt would fail
        models.create_model(arch, "linear", num_classes=10, pretrained=name)


def test_file_of_another_architecture_and_shape_mismatch(files, ref, tmp_path):
    with pytest.raises(ValueError, match=r"weights are ViT\(width 64, depth 2, 2 heads, patch 8\) but --arch is "
                                         r"vit_tiny_patch16_224"):
        models.create_model("vit_tiny_patch16_224", "linear", img_size=32, pretrained=str(files["npz"]))
    sd = dict(ref.state_dict())
    sd["blocks.0.mlp.fc1.weight"] = sd["blocks.0.mlp.fc1.weight"][:128]
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match=r"blocks\.0\.mlp\.fc1\.weight: checkpoint \(128, 64\), model \(256, 64\).*"
                                         r"vit_micro_patch8"):
        _micro(tmp_path / "bad.safetensors")


def test_missing_unexpected_and_unreadable_inputs_raise_clear_errors(ref, tmp_path):
    with pytest.raises(ValueError, match=r"weights/ViT-B_16\.npz does not exist.*wget .*imagenet21k/ViT-B_16\.npz.*"
                                         r"vit_base_patch16_224\.orig_in21k"):
        P.load_pretrained(build_vit("vit_micro_patch8", img_size=32), "weights/ViT-B_16.npz", "vit_base_patch16_224")
    with pytest.raises(ValueError, match=r"nowhere\.pth does not exist"):
        _micro(tmp_path / "nowhere.pth")
    sd = _our_keys(ref.state_dict())
    lacking = {k: v for k, v in sd.items() if k != "norm.weight"}
    torch.save(lacking, tmp_path / "lacking.pth")
    with pytest.raises(ValueError, match=r"lacks backbone tensors of vit_micro_patch8: \['norm.weight'\]"):
        _micro(tmp_path / "lacking.pth")
    torch.save({**sd, "blocks.0.attn.q.lora_A": torch.zeros(8, D)}, tmp_path / "adapter.pth")
    with pytest.raises(ValueError, match=r"does not: \['blocks.0.attn.q.lora_A'\].*merge"):
        _micro(tmp_path / "adapter.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="holds no state dict"):
        _micro(tmp_path / "list.pth")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown weight format"):
        _micro(tmp_path / "w.txt")
    with torch.device("meta"):
        meta = build_vit("vit_micro_patch8", img_size=32)
    torch.save(sd, tmp_path / "ok.pth")
    with pytest.raises(ValueError, match="meta device"):
        P.load_pretrained(meta, str(tmp_path / "ok.pth"), "vit_micro_patch8")
