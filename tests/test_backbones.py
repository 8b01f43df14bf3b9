"""Swin-B and ConvNeXt-B (docs/backbones.md): the printed parameter counts on the meta device, timm's weights giving
timm's features, merge equivalence of every mergeable method on tiny models, and the pairs that are refused."""
from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

import models
from data.tasks import VTAB_NUM_CLASSES
from test_pretrained_mae_mocov3 import _randomise  # every tensor random, so a mix-up in any of them shows

pytestmark = pytest.mark.usefixtures("no_hub")  # conftest.py: nothing here downloads

SWIN, CONVNEXT = "swin_base_patch4_window7_224", "convnext_base"
SWIN_MICRO, CONVNEXT_MICRO = "swin_micro_patch4_window4", "convnext_micro"
VTAB_MEAN_C = sum(VTAB_NUM_CLASSES.values()) / 19


def _meta(arch, method, **kw):
    with torch.device("meta"):
        return models.create_model(arch, method, num_classes=100, **kw)


# ------------------------------------------------------------------------------------------------- counts (meta)
@pytest.mark.parametrize("rank,swin,convnext", [(8, 1_732_608, 1_443_840), (16, 3_465_216, 2_887_680),
                                                (32, 6_930_432, 5_775_360)])
def test_snell_factor_counts(rank, swin, convnext):
    """SNELL Table 3: q, k, v, proj, fc1, fc2 of every Swin-B block, fc1 and fc2 of every ConvNeXt-B block; r·(in +
    out) each; no class token to train (docs/backbones.md §6)."""
    s = _meta(SWIN, "snell", rank=rank)
    c = _meta(CONVNEXT, "snell", rank=rank, targets=("fc1", "fc2"))
    assert models.count_parameters(s, head=False) == swin == rank * 18 * sum(b.dim for b in s.blocks)
    assert models.count_parameters(c, head=False) == convnext == rank * 10 * sum(b.dim for b in c.blocks)
    assert models.count_parameters(s) - swin == models.count_parameters(c) - convnext == 1025 * 100


def test_swin_b_dimensions():
    m = _meta(SWIN, "linear")
    assert [b.dim for b in m.blocks] == [128] * 2 + [256] * 2 + [512] * 18 + [1024] * 2
    assert [b.shift for b in m.blocks[:4]] == [0, 3, 0, 3] and {b.shift for b in m.blocks[-2:]} == {0}  # 7x7: 1 window
    assert m.num_features == 1024 and m.linear_names() == ("q", "k", "v", "qkv", "proj", "fc1", "fc2", "reduction")
    for arch, n in ((SWIN, 86_743_224), (CONVNEXT, 87_566_464)):  # = timm's model of the same name, headless
        with torch.device("meta"):
            ref = timm.create_model(arch, pretrained=False, num_classes=0)
        assert models.count_parameters(_meta(arch, "full"), head=False) == n == sum(p.numel() for p in ref.parameters())


def test_hta_swin_counts_print_0_23():
    """The placement decision of docs/backbones.md §3: fused qkv, proj and the three patch-merging reductions at
    rank 1 — 180,992 + the VTAB mean head (1,025 × mean C = 50,711) prints 0.23 M; the two alternatives do not."""
    chosen = models.count_parameters(_meta(SWIN, "hta", targets=("qkv", "proj", "reduction")), head=False)
    separate = models.count_parameters(_meta(SWIN, "hta", targets=("q", "k", "v", "proj")), head=False)
    fused = models.count_parameters(_meta(SWIN, "hta", targets=("qkv", "proj")), head=False)
    head = 1025 * VTAB_MEAN_C
    assert round(head) == 50_711
    assert (chosen, separate, fused) == (180_992, 240_640, 168_448)
    assert (round((chosen + head) / 1e6, 2), round((separate + head) / 1e6, 2), round((fused + head) / 1e6, 2)) == \
        (0.23, 0.29, 0.22)


def test_arc_swin_count_prints_0_27():
    """ARC's Swin code: U_att and U_mlp per stage (C × 50), λ and b per block and position: 218,464 + head
    = 0.27 M."""
    m = _meta(SWIN, "arc", share="stage", mlp_at="stream", dropout=0.5, head_init="trunc_normal")
    n = models.count_parameters(m, head=False)
    assert n == 2 * 50 * (128 + 256 + 512 + 1024) + 24 * 2 * 50 + 2 * sum(b.dim for b in m.blocks) == 218_464
    assert round((n + 1025 * VTAB_MEAN_C) / 1e6, 2) == 0.27
    assert len(m.arc) == 4 and m.blocks[0].mlp_in.__class__ is nn.Identity  # the MLP adapter is on the stream
    assert m.blocks[2].attn_in.shared is m.arc[1] and m.blocks[3].mlp_stream.shared is m.arc[1]


