"""The self-supervised ViT-B/16 backbones of SNELL Table 2 (docs/benchmarks.md §5 "MAE and MoCo v3"): MAE through
timm's name ``vit_base_patch16_224.mae`` and as MAE's own file, MoCo v3 as its linear-probe and pre-training
checkpoints, into our unchanged ViT; the refusals; and a CPU smoke run of reproduce/snell_vtab_mae.sh and
reproduce/snell_vtab_mocov3.sh. CPU only, no network: timm's hub call is replaced by a local file, and every
checkpoint is written by the test in the layout the official code writes (MAE ``{'model': ...}``; moco-v3
``main_lincls.py`` / ``main_moco.py``: ``{'state_dict': {'module.…': …}, ...}``)."""
from __future__ import annotations

import csv
import hashlib
import os
import subprocess
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torch import nn

import models
from reproduce import taskcfg
from models import pretrained as P
from models.vit import build_vit
from test_reproduce_smoke import finished_run, make_vtab_tree

ROOT = Path(__file__).resolve().parents[1]
D, HEADS, PATCH, DEPTH = 64, 2, 8, 2  # = our vit_micro_patch8
MAE = "vit_base_patch16_224.mae"
pytestmark = pytest.mark.usefixtures("no_hub")  # conftest.py: no test here may download




def _randomise(m: nn.Module, seed: int) -> nn.Module:
    """Every tensor random (LayerNorms and biases too, so a mix-up in any of them shows)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return m.eval()


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _one_line_error(excinfo, path) -> str:
    """The refusal is one line that starts with the file's path."""
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.startswith(str(Path(path).resolve())), msg
    return msg


# ------------------------------------------------------------------------------------------------------------ MAE
@pytest.fixture(scope="module")
def mae():
    """timm's MAE model (pretrained=False: no head) with random weights, the stand-in for MAE's released encoder."""
    torch.manual_seed(0)
    return _randomise(timm.create_model(MAE, pretrained=False), seed=1)


@pytest.fixture(scope="module")
def x224():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))


def test_timm_mae_model_is_our_architecture():
    """Why models/vit.py needs no option (docs/benchmarks.md §5): timm's MAE model pools the cls token after a final
    LayerNorm (no fc_norm, no global average pooling), as SNELL's model does; what is not ours is refused."""
    with torch.device("meta"):
        shell = timm.create_model(MAE, pretrained=False, num_classes=0)
        gap = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, global_pool="avg")
        clip = timm.create_model("vit_base_patch16_clip_224.openai", pretrained=False, num_classes=0)
    assert shell.global_pool == "token" and P.timm_differences(shell) == []
    assert P.timm_differences(gap) == ["pooling through fc_norm instead of a final LayerNorm"]
    assert "a LayerNorm before the blocks (norm_pre)" in P.timm_differences(clip)
    with torch.device("meta"), pytest.raises(ValueError, match=r"differs from our ViT \(a LayerNorm before the "
                                                               r"blocks \(norm_pre\); LayerNorm eps 1e-05"):
        models.create_model("vit_base_patch16_224", "linear", pretrained="vit_base_patch16_clip_224.openai")


def test_mae_timm_name_loads_to_timm_features_and_hashes_the_cached_file(monkeypatch, no_hub, tmp_path, mae, x224):
    """``--pretrained vit_base_patch16_224.mae``: the hub file is the random MAE model saved into a stand-in Hugging
    Face cache and read back by the replaced hub call; name resolution, the architecture checks, the qkv split and
    the hashing of the cached file are the real code. The features equal timm's own model's."""
    import huggingface_hub.constants

    snap = tmp_path / "models--timm--vit_base_patch16_224.mae" / "snapshots" / "c0ffee"
    snap.mkdir(parents=True)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("c0ffee")
    cached = snap / "model.safetensors"
    save_file({k: v.contiguous() for k, v in mae.state_dict().items()}, str(cached))
    calls = []

    def fake_create(name, pretrained=False, **kw):
        calls.append((name, pretrained, kw))
        m = no_hub(name, pretrained=False, **kw)
        if pretrained:
            m.load_state_dict(load_file(str(cached)))
        return m

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(timm, "create_model", fake_create)
    m = models.create_model("vit_base_patch16_224", "linear", num_classes=5, pretrained=MAE).eval()
    assert (MAE, True, {"num_classes": 0}) in calls
    info = m.pretrained_info
    assert info["kind"] == "timm" and info["source"] == MAE and info["checkpoint_arch"] == "ViT-B/16"
    assert info["path"] == str(cached) and info["sha256"] == _sha(cached)
    assert info["qkv_fused"] is True and info["ignored_keys"] == [] and info["pos_embed_resampled"] is None
    with torch.no_grad():
        ours, ref = m.forward_features(x224), mae.forward_features(x224)
        assert (ours - ref).abs().max() < 1e-5
        # the pooled feature the head reads: timm's own pooling (cls token after the final LayerNorm)
        assert (ours[:, 0] - mae.forward_head(ref, pre_logits=True)).abs().max() < 1e-5


