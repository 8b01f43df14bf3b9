"""The shared ViT and the public models API (create_model / count_parameters / merge) independent of any method."""
import pytest
import timm
import torch

import models
from models.vit import VIT_ARCHS as ARCHS


def _timm_to_ours(sd):
    out = {}
    for k, v in sd.items():
        if ".attn.qkv." in k:
            for name, part in zip("qkv", v.chunk(3, dim=0)):
                out[k.replace(".qkv.", f".{name}.")] = part
        else:
            out[k] = v
    return out


def test_forward_equals_timm_vit_with_same_weights():
    # every tensor random (timm's init leaves LayerNorms at 1 / 0 and biases near 0, which would hide a swapped
    # norm1/norm2 or q/k bias mapping)
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=5).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if p.ndim == 1 else 0.0) * torch.rand_like(p))
    ours = models.create_model("vit_tiny_patch16_224", "full", num_classes=5, img_size=32).eval()
    ours.load_state_dict(_timm_to_ours(ref.state_dict()), strict=True)
    x = torch.randn(3, 3, 32, 32)
    assert torch.allclose(ours(x), ref(x), atol=1e-5)
    swapped = {k.replace("norm1", "normX").replace("norm2", "norm1").replace("normX", "norm2"): v
               for k, v in _timm_to_ours(ref.state_dict()).items()}
    ours.load_state_dict(swapped, strict=True)
    assert not torch.allclose(ours(x), ref(x), atol=1e-3)  # the comparison does see a wrong mapping


@pytest.mark.parametrize("arch,width,depth,tokens", [
    ("vit_base_patch16_224", 768, 12, 197), ("vit_large_patch16_224", 1024, 24, 197),
    ("vit_huge_patch14_224", 1280, 32, 257)])
def test_arch_shapes_on_meta(arch, width, depth, tokens):
    with torch.device("meta"):
        m = models.create_model(arch, "full", num_classes=10)
    assert m.pos_embed.shape == (1, tokens, width) and len(m.blocks) == depth
    assert m.blocks[0].attn.q.weight.shape == (width, width)


def test_vit_b16_backbone_size_matches_spec():
    # docs/methods/baselines.md "Common frame": 85,798,656 backbone parameters (+ head 769·C).
    with torch.device("meta"):
        m = models.create_model("vit_base_patch16_224", "full", num_classes=100)
    assert models.count_parameters(m, head=False) == 85_798_656
    assert models.count_parameters(m) == 85_798_656 + 769 * 100


def test_linear_probe_trains_only_the_head_and_bitfit_count():
    with torch.device("meta"):
        lin = models.create_model("vit_base_patch16_224", "linear", num_classes=37)
        bit = models.create_model("vit_base_patch16_224", "bitfit", num_classes=37)
    assert models.count_parameters(lin, head=False) == 0 and models.count_parameters(lin) == 769 * 37
    assert models.count_parameters(bit, head=False) == 102_912  # docs/methods/baselines.md §3


def test_hooks_are_identity_until_used_and_any_img_size_works():
    m = models.create_model("vit_micro_patch8", "linear", num_classes=4, img_size=48)
    assert all(isinstance(b.attn_in, torch.nn.Identity) and b.attn.qkv_branch is None for b in m.blocks)
    assert m(torch.randn(2, 3, 48, 48)).shape == (2, 4)
    with pytest.raises(ValueError, match="48 px"):
        m(torch.randn(2, 3, 32, 32))


def test_unknown_names_and_bad_method_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown arch 'vit_base_patch16'.*vit_base_patch16_224"):
        models.create_model("vit_base_patch16", "full")
    with pytest.raises(ValueError, match="unknown method 'bitfitt'.*'bitfit'"):
        models.create_model("vit_micro_patch8", "bitfitt", img_size=32)
    with pytest.raises(ValueError, match="bad arguments for method 'full'"):
        models.create_model("vit_micro_patch8", "full", img_size=32, rank=3)


def test_merge_of_plain_methods_returns_an_equal_independent_copy():
    m = models.create_model("vit_micro_patch8", "bitfit", num_classes=3, img_size=32).eval()
    merged = models.merge(m)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(m(x), merged(x)) and merged is not m
    assert models.method_modules(merged) == [] and models.count_parameters(merged) == 0
    assert models.count_parameters(m) > 0  # the original is untouched


@pytest.mark.parametrize("name", sorted(n for n, cls in models.METHODS.items() if cls.mergeable))
def test_merging_a_merged_model_again_changes_nothing(name):
    # Method.merge is idempotent for every mergeable method: a second call finds plain layers and leaves them alone.
    torch.manual_seed(0)
    m = models.create_model("vit_micro_patch8", name, num_classes=3, img_size=32).eval()
    merged = models.merge(m)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = merged(x)
        m.method.merge(merged)
        assert torch.equal(merged(x), before)
    assert models.method_modules(merged) == []


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_registered_arch_builds_with_timms_parameter_count(arch):
    a = ARCHS[arch]
    with torch.device("meta"):
        m = models.create_model(arch, "full", num_classes=10, img_size=a.patch_size * 4)
        if arch in timm.list_models():  # timm's own definition of the name
            ref = timm.create_model(arch, num_classes=10, img_size=a.patch_size * 4)
        else:  # ours only (tests): timm's ViT class with the same dimensions
            from timm.models.vision_transformer import VisionTransformer

            ref = VisionTransformer(img_size=a.patch_size * 4, patch_size=a.patch_size, embed_dim=a.embed_dim,
                                    depth=a.depth, num_heads=a.num_heads, mlp_ratio=a.mlp_ratio, num_classes=10)
    assert models.count_parameters(m) == sum(p.numel() for p in ref.parameters())


def test_attn_out_and_mlp_out_hooks_sit_after_drop_path():
    # models/vit.py hook table: both output hooks see the drop-path'ed branch (a dropped sample arrives as zeros).
    m = models.create_model("vit_micro_patch8", "linear", num_classes=2, img_size=32, drop_path_rate=0.5).train()
    seen = {}
    blk = m.blocks[1]  # drop-path rate 0.5 in the last block (linear in depth)
    blk.attn_out.register_forward_hook(lambda mod, inp, out: seen.__setitem__("attn", inp[0]))
    blk.mlp_out.register_forward_hook(lambda mod, inp, out: seen.__setitem__("mlp", inp[0]))
    torch.manual_seed(0)
    m(torch.randn(64, 3, 32, 32))
    for name in ("attn", "mlp"):
        zero = (seen[name].flatten(1) == 0).all(1)
        assert 0 < int(zero.sum()) < 64, name  # whole samples zeroed: the hook's input went through DropPath