# ---------------------------------------------------------------------------------------------- timm's weights
def _timm_micro(arch: str) -> nn.Module:
    """timm's own model of our test arch's dimensions, every tensor random (a weight mix-up shows)."""
    return _randomise(models.build_backbone(arch, num_classes=1, img_size=32).timm_equivalent(), seed=3)


def _features(ref: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return ref.forward_head(ref.forward_features(x), pre_logits=True)


@pytest.mark.parametrize("arch", [SWIN_MICRO, CONVNEXT_MICRO])
@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_timm_state_dict_loads_to_timm_features(tmp_path, arch, fmt):
    ref, x = _timm_micro(arch), torch.randn(2, 3, 32, 32)
    path = tmp_path / f"w.{fmt}"
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    save_file(sd, str(path)) if fmt == "safetensors" else torch.save({"model": sd}, path)
    m = models.create_model(arch, "linear", num_classes=3, img_size=32, pretrained=str(path)).eval()
    with torch.no_grad():
        assert (m.pool(m.forward_features(x)) - _features(ref, x)).abs().max() < 1e-5
    info = m.pretrained_info
    assert info["kind"] == fmt and info["qkv_fused"] is (arch == SWIN_MICRO) and info["sha256"]


def test_timm_name_loads_through_timm(monkeypatch):
    """``--pretrained swin_base_patch4_window7_224.ms_in22k``: name resolution, the shape check on timm's meta-device
    shell and the loading are the real code; timm's model is replaced by a random one of our micro dimensions."""
    ref, x = _timm_micro(SWIN_MICRO), torch.randn(2, 3, 32, 32)
    ref.pretrained_cfg = {}  # as timm.create_model sets it; no hub file to hash here
    calls = []

    def fake_create(name, pretrained=False, **kw):  # the hub's Swin-B, at our micro dimensions
        calls.append((name, pretrained))
        assert name == f"{SWIN}.ms_in22k"
        return ref if pretrained else models.build_backbone(SWIN_MICRO, num_classes=1, img_size=32).timm_equivalent()

    monkeypatch.setattr(timm, "create_model", fake_create)
    m = models.create_model(SWIN_MICRO, "linear", num_classes=3, img_size=32, pretrained=f"{SWIN}.ms_in22k")
    assert m.pretrained_info["source"] == f"{SWIN}.ms_in22k" and m.pretrained_info["kind"] == "timm"
    assert (f"{SWIN}.ms_in22k", True) in calls
    with torch.no_grad():
        assert (m.eval().pool(m.forward_features(x)) - _features(ref, x)).abs().max() < 1e-5
    with pytest.raises(ValueError, match=r"ms_in22k': the checkpoint has tensors convnext_micro does not"):
        models.create_model(CONVNEXT_MICRO, "linear", num_classes=3, img_size=32, pretrained=f"{SWIN}.ms_in22k")


def _swin_official(sd: dict) -> dict:
    """timm keys -> the layout of Microsoft's released Swin files: each patch merging closes the stage before it,
    the head is ``head.*``, and the index / mask buffers are stored."""
    out = {}
    for k, v in sd.items():
        if k.startswith("layers.") and ".downsample." in k:
            i = int(k.split(".")[1])
            k = k.replace(f"layers.{i}.", f"layers.{i - 1}.", 1)
        out[k] = v
    out["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    out["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 16, 16)
    return out


def _convnext_official(sd: dict) -> dict:
    """timm keys -> the layout of Meta's released ConvNeXt files (downsample_layers, dwconv, pwconv, norm)."""
    import re

    out = {}
    for k, v in sd.items():
        k = k.replace("stem.", "downsample_layers.0.")
        k = re.sub(r"stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", k)
        k = re.sub(r"stages\.(\d+)\.blocks\.", r"stages.\1.", k)
        k = k.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv").replace("head.norm.", "norm.")
        out[k] = v
    return out


@pytest.mark.parametrize("arch,convert", [(SWIN_MICRO, _swin_official), (CONVNEXT_MICRO, _convnext_official)])
def test_official_release_files_load_through_timms_filter(tmp_path, arch, convert):
    ref, x = _timm_micro(arch), torch.randn(2, 3, 32, 32)
    torch.save({"model": convert(ref.state_dict())}, tmp_path / "official.pth")
    m = models.create_model(arch, "linear", num_classes=3, img_size=32, pretrained=str(tmp_path / "official.pth"))
    with torch.no_grad():
        assert (m.eval().pool(m.forward_features(x)) - _features(ref, x)).abs().max() < 1e-5


def test_weights_that_do_not_fit_are_one_clear_error(tmp_path):
    ref = _timm_micro(SWIN_MICRO)
    torch.save(ref.state_dict(), tmp_path / "swin.pth")
    with pytest.raises(ValueError, match=r"swin\.pth: the checkpoint has tensors convnext_micro does not"):
        models.create_model(CONVNEXT_MICRO, "linear", num_classes=3, img_size=32, pretrained=str(tmp_path / "swin.pth"))
    with pytest.raises(ValueError, match=r"does not exist"):
        models.create_model(SWIN_MICRO, "linear", num_classes=3, img_size=32, pretrained=str(tmp_path / "none.pth"))
    missing = tmp_path / "convnext_base_22k_224.pth"  # a known release: the message names its download and timm copy
    with pytest.raises(ValueError, match=r"wget -O .*convnext_base_22k_224\.pth .* or pass the timm name "
                                         r"convnext_base\.fb_in22k"):
        models.create_model(CONVNEXT_MICRO, "linear", num_classes=3, img_size=32, pretrained=str(missing))


# ---------------------------------------------------------------------------------------- merge equivalence
MERGEABLE = [  # every mergeable method on the backbones it supports (docs/backbones.md §4)
    (SWIN_MICRO, "hta", {"targets": ("qkv", "proj", "reduction")}),
    (SWIN_MICRO, "hta", {"targets": ("q", "k", "v", "proj", "fc1", "fc2")}),
    (SWIN_MICRO, "hta", {"placement": "ffn_adapter"}),
    (SWIN_MICRO, "snell", {"rank": 4, "sparsity": 0.5}),
    (SWIN_MICRO, "lora", {"rank": 4}),
    (SWIN_MICRO, "lora_qv", {"rank": 4}),
    (SWIN_MICRO, "arc", {"share": "stage"}),
    (SWIN_MICRO, "arc_att", {"share": "stage"}),
    (SWIN_MICRO, "bitfit", {}),
    (SWIN_MICRO, "full", {}),
    (CONVNEXT_MICRO, "hta", {"targets": ("fc1", "fc2")}),
    (CONVNEXT_MICRO, "snell", {"rank": 4, "sparsity": 0.5, "targets": ("fc1", "fc2")}),
    (CONVNEXT_MICRO, "lora", {"rank": 4, "targets": ("fc1", "fc2")}),
    (CONVNEXT_MICRO, "bitfit", {}),
    (CONVNEXT_MICRO, "full", {}),
]


def _trained(arch, method, kw, x):
    """A micro model with a random backbone (ConvNeXt's layer scale included), its output with the method as
    initialised, then its method tensors made random too (as after training)."""
    torch.manual_seed(0)
    m = models.create_model(arch, method, num_classes=5, img_size=32, **kw).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            if not p.requires_grad or p is m.head.weight:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
        y_init = m(x)
        for p in m.parameters():
            if p.requires_grad and p is not m.head.weight:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return m, y_init


@pytest.mark.parametrize("arch,method,kw", MERGEABLE, ids=[f"{a.split('_')[0]}-{m}-{i}" for i, (a, m, _) in
                                                           enumerate(MERGEABLE)])
def test_merge_equivalence(arch, method, kw):
    x = torch.randn(4, 3, 32, 32)
    m, y_init = _trained(arch, method, kw, x)
    with torch.no_grad():
        y = m(x)
        assert (y - y_init).abs().max() > 1e-2  # the trained tensors matter far beyond the tolerance below
        plain = models.merge(m)
        assert (plain(x) - y).abs().max() < 1e-4 * max(1.0, y.abs().max().item())
        assert models.method_modules(plain) == [] and plain.prelude is None
        assert torch.equal(m(x), y)  # merge left the adapted model alone


def test_arc_swin_mlp_adapter_on_the_stream_is_refused_by_merge():
    m, _ = _trained(SWIN_MICRO, "arc", {"share": "stage", "mlp_at": "stream"}, torch.randn(1, 3, 32, 32))
    assert not m.method.mergeable
    with pytest.raises(ValueError, match=r"residual stream .* LayerNorm .* not linear"):
        models.merge(m)
    from engine.loop import eval_network  # the training loop evaluates the unmerged model instead

    assert eval_network(m, merged=True) is m


# ------------------------------------------------------------------------------------------------ refused pairs
@pytest.mark.parametrize("arch,method,kw,match", [
    (CONVNEXT_MICRO, "vpt_shallow", {}, r"'vpt_shallow' needs a class token .* ConvNeXt does not have"),
    (CONVNEXT_MICRO, "arc", {}, r"'arc' needs an attention in every block"),
    (SWIN_MICRO, "ssf", {}, r"'ssf' needs a hook on the patch tokens"),
    (SWIN_MICRO, "fact_tk", {}, r"one width shared by every block"),
    (SWIN_MICRO, "arc", {}, r"share='model' needs one width.* use share='stage'"),
    (CONVNEXT_MICRO, "snell", {}, r"ConvNeXt has no linear named q, k, v, proj: it offers fc1, fc2"),
    (CONVNEXT_MICRO, "lora", {}, r"'lora \(targets q, k, v\)' needs an attention"),
    (CONVNEXT_MICRO, "hta", {"placement": "ffn_adapter"}, r"fc2's output unscaled"),
    (CONVNEXT_MICRO, "adapter", {"positions": ("attn", "ffn")}, r"position 'attn' needs block.attn_out"),
    (SWIN_MICRO, "hta", {"targets": ("q", "qkv")}, r"fused qkv or the separate q, k, v, not both"),
    (SWIN_MICRO, "vpt_pad", {}, r"'vpt_pad' needs a hook on the input image .* SwinTransformer does not have"),
    ("vit_micro_patch8", "vpt_pad", {}, r"VisionTransformer does not have"),
    (CONVNEXT_MICRO, "adaptformer", {}, r"needs a branch parallel to each block's MLP"),
    (CONVNEXT_MICRO, "arc_att", {}, r"needs an attention in every block"),
])
def test_unsupported_pairs_are_one_clear_error(arch, method, kw, match):
    with pytest.raises(ValueError, match=match):
        models.create_model(arch, method, num_classes=3, img_size=32, **kw)


SUPPORTED = [(SWIN_MICRO, m, kw) for m, kw in [
    ("full", {}), ("linear", {}), ("bitfit", {}), ("hta", {"targets": ("qkv", "proj", "reduction")}),
    ("hta", {"placement": "ffn_adapter"}), ("snell", {"rank": 2}), ("lora", {"rank": 2}), ("lora_qv", {"rank": 2}),
    ("arc", {"share": "stage", "mlp_at": "stream"}), ("arc_att", {"share": "stage"}), ("adapter", {"dim": 4}),
    ("adapter", {"dim": 4, "positions": ("attn", "ffn")}), ("adaptformer", {"dim": 4}), ("vpt_shallow", {"tokens": 2}),
    ("vpt_deep", {"tokens": 2})]] + [
    (CONVNEXT_MICRO, m, kw) for m, kw in [
        ("full", {}), ("linear", {}), ("bitfit", {}), ("hta", {"targets": ("fc1", "fc2")}),
        ("snell", {"rank": 2, "targets": ("fc1", "fc2")}), ("lora", {"rank": 2, "targets": ("fc1", "fc2")}),
        ("adapter", {"dim": 4}), ("vpt_pad", {"tokens": 2})]]


@pytest.mark.parametrize("arch,method,kw", SUPPORTED, ids=[f"{a.split('_')[0]}-{m}-{i}" for i, (a, m, _) in
                                                           enumerate(SUPPORTED)])
def test_every_supported_pair_trains(arch, method, kw):
    """Each "yes" of docs/backbones.md §4: three AdamW steps move every trainable tensor (none frozen by accident,
    no hook left unwired) and nothing else."""
    torch.manual_seed(0)
    m = models.create_model(arch, method, num_classes=4, img_size=32, **kw).train()
    with torch.no_grad():
        m.head.weight.normal_()  # a zero head (ARC's) would stop the gradient at the head on the first step
    trainable = {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for _ in range(3):  # zero-initialised factors (LoRA's B, HTA's and ARC's scales) pass gradient from step 2 on
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    params = dict(m.named_parameters())
    assert trainable and all(not torch.equal(params[n], v) for n, v in trainable.items()), \
        [n for n, v in trainable.items() if torch.equal(params[n], v)]
    assert all(torch.equal(params[n], v) for n, v in frozen.items())


def test_swin_image_size_must_tile_into_windows():
    with pytest.raises(ValueError, match=r"does not tile into 4x4 windows"):
        models.create_model(SWIN_MICRO, "linear", num_classes=3, img_size=48)


@pytest.mark.parametrize("arch,method,kw", [(SWIN_MICRO, "hta", {"targets": ("qkv", "proj", "reduction")}),
                                            (CONVNEXT_MICRO, "snell", {"rank": 2, "targets": ("fc1", "fc2")}),
                                            (SWIN_MICRO, "arc", {"share": "stage", "mlp_at": "stream"})])
def test_adapter_file_rebuilds_the_trained_model(tmp_path, arch, method, kw):
    """save_adapter / load_adapter (models/portable.py) on the new backbones: the file's metadata rebuilds the model,
    the fused qkv and the per-stage ARC included, with the same outputs."""
    from models.portable import load_adapter, save_adapter

    weights = tmp_path / "backbone.pth"
    torch.save({k: v for k, v in _randomise(models.create_model(arch, "linear", num_classes=3, img_size=32), 4)
                .state_dict().items() if not k.startswith("head.")}, weights)
    m = models.create_model(arch, method, num_classes=3, img_size=32, pretrained=str(weights), **kw).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    save_adapter(m, tmp_path / "adapter.safetensors")
    rebuilt = load_adapter(tmp_path / "adapter.safetensors", pretrained=str(weights))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), m(x))