def test_mae_official_file_loads_and_drops_a_decoder(tmp_path, mae, x224):
    """MAE's own ``mae_pretrain_vit_base.pth`` layout ({'model': encoder, timm keys, fused qkv, no head}), and a full
    pre-training checkpoint that also carries the decoder (dropped, listed)."""
    sd = {k: v.clone() for k, v in mae.state_dict().items()}
    path = tmp_path / "mae_pretrain_vit_base.pth"
    torch.save({"model": sd}, path)
    m = models.create_model("vit_base_patch16_224", "linear", num_classes=5, pretrained=str(path)).eval()
    info = m.pretrained_info
    assert (info["kind"], info["sha256"], info["qkv_fused"], info["ignored_keys"]) == ("pth", _sha(path), True, [])
    with torch.no_grad():
        assert (m.forward_features(x224) - mae.forward_features(x224)).abs().max() < 1e-5
    decoder = {"mask_token": torch.zeros(1, 1, 512), "decoder_embed.weight": torch.zeros(512, 768),
               "decoder_blocks.0.norm1.weight": torch.ones(512), "decoder_pred.weight": torch.zeros(768, 512)}
    torch.save({"model": {**sd, **decoder}}, tmp_path / "mae_visualize.pth")
    m2 = models.create_model("vit_base_patch16_224", "linear", num_classes=5,
                             pretrained=str(tmp_path / "mae_visualize.pth"))
    assert m2.pretrained_info["ignored_keys"] == ["decoder_*, mask_token (4 tensors, the MAE decoder)"]
    assert m2.pretrained_info["backbone_sha256"] == info["backbone_sha256"]  # the same backbone tensors


# -------------------------------------------------------------------------------------------------------- MoCo v3
@pytest.fixture(scope="module")
def moco():
    """A small timm ViT with MoCo v3's ViT key layout (vits.vit_base is timm's VisionTransformer) and a linear head."""
    torch.manual_seed(3)
    m = TimmViT(img_size=32, patch_size=PATCH, embed_dim=D, depth=DEPTH, num_heads=HEADS, num_classes=10)
    return _randomise(m, seed=4)


@pytest.fixture(scope="module")
def x32():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def _lincls_file(path, model_sd) -> Path:
    """moco-v3 ``main_lincls.py``'s checkpoint: the DistributedDataParallel state dict and the training state."""
    torch.save({"epoch": 90, "arch": "vit_base", "state_dict": {f"module.{k}": v for k, v in model_sd.items()},
                "best_acc1": torch.tensor(76.7),
                "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(10, D)}},
                              "param_groups": [{"lr": 0.1, "momentum": 0.9, "dampening": 0, "weight_decay": 0.0,
                                                "nesterov": False, "params": [0, 1]}]}}, path)
    return Path(path)


def _projector(seed: int) -> dict:
    """moco-v3's 3-layer projection MLP (``_build_mlp``: Linear without bias, BatchNorm1d, ReLU; last BN affine-free)
    as it sits in ``base_encoder.head``."""
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(D, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32, bias=False),
                        nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 16, bias=False), nn.BatchNorm1d(16, affine=False))
    return {f"head.{k}": v for k, v in mlp.state_dict().items()}


