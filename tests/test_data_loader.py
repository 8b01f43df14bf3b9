"""data.Loader: order as a pure function of (seed, epoch), normalisation, tensor augmentations."""
from __future__ import annotations

import pytest
import torch

from data import HALF_MEAN, HALF_STD, IMAGENET_MEAN, IMAGENET_STD, Aug, DataError, Loader
from data.loader import rrc_theta
from data.split import Split


def fake_split(n=10, size=8, benchmark="vtab", stored=None, seed=0) -> Split:
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    info = {"stored": stored or ("resize_short_center_square" if benchmark == "fgvc" else "resize_square")}
    return Split(imgs, torch.arange(n) % 3, 3, "fake", "train", info, benchmark, img_size=size)


def _epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_len_and_eval_order_and_normalisation():
    s = fake_split(10)
    ld = Loader(s, 4, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert len(ld) == 3 and len(Loader(s, 4, drop_last=True)) == 2
    batches = _epoch(ld)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(torch.cat([b[1] for b in batches]), s.labels)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    ref = (s.images.float() / 255 - mean) / std
    assert x.dtype == torch.float32 and x.shape == (10, 3, 8, 8)
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=0)
    xh, _ = next(iter(Loader(s, 10, mean=HALF_MEAN, std=HALF_STD)))
    torch.testing.assert_close(xh, s.images.float() / 127.5 - 1, atol=1e-5, rtol=0)
    assert sum(len(y) for _, y in Loader(s, 4, drop_last=True)) == 8
    with pytest.raises(DataError):
        Loader(s, 0)


def test_order_is_a_function_of_seed_and_epoch():
    s = fake_split(50)
    a = Loader(s, 8, shuffle=True, seed=7)
    b = Loader(s, 8, shuffle=True, seed=7)
    e0 = [y for _, y in _epoch(a)]
    e1 = [y for _, y in _epoch(a)]  # a full pass advances the epoch by itself
    assert a.epoch == 2
    assert torch.equal(torch.cat(e0).sort().values, s.labels.sort().values)  # a permutation of the split
    assert not torch.equal(torch.cat(e0), torch.cat(e1))
    # a "resumed" loader sees exactly epoch 1's order
    b.set_epoch(1)
    assert all(torch.equal(u, v) for u, v in zip(e1, [y for _, y in _epoch(b)]))
    assert torch.equal(a.order(0), b.order(0)) and sorted(a.order(0).tolist()) == list(range(50))
    assert not torch.equal(Loader(s, 8, shuffle=True, seed=8).order(0), a.order(0))
    # state round trip; an interrupted epoch does not advance
    c = Loader(s, 8, shuffle=True, seed=7)
    c.set_state(a.get_state())
    assert c.epoch == 2 and torch.equal(c.order(), a.order())
    it = iter(c)
    next(it)
    del it
    assert c.epoch == 2
    # images follow the same permutation as labels
    x, y = next(iter(Loader(s, 50, shuffle=True, seed=3, mean=(0, 0, 0), std=(1, 1, 1))))
    perm = Loader(s, 50, shuffle=True, seed=3).order(0)
    assert torch.equal(y, s.labels[perm])
    torch.testing.assert_close(x * 255, s.images[perm].float(), atol=1e-3, rtol=0)


def test_cpu_output_buffers_are_never_shared_with_live_batches():
    s = fake_split(40)
    ld = Loader(s, 8, shuffle=True, seed=1)
    kept = [x for x, _ in ld]  # the consumer keeps every batch
    ptrs = {x.data_ptr() for x in kept}
    assert len(ptrs) == 5
    ref = [x.clone() for x, _ in Loader(s, 8, shuffle=True, seed=1)]
    assert all(torch.equal(a, b) for a, b in zip(kept, ref))