@pytest.mark.parametrize("arch,rows", [(SWIN_MICRO, "hta:targets=qkv,proj,reduction,arc:share=stage:mlp_at=stream"),
                                       (CONVNEXT_MICRO, "snell:targets=fc1,fc2")])
def test_bench_measures_the_new_backbones(tmp_path, arch, rows):
    """bench.py's rows on Swin and ConvNeXt: the floor (the first bias trains: no position embedding there), full
    fine-tuning and the method variants, side by side; the ARC-on-stream row has no merged column."""
    import json

    import bench

    out = tmp_path / "bench.json"
    assert bench.main(["--device", "cpu", "--arch", arch, "--img-size", "32", "--batch-size", "4", "--eval-batch-size",
                       "4", "--precision", "fp32", "--steps", "2", "--warmup", "1", "--methods", rows,
                       "--json", str(out)]) == 0
    rep = json.loads(out.read_text())["rows"]
    assert list(rep)[:2] == ["floor", "full"] and all(r["img_per_s"] > 0 for r in rep.values())
    # the floor trains the first bias: the patch-embedding conv's (Swin, 16 channels) or the stem's (ConvNeXt, 8)
    assert rep["floor"]["params_no_head"] == (16 if arch == SWIN_MICRO else 8)
    if arch == SWIN_MICRO:
        assert "merged_img_per_s" in rep["hta:targets=qkv,proj,reduction"]
        assert "merged_img_per_s" not in rep["arc:share=stage:mlp_at=stream"]


