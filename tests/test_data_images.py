"""data.ImageLoader (train.py --fgvc-source images): FGVC training crops from the original files with the papers'
torchvision transforms, the exact counterpart of the cached path's centre-square crops (data/fgvc.py, *Deviations*)."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import data
from data import Aug, ImageLoader

ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def _ramp(path, w=120, h=40):
    """A horizontal ramp: column c has value 2c in every channel, so a crop's left column tells where it lies."""
    row = (2 * np.arange(w)).clip(0, 255).astype(np.uint8)
    Image.fromarray(np.repeat(np.repeat(row[None, :, None], h, 0), 3, 2)).save(path)
    return path


def _images(tmp_path, n=4):
    return [_ramp(tmp_path / f"{i}.png") for i in range(n)]


def test_resize_crop_reaches_the_whole_long_side(tmp_path):
    # ARC (docs/methods/arc.md §7.2): Resize(R) then RandomCrop(S) over the whole resized image, 96 x 32 here for
    # S = 28; the cached path crops its 32 x 32 centre square, whose left columns span only ramp values ~[64, 72]
    # (scaled)
    loader = ImageLoader(_images(tmp_path), [0, 1, 2, 3], 4, Aug("resize_crop", hflip=0.0), 28, mean=ZERO, std=ONE,
                         num_workers=0)
    lefts = []
    for epoch in range(6):
        loader.set_epoch(epoch)
        for x, y in loader:
            assert x.shape == (4, 3, 28, 28) and x.dtype == torch.float32 and y.tolist() != []
            lefts += (x[:, 0, :, 0].mean(1) * 255).tolist()  # the ramp value at each crop's left edge
    # Resize(32) keeps the ramp 0..238 over 96 columns: left offsets 0..68 map to values 0..~170
    assert min(lefts) < 40 and max(lefts) > 130


def test_rrc_of_the_whole_box_equals_resizing_the_original(tmp_path):
    # with scale 1 and the image's own ratio the crop box is the whole original image (not a centre square):
    # the output is torchvision's Resize((S, S)) of the file, to the pixel, for both resampling filters
    from torchvision import transforms as T

    path = _ramp(tmp_path / "wide.png")
    for interp, mode in (("bilinear", T.InterpolationMode.BILINEAR), ("bicubic", T.InterpolationMode.BICUBIC)):
        aug = Aug("rrc", hflip=0.0, scale=(1.0, 1.0), ratio=(3.0, 3.0), interpolation=interp)
        x, _ = next(iter(ImageLoader([path], [0], 1, aug, 24, mean=ZERO, std=ONE, num_workers=0)))
        with Image.open(path) as im:
            ref = T.PILToTensor()(T.Resize((24, 24), interpolation=mode)(im.convert("RGB")))
        assert torch.equal((x[0] * 255).round().to(torch.uint8), ref), interp


def test_batches_depend_on_seed_and_epoch_only_and_leave_the_training_rng_alone(tmp_path):
    paths = _images(tmp_path, 6)
    aug = Aug("rrc", color_jitter=0.4)

    def epoch(workers, e, seed=3):
        loader = ImageLoader(paths, list(range(6)), 4, aug, 20, seed=seed, num_workers=workers)
        loader.set_epoch(e)
        return list(loader)

    state = torch.get_rng_state()
    cuda_seeded = []
    with pytest.MonkeyPatch.context() as mp:  # nor are the CUDA generators re-seeded (dropout on a GPU draws there)
        mp.setattr(torch.cuda, "manual_seed_all", lambda s: cuda_seeded.append(s))
        in_process = epoch(0, 1)
    assert torch.equal(torch.get_rng_state(), state) and cuda_seeded == []  # torchvision drew from private state
    workers = epoch(2, 1)
    assert [b[1].tolist() for b in in_process] == [b[1].tolist() for b in workers] and len(in_process) == 2
    assert all(torch.equal(a[0], b[0]) for a, b in zip(in_process, workers))  # same crops in worker processes
    assert not torch.equal(epoch(0, 2)[0][0], in_process[0][0])  # another epoch, other crops
    assert not torch.equal(epoch(0, 1, seed=4)[0][0], in_process[0][0])


def test_bad_input_is_one_data_error(tmp_path):
    with pytest.raises(data.DataError, match="resize_crop or rrc"):
        ImageLoader(_images(tmp_path, 1), [0], 1, Aug("none"), 20)
    with pytest.raises(data.DataError, match="unknown interpolation"):
        Aug("rrc", interpolation="nearest")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(data.DataError, match="broken.jpg: cannot read the image"):
        next(iter(ImageLoader([broken], [0], 1, Aug("rrc"), 20, num_workers=0)))


def test_train_py_trains_fgvc_from_the_image_files(tmp_path, monkeypatch):
    # the whole path: train.py --fgvc-source images on a small CUB-style tree (3 classes; the documented count is
    # patched)
    import train
    from data import fgvc
    from data.fgvc_splits import write_splits
    from tests.test_data_fgvc import fake_cub

    root = fake_cub(tmp_path / "CUB_200_2011", n_classes=3, n_train=6, n_test=2)
    write_splits("cub", root, val_size=3)
    monkeypatch.setitem(fgvc.FGVC_NUM_CLASSES, "cub", 3)
    monkeypatch.setenv("VIT_PEFT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    code = train.main(["--method", "lora", "--dataset", "cub", "--data-root", str(root), "--arch", "vit_micro_patch8",
                       "--img-size", "32", "--pretrained", "none", "--batch-size", "5", "--epochs", "2",
                       "--fgvc-source", "images", "--fgvc-aug", "resize_crop", "--fgvc-interpolation", "bicubic",
                       "--data-workers", "0", "--device", "cpu", "--out", str(out)])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert res["train_source"] == "image files" and res["train_aug"]["kind"] == "resize_crop"
    assert res["train_aug"]["interpolation"] == "bicubic" and res["splits"]["train"]["n"] == 3 * 6 - 3
    assert res["splits"]["train"]["source"].startswith("image files") and res["splits"]["train"]["regenerated"]
    assert "resize" not in res["splits"]["train"] and res["splits"]["test"]["resize"] == "bilinear"
    assert not any("train-" in p.name for p in (tmp_path / "cache").rglob("*"))  # the train split was never cached
    assert len(res["history"]) == 2 and os.path.exists(out / "adapter.safetensors")
    # a VTAB-style task has no image-file path: one clear error
    assert train.main(["--dataset", "demo", "--fgvc-source", "images", "--epochs", "1",
                       "--out", str(tmp_path / "vtab")]) == 2