def test_train_without_aug_is_eval_for_vtab_and_aug_is_deterministic():
    s = fake_split(12, size=8)
    ev = _epoch(Loader(s, 12))
    tr = _epoch(Loader(s, 12, train=True))  # VTAB: resize-only, no augmentation by default
    assert torch.equal(ev[0][0], tr[0][0])
    for kind in ("flip", "resize_crop", "rrc"):
        a = Loader(s, 6, shuffle=True, train=True, aug=Aug(kind, color_jitter=0.4), seed=5)
        b = Loader(s, 6, shuffle=True, train=True, aug=Aug(kind, color_jitter=0.4), seed=5)
        ea, eb = _epoch(a), _epoch(b)
        assert all(torch.equal(u[0], v[0]) for u, v in zip(ea, eb)), kind
        assert ea[0][0].shape == (6, 3, 8, 8)
        assert not torch.equal(torch.cat([u[0] for u in ea]), torch.cat([u[0] for u in _epoch(a)])), kind
    # train=False ignores aug
    assert torch.equal(_epoch(Loader(s, 12, aug="rrc"))[0][0], ev[0][0])
    with pytest.raises(DataError, match="unknown augmentation"):
        Loader(s, 4, train=True, aug="mixup")


def test_resize_crop_outputs_are_crops_or_flipped_crops_of_the_stored_image():
    s = fake_split(16, size=12, benchmark="fgvc")  # stored 12, model input 8
    ld = Loader(s, 16, shuffle=False, train=True, aug="resize_crop", img_size=8, mean=(0, 0, 0), std=(1, 1, 1))
    x, _ = next(iter(ld))
    x = (x * 255).round().to(torch.uint8)
    flips = 0
    for i in range(16):
        src = s.images[i]
        found = None
        for t in range(5):
            for l in range(5):
                crop = src[:, t:t + 8, l:l + 8]
                if torch.equal(x[i], crop):
                    found = "plain"
                elif torch.equal(x[i], crop.flip(2)):
                    found = "flip"
        assert found, f"sample {i} is not a crop of its stored image"
        flips += found == "flip"
    assert 0 < flips < 16
    # eval on FGVC: the centre crop
    xe, _ = next(iter(Loader(s, 16, img_size=8, mean=(0, 0, 0), std=(1, 1, 1))))
    assert torch.equal((xe * 255).round().to(torch.uint8), s.images[:, :, 2:10, 2:10])
    # FGVC train default is rrc
    assert Loader(s, 4, train=True, img_size=8).aug.kind == "rrc"


def test_rrc_full_box_is_identity_and_flip_is_exact():
    s = fake_split(4, size=8)
    kw = dict(train=True, mean=(0, 0, 0), std=(1, 1, 1))
    same = Aug("rrc", hflip=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    x, _ = next(iter(Loader(s, 4, aug=same, **kw)))
    torch.testing.assert_close(x * 255, s.images.float(), atol=1e-3, rtol=0)
    flipped = Aug("rrc", hflip=1.0, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    x, _ = next(iter(Loader(s, 4, aug=flipped, **kw)))
    torch.testing.assert_close(x * 255, s.images.float().flip(3), atol=1e-3, rtol=0)
    # boxes respect scale / ratio and stay inside the image
    g = torch.Generator().manual_seed(0)
    th = rrc_theta(2000, 64, 64, (0.08, 1.0), (3 / 4, 4 / 3), 0.5, g)
    sx, sy, cx, cy = th[:, 0, 0].abs(), th[:, 1, 1], th[:, 0, 2], th[:, 1, 2]
    area = sx * sy
    assert area.min() >= 0.07 and area.max() <= 1.0 + 1e-6
    ratio = sx / sy  # torchvision rounds w and h to pixels, so small boxes overshoot 3/4..4/3 a little
    assert (ratio >= 0.69).all() and (ratio <= 1.45).all() and ratio.min() < 0.8 and ratio.max() > 1.25
    assert (cx - sx >= -1 - 1e-6).all() and (cx + sx <= 1 + 1e-6).all()
    assert (cy - sy >= -1 - 1e-6).all() and (cy + sy <= 1 + 1e-6).all()
    assert 0.4 < (th[:, 0, 0] < 0).float().mean() < 0.6


def test_eval_resize_when_stored_size_differs():
    s = fake_split(3, size=16)
    x, _ = next(iter(Loader(s, 3, img_size=8)))
    assert x.shape == (3, 3, 8, 8)
    d = Loader(s, 3, img_size=8).describe()
    assert d["img_size"] == 8 and d["stored_size"] == 16 and d["aug"]["kind"] == "none"
    with pytest.raises(DataError, match="resize_crop needs stored images >= img_size"):
        Loader(s, 3, train=True, aug="resize_crop", img_size=32)