# ---------------------------------------------------------------------------------------------- VPT on Swin
def test_vpt_on_swin_counts():
    """VPT's Swin variant: shallow prompts have stage 0's width, deep ones one set per later block at its width."""
    shallow, deep = (models.count_parameters(_meta(SWIN, m, tokens=10), head=False) for m in ("vpt_shallow", "vpt_deep"))
    assert (shallow, deep) == (128 * 10, 12_032 * 10)


def _block_reference(blk, x: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One prompted Swin block written out window by window, image by image (eval mode): each window's tokens
    attend over [prompts, window] with the window's relative bias and shift mask, zero for prompt rows/columns;
    each image's prompt output is the mean over its windows; then the residuals and the MLP on all tokens."""
    import torch.nn.functional as F

    B, H, W, C = x.shape
    w, s, heads = blk.window, blk.shift, blk.attn.num_heads
    P, hd = p.shape[1], C // heads
    h, hp = blk.norm1(x), blk.norm1(p)
    h = torch.roll(h, (-s, -s), (1, 2)) if s else h
    bias = blk.attn.relative_position_bias_table[blk.attn.relative_position_index.view(-1)].view(w * w, w * w, -1)
    bias = F.pad(bias.permute(2, 0, 1), (P, 0, P, 0))
    out, pout = torch.zeros_like(h), torch.zeros_like(p)
    wins = [(i, j) for i in range(H // w) for j in range(W // w)]
    for b in range(B):
        for n, (i, j) in enumerate(wins):
            tok = torch.cat([hp[b], h[b, i * w:(i + 1) * w, j * w:(j + 1) * w].reshape(w * w, C)])
            a = blk.attn
            q, k, v = (lin(tok).view(-1, heads, hd).transpose(0, 1) for lin in (a.q, a.k, a.v))
            logits = q @ k.transpose(-1, -2) / hd ** 0.5 + bias
            if s:
                logits = logits + F.pad(blk.attn_mask[n], (P, 0, P, 0))
            o = a.proj((logits.softmax(-1) @ v).transpose(0, 1).reshape(-1, C))
            pout[b] += o[:P] / len(wins)
            out[b, i * w:(i + 1) * w, j * w:(j + 1) * w] = o[P:].view(w, w, C)
    out = torch.roll(out, (s, s), (1, 2)) if s else out
    seq = torch.cat([p, x.flatten(1, 2)], 1) + torch.cat([pout, out.flatten(1, 2)], 1)
    seq = seq + blk.mlp(blk.norm2(seq))
    return seq[:, P:].reshape(B, H, W, C), seq[:, :P]


@pytest.mark.parametrize("index", [0, 1])  # plain and shifted windows
def test_prompted_swin_block_matches_the_window_by_window_reference(index):
    m = _randomise(models.create_model(SWIN_MICRO, "linear", num_classes=3, img_size=32), seed=5)
    blk = m.blocks[index]
    x, p = torch.randn(2, 8, 8, 16), torch.randn(2, 3, 16)
    with torch.no_grad():
        (ox, op), (rx, rp) = blk(x, p), _block_reference(blk, x, p)
    assert blk.shift == 2 * index
    assert (ox - rx).abs().max() < 1e-5 and (op - rp).abs().max() < 1e-5


@pytest.mark.parametrize("method", ["vpt_shallow", "vpt_deep"])
def test_vpt_on_swin_keeps_images_apart_and_changes_the_output(method):
    """Each image's prompts average over its own windows only (VPT's code mixes images, docs/backbones.md §4): an
    image's logits do not depend on the rest of the batch. The prompts reach the head (pool over prompts and map)."""
    torch.manual_seed(0)
    m = _randomise(models.create_model(SWIN_MICRO, method, num_classes=3, img_size=32, tokens=3), seed=6)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        together = m(x)
        alone = torch.cat([m(x[i:i + 1]) for i in range(3)])
        assert (together - alone).abs().max() < 1e-5
        assert m.forward_features(x).shape == (3, 3 + 16, 32)  # 3 prompts + the 4x4 final map
        before = together.clone()
        for prompts in [m.prompt_in] + [b.prompts_in for b in m.blocks if b.prompts_in is not None]:
            prompts.prompt.zero_()
        assert (m(x) - before).abs().max() > 1e-3
    assert not m.method.mergeable


# ------------------------------------------------------------------------------------ VPT's prompt-pad (ConvNeXt)
def test_vpt_pad_frames_the_image_with_normalised_prompt_pixels():
    """VPT's prompt-pad (src/models/resnet.py): p columns each side from ``lr``, then p rows above and below from
    ``tb`` (which spans the widened image), both normalised with ImageNet's mean and std; the image in the middle."""
    from models.methods.vpt import IMAGENET_MEAN, IMAGENET_STD, PadPrompts

    pad, x = PadPrompts(size=8, width=2), torch.randn(2, 3, 8, 8)
    y = pad(x)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    tb, lr = ((pad.tb - mean) / std).detach(), ((pad.lr - mean) / std).detach()
    assert y.shape == (2, 3, 12, 12) and torch.equal(y[:, :, 2:10, 2:10], x)
    assert torch.allclose(y[:, :, 2:10, :2], lr[..., :2].expand(2, -1, -1, -1))
    assert torch.allclose(y[:, :, 2:10, 10:], lr[..., 2:].expand(2, -1, -1, -1))
    assert torch.allclose(y[:, :, :2], tb[:, :, :2].expand(2, -1, -1, -1))
    assert torch.allclose(y[:, :, 10:], tb[:, :, 2:].expand(2, -1, -1, -1))
    assert 0 <= pad.tb.min() and pad.tb.max() <= 1  # uniform(0, 1) before normalisation


def test_vpt_pad_count_and_output():
    assert models.count_parameters(_meta(CONVNEXT, "vpt_pad", tokens=10), head=False) == 12 * 10 * (224 + 10)
    m = _randomise(models.create_model(CONVNEXT_MICRO, "vpt_pad", num_classes=3, img_size=32, tokens=3), seed=7)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        y = m(x)
        m.pixel_in = None
        assert (m(x) - y).abs().max() > 1e-3 and not m.method.mergeable