def _pretrain_file(path, base_sd, momentum_sd, extra=None) -> Path:
    """moco-v3 ``main_moco.py``'s checkpoint: base and momentum encoders (heads = projectors), the predictor."""
    backbone = lambda sd: {k: v for k, v in sd.items() if not k.startswith("head.")}  # noqa: E731
    sd = {**{f"module.base_encoder.{k}": v for k, v in {**backbone(base_sd), **_projector(6)}.items()},
          **{f"module.momentum_encoder.{k}": v for k, v in {**backbone(momentum_sd), **_projector(7)}.items()},
          "module.predictor.0.weight": torch.zeros(32, 16), "module.predictor.1.running_mean": torch.zeros(32),
          "module.predictor.3.weight": torch.zeros(16, 32), **(extra or {})}
    torch.save({"epoch": 300, "arch": "vit_base", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []},
                "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                           "_growth_tracker": 0}}, path)
    return Path(path)


def _micro(source):
    return models.create_model("vit_micro_patch8", "linear", num_classes=3, img_size=32, pretrained=str(source)).eval()


def test_mocov3_linear_checkpoint_loads_to_the_same_features(tmp_path, moco, x32):
    """``--pretrained .../linear-vit-b-300ep.pth.tar``: a ``.pth.tar`` read with weights_only, ``state_dict``
    unwrapped, ``module.`` stripped, the fused qkv split, the linear-probe head dropped, the file hashed."""
    path = _lincls_file(tmp_path / "linear-vit-b-300ep.pth.tar", moco.state_dict())
    m = _micro(path)
    with torch.no_grad():
        assert (m.forward_features(x32) - moco.forward_features(x32)).abs().max() < 1e-5
    info = m.pretrained_info
    assert (info["kind"], info["source"], info["sha256"]) == ("pth", str(path.resolve()), _sha(path))
    assert info["qkv_fused"] is True and sorted(info["ignored_keys"]) == ["head.bias", "head.weight"]
    assert info["checkpoint_arch"] == "ViT(width 64, depth 2, patch 8)" and m.head.weight.shape == (3, D)


def test_mocov3_pretraining_checkpoint_loads_the_base_encoder(tmp_path, moco, x32):
    """``vit-b-300ep.pth.tar``: base_encoder kept (as main_lincls.py keeps it), momentum encoder, predictor and the
    projection MLP dropped and listed."""
    momentum = _randomise(TimmViT(img_size=32, patch_size=PATCH, embed_dim=D, depth=DEPTH, num_heads=HEADS,
                                  num_classes=10), seed=8)
    path = _pretrain_file(tmp_path / "vit-b-300ep.pth.tar", moco.state_dict(), momentum.state_dict())
    m = _micro(path)
    with torch.no_grad():
        assert (m.forward_features(x32) - moco.forward_features(x32)).abs().max() < 1e-5
        assert (m.forward_features(x32) - momentum.forward_features(x32)).abs().max() > 1e-2
    ignored = m.pretrained_info["ignored_keys"]
    n_momentum = len(momentum.state_dict()) - 2 + len(_projector(7))
    assert ignored[:2] == [f"momentum_encoder.* ({n_momentum} tensors, MoCo v3 pre-training only)",
                           "predictor.* (3 tensors, MoCo v3 pre-training only)"]
    assert sorted(ignored[2:]) == sorted(_projector(6))  # base_encoder.head: the projector, a head like any other
    assert m.pretrained_info["sha256"] == _sha(path)


def test_files_that_do_not_fit_are_one_clear_error(tmp_path, moco):
    wide = TimmViT(img_size=32, patch_size=PATCH, embed_dim=96, depth=DEPTH, num_heads=2, num_classes=10)
    path = _lincls_file(tmp_path / "wide.pth.tar", wide.state_dict())
    with pytest.raises(ValueError) as e:
        _micro(path)
    assert "weights are ViT(width 96, depth 2, patch 8) but --arch is vit_micro_patch8" in _one_line_error(e, path)

    sd = dict(moco.state_dict())
    sd["blocks.1.mlp.fc2.weight"] = sd["blocks.1.mlp.fc2.weight"][:, :100]
    path = _lincls_file(tmp_path / "shape.pth.tar", sd)
    with pytest.raises(ValueError) as e:
        _micro(path)
    assert "shape mismatch for blocks.1.mlp.fc2.weight: checkpoint (64, 100), model (64, 256)" in \
        _one_line_error(e, path)

    path = _lincls_file(tmp_path / "extra.pth.tar", {**moco.state_dict(), "blocks.0.attn.rel_pos_h": torch.zeros(3)})
    with pytest.raises(ValueError) as e:
        _micro(path)
    assert "tensors vit_micro_patch8 does not: ['blocks.0.attn.rel_pos_h']" in _one_line_error(e, path)

    path = _pretrain_file(tmp_path / "queue.pth.tar", moco.state_dict(), moco.state_dict(),
                          extra={"module.queue": torch.zeros(16, 8)})
    with pytest.raises(ValueError) as e:
        _micro(path)
    assert "holds base_encoder.* (MoCo v3) but also ['queue']" in _one_line_error(e, path)

    resnet = {"module.base_encoder.conv1.weight": torch.zeros(64, 3, 7, 7), "module.base_encoder.fc.0.weight":
              torch.zeros(32, 2048), "module.momentum_encoder.conv1.weight": torch.zeros(64, 3, 7, 7),
              "module.predictor.0.weight": torch.zeros(32, 16)}
    path = tmp_path / "r-50-300ep.pth.tar"
    torch.save({"state_dict": resnet}, path)
    with pytest.raises(ValueError) as e:
        _micro(path)
    assert "no 'patch_embed.proj.weight': not a ViT backbone" in _one_line_error(e, path)


def test_missing_ssl_files_name_their_download(tmp_path):
    model = build_vit("vit_micro_patch8", img_size=32)
    with pytest.raises(ValueError, match=r"weights/linear-vit-b-300ep\.pth\.tar does not exist: download it \(wget -O "
                                         r"weights/linear-vit-b-300ep\.pth\.tar https://dl\.fbaipublicfiles\.com/"
                                         r"moco-v3/vit-b-300ep/linear-vit-b-300ep\.pth\.tar\) \("):
        P.load_pretrained(model, "weights/linear-vit-b-300ep.pth.tar", "vit_base_patch16_224")
    with pytest.raises(ValueError, match=r"mae_pretrain_vit_base\.pth does not exist: download it \(wget -O \S+ "
                                         r"https://dl\.fbaipublicfiles\.com/mae/pretrain/mae_pretrain_vit_base\.pth\) "
                                         r"or pass the timm name vit_base_patch16_224\.mae"):
        P.load_pretrained(model, str(tmp_path / "mae_pretrain_vit_base.pth"), "vit_base_patch16_224")


# ---------------------------------------------------------------------------------------------------- smoke runs
def _printed(backbone: str) -> dict[str, dict[str, float]]:
    """Table 2's printed group means per row label, from reproduce/paper_tables/."""
    out: dict[str, dict[str, float]] = {}
    with open(ROOT / "reproduce/paper_tables/snell_table2_vtab_mae_mocov3.csv") as f:
        for r in csv.DictReader(f):
            if r["backbone"] == backbone:
                out.setdefault(r["method"], {})[r["task"]] = float(r["value"])
    return out


SCRIPTS = {"snell_vtab_mae.sh": ("mae", "vit_b16_mae"), "snell_vtab_mocov3.sh": ("mocov3", "vit_b16_mocov3")}
ROW_LABELS = {"full": "Full", "adapter8": "Adapter-8", "adapter32": "Adapter-32", "vpt_shallow": "VPT-Shallow",
              "vpt_deep": "VPT-Deep", "linear": "Linear", "bias": "Bias", "lora8": "LoRA-8", "lora16": "LoRA-16",
              "snell8": "SNELL-8"}


def test_table2_scripts_smoke_run_every_row_with_the_printed_numbers(tmp_path):
    """Both scripts at once (three rows trained: one-epoch runs of the 2-block test ViT on a generated tree),
    each row ending in its verification table against its own Table 2 row."""
    make_vtab_tree(tmp_path / "vtab", ["cifar"])
    trained = {"snell_mae_full", "snell_mae_snell8", "snell_mocov3_linear"}  # the others: finished (synthetic) runs
    for bb, _ in SCRIPTS.values():
        for row in ROW_LABELS:
            if f"snell_{bb}_{row}" not in trained:
                name = f"snell_{bb}_{row}"
                spec = taskcfg.load(ROOT / "reproduce" / "configs" / f"{name}.yaml")
                finished_run(tmp_path / "runs" / bb / name, taskcfg.resolve(spec, "cifar"), seed=0)
    env = {**os.environ, "TASKS": "cifar", "EPOCHS": "1", "ARCH": "vit_micro_patch8", "WEIGHTS": "none",
           "IMG_SIZE": "32", "VTAB_ROOT": str(tmp_path / "vtab"), "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1"}  # each script its own OUT and decode cache: the two run at once
    for script in SCRIPTS:
        assert os.access(ROOT / "reproduce" / script, os.X_OK), script
    procs = {s: subprocess.Popen([str(ROOT / "reproduce" / s)], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True,
                                 env={**env, "OUT": str(tmp_path / "runs" / b), "VIT_PEFT_CACHE": str(tmp_path / b)})
             for s, (b, _) in SCRIPTS.items()}
    outputs = {s: p.communicate(timeout=300)[0] for s, p in procs.items()}
    for script, (bb, backbone) in SCRIPTS.items():
        out = outputs[script]
        assert procs[script].returncode == 0, out[-3000:]
        printed = _printed(backbone)
        text = (ROOT / "reproduce" / script).read_text()
        stems = [w for line in text.splitlines() if line.startswith("ROWS") for w in line.split('"')[1].split()]
        assert stems == [f"snell_{bb}_{r}" for r in ROW_LABELS]  # Table 2's order
        for row, label in ROW_LABELS.items():
            config = f"snell_{bb}_{row}"
            assert (tmp_path / "runs" / bb / config / "cifar" / "seed0" / "results.json").is_file()
            table = out[out.index(f"{config}: 1 run(s)"):]
            table = table[:table.index("Out of tolerance")]
            assert f"paper rows: SNELL Table 2, {label} ({backbone})" in table
            lines = {line.split("(")[0].split("=")[0].strip(): line for line in table.splitlines()}
            for key, group in (("mean Natural", "mean_natural"), ("mean Specialized", "mean_specialized"),
                               ("mean Structured", "mean_structured"), ("mean_groups", "mean_groups")):
                assert f" {printed[label][group]:.1f} " in lines[key], (config, key, lines[key])
