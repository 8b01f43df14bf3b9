"""Portable adapters: a run's adapter.safetensors alone rebuilds its model (models.load_adapter, eval.py --adapter),
and eval.py --export-timm writes a state dict timm's own ViT loads strictly with the same outputs."""
from __future__ import annotations

import json
import shutil
import stat

import pytest
import torch

import eval as E
import models
from models.portable import ADAPTER_FORMAT, read_adapter
from test_train import FAST, run


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("portable") / "run"
    run(["--method", "lora", "--method-args", "rank=2", "--dataset", "demo", *FAST, "--epochs", "2", "--out", out],
        cache)
    return out


def _accuracy_line(text: str) -> str:
    return next(line for line in text.splitlines() if "% top-1" in line)


def test_the_adapter_file_describes_its_model(trained):
    tensors, meta = read_adapter(trained / "adapter.safetensors")
    assert stat.S_IMODE((trained / "adapter.safetensors").stat().st_mode) == 0o644
    res = json.loads((trained / "results.json").read_text())
    assert meta["format"] == ADAPTER_FORMAT and meta["version"]
    assert (meta["arch"], meta["img_size"], meta["num_classes"], meta["method"]) == ("vit_micro_patch8", "32", "4",
                                                                                      "lora")
    assert json.loads(meta["method_args"]) == json.loads(json.dumps(res["method_args"]))  # resolved, defaults too
    assert (meta["dataset"], meta["norm"], meta["seed"], meta["epoch"], meta["pretrained"]) == (
        "demo", "imagenet", "42", "2", "none")
    assert set(tensors) == {n for n, p in E.model_from_run(trained, "cpu")[0].named_parameters() if p.requires_grad}


def test_load_adapter_rebuilds_the_runs_model_from_the_file_alone(trained, tmp_path, capsys, cache, monkeypatch):
    alone = tmp_path / "elsewhere" / "cifar_lora.safetensors"
    alone.parent.mkdir()
    shutil.copy(trained / "adapter.safetensors", alone)  # without config.json, results.json, train_state.pt
    model = models.load_adapter(alone).eval()
    ref, _ = E.model_from_run(trained, "cpu")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), ref.eval()(x))  # same random backbone (seed), same tensors
    monkeypatch.setenv("VIT_PEFT_CACHE", str(cache))
    assert E.main(["--run", str(trained), "--device", "cpu"]) == 0
    by_run = _accuracy_line(capsys.readouterr().out)
    assert E.main(["--adapter", str(alone), "--device", "cpu"]) == 0  # dataset and normalisation from the file
    assert _accuracy_line(capsys.readouterr().out) == by_run


def test_load_adapter_refuses_other_weights_and_files_without_a_description(trained, tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.pth"
    torch.manual_seed(123)
    torch.save(models.create_model("vit_micro_patch8", "full", num_classes=4, img_size=32).state_dict(), other)
    relabelled = tmp_path / "relabelled.safetensors"
    tensors, meta = read_adapter(trained / "adapter.safetensors")
    fake_hash = {**meta, "pretrained": str(other), "pretrained_sha256": "0" * 64}
    save_file(tensors, str(relabelled), metadata=fake_hash)
    with pytest.raises(ValueError, match="differ from those .* was trained with"):
        models.load_adapter(relabelled)
    legacy = tmp_path / "legacy.safetensors"
    save_file(tensors, str(legacy), metadata={"epoch": "2", "method": "lora"})  # as adapters were written before
    with pytest.raises(ValueError, match="carries no model description.*eval.py --run"):
        models.load_adapter(legacy)


def test_eval_exports_a_state_dict_timm_loads_strictly_with_the_same_outputs(trained, tmp_path, capsys, cache,
                                                                            monkeypatch):
    from safetensors.torch import load_file
    from timm.models.vision_transformer import VisionTransformer

    monkeypatch.setenv("VIT_PEFT_CACHE", str(cache))
    out = tmp_path / "timm.safetensors"
    assert E.main(["--run", str(trained), "--device", "cpu", "--export-timm", str(out)]) == 0
    assert f"timm export: {out}" in capsys.readouterr().out
    ours, _ = E.model_from_run(trained, "cpu")
    ref = VisionTransformer(**models.timm_config(ours)).eval()
    ref.load_state_dict(load_file(str(out)), strict=True)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert (ref(x) - ours.eval()(x)).abs().max() < 1e-5
