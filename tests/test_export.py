"""models.export_timm / timm_config: a merged model runs as timm's own VisionTransformer with the same logits."""
import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

import models
from models.export import timm_model_name

MICRO = dict(num_classes=5, img_size=32)


def _x(b=4, size=32, seed=1):
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _perturb(model, names, seed, std=0.1):
    """Add noise to the trainable tensors whose names pass ``names`` (a trained model, not the initial one)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad and names(n):
                p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _trained(arch, method, **kw):
    """A model whose head and method tensors are away from their initial values; returns it with the logits it had
    before its method tensors moved (head already moved), to show that the merge is what the export carries."""
    torch.manual_seed(0)
    model = models.create_model(arch, method, **kw).eval()
    x = _x(size=kw["img_size"])
    _perturb(model, lambda n: n.startswith("head."), seed=2)
    with torch.no_grad():
        untrained = model(x)
    _perturb(model, lambda n: not n.startswith("head."), seed=3)
    return model, untrained


@pytest.mark.parametrize("method", ["hta", "lora", "snell", "arc", "ssf"])
def test_timm_vit_loads_the_export_strictly_and_computes_our_logits(method):
    model, untrained = _trained("vit_micro_patch8", method, **MICRO)
    x = _x()
    sd = models.export_timm(model)
    ref = TimmViT(**models.timm_config(model)).eval()
    ref.load_state_dict(sd, strict=True)
    with torch.no_grad():
        ours, theirs = model(x), ref(x)
    assert (ours - untrained).abs().max() > 1e-2  # the method tensors matter: the export must carry the merge
    assert (theirs - ours).abs().max() < 1e-5
    d = 64  # vit_micro_patch8: width 64; fused qkv rows are q, then k, then v of the merged model
    merged = models.merge(model)
    w = sd["blocks.1.attn.qkv.weight"]
    assert w.shape == (3 * d, d) and sd["blocks.1.attn.qkv.bias"].shape == (3 * d,)
    assert torch.equal(w[d:2 * d], merged.blocks[1].attn.k.weight)
    assert torch.equal(sd["blocks.1.attn.qkv.bias"][2 * d:], merged.blocks[1].attn.v.bias)


def test_export_leaves_the_model_untouched():
    model, _ = _trained("vit_micro_patch8", "lora", **MICRO)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sd = models.export_timm(model)
    assert models.method_modules(model)  # still the LoRA model
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    sd["blocks.0.attn.proj.weight"].add_(1.0)  # the export is a copy, not a view of the model's tensors
    assert torch.equal(model.state_dict()["blocks.0.attn.proj.weight"], before["blocks.0.attn.proj.weight"])


@pytest.mark.parametrize("method", ["adapter", "adaptformer", "vpt_shallow", "vpt_deep"])
def test_a_method_that_cannot_merge_is_refused(method):
    model = models.create_model("vit_micro_patch8", method, **MICRO)
    with pytest.raises(ValueError, match=f"method '{method}' cannot be exported.*cannot run as a plain timm ViT"):
        models.export_timm(model)


def test_named_timm_model_builds_the_same_network_and_loads_the_export():
    # vit_tiny_patch16_224 at 32 px: a published arch, so timm.create_model(name, ...) is the user's path
    model, _ = _trained("vit_tiny_patch16_224", "lora", num_classes=3, img_size=32)
    name = timm_model_name(model)
    assert name == "vit_tiny_patch16_224"
    ref = timm.create_model(name, pretrained=False, num_classes=3, img_size=32).eval()
    assert repr(ref) == repr(TimmViT(**models.timm_config(model)))  # every layer and its settings (eps, act, pool)
    ref.load_state_dict(models.export_timm(model), strict=True)
    with torch.no_grad():
        assert (ref(_x()) - model(_x())).abs().max() < 1e-5
    assert timm_model_name(models.create_model("vit_micro_patch8", "linear", **MICRO)) is None  # timm has none


def test_vit_b16_export_has_timms_keys_and_shapes():
    with torch.device("meta"):
        model = models.create_model("vit_base_patch16_224", "hta", num_classes=100)
        sd = models.export_timm(model)
        ref = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=100)
    expected = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert expected["blocks.11.attn.qkv.weight"] == (3 * 768, 768)
    assert timm_model_name(model) == "vit_base_patch16_224"
    assert models.timm_config(model)["num_classes"] == 100 and models.timm_config(model)["img_size"] == 224
