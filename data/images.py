"""FGVC training batches decoded from the original image files every epoch, with the papers' own transforms.

The cached path (:class:`data.Loader` on a split from ``data.fgvc``) crops from the stored 256-px centre square of
each image, so its crops never reach the outer ends of the long side, and its RandomResizedCrop resamples a 256-px
source bilinearly without antialiasing (data/fgvc.py, *Deviations*). :class:`ImageLoader` is the exact
counterpart, for a run that must match the official pipelines (``train.py --fgvc-source images``): each image is
opened with PIL and transformed by torchvision as the papers' code does (torchvision's defaults where a paper names
them):

* ``resize_crop`` (ARC, docs/methods/arc.md §7.2): ``Resize(R)`` (shorter side, R = 256 for 224 px) →
  ``RandomCrop(S)`` → ``RandomHorizontalFlip``;
* ``rrc`` (HTA, docs/methods/hta.md §5.2; SNELL, docs/methods/snell.md §8.1):
  ``RandomResizedCrop(S, scale, ratio, interpolation)`` on the original image → ``RandomHorizontalFlip`` →
  ``ColorJitter(c, c, c)`` when ``color_jitter`` c > 0 (timm's order);
  SNELL's timm transform resamples bicubically (``Aug(interpolation="bicubic")``).

It costs a JPEG decode per image per epoch, spread over ``num_workers`` processes. Every random draw of sample i in
epoch e comes from a generator seeded by (seed, e, i), and the order from (seed, e): the batches are the same for any
number of workers and after a resume, and the training process's own random state is never touched.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from PIL import Image

from .errors import DataError
from .loader import IMAGENET_MEAN, IMAGENET_STD, Aug, _seed_for

__all__ = ["ImageLoader", "FileSplit", "image_transform"]


def image_transform(aug: Aug, img_size: int):
    """The torchvision transform of one training image (PIL RGB → uint8 (3, S, S)) for ``aug``."""
    from torchvision import transforms as T

    mode = T.InterpolationMode.BICUBIC if aug.interpolation == "bicubic" else T.InterpolationMode.BILINEAR
    S = int(img_size)
    if aug.kind == "resize_crop":
        steps = [T.Resize(int(round(256 * S / 224)), interpolation=mode), T.RandomCrop(S)]
    elif aug.kind == "rrc":
        steps = [T.RandomResizedCrop(S, scale=aug.scale, ratio=aug.ratio, interpolation=mode)]
    else:
        raise DataError(f"the image-file path trains with resize_crop or rrc, not {aug.kind!r}")
    steps.append(T.RandomHorizontalFlip(aug.hflip))
    if aug.color_jitter:
        c = float(aug.color_jitter)
        steps.append(T.ColorJitter(brightness=c, contrast=c, saturation=c))
    return T.Compose([*steps, T.PILToTensor()])


@dataclass
class FileSplit:
    """A split as image files (``data.fgvc.fgvc_file_split``): what :class:`ImageLoader` reads and results.json
    records, without the decoded array of :class:`data.Split`."""
    name: str
    split: str
    paths: list[Path]
    labels: list[int]
    num_classes: int
    info: dict[str, Any] = field(default_factory=dict)
    benchmark: str = "fgvc"

    def __len__(self) -> int:
        return len(self.paths)


class _Files(torch.utils.data.Dataset):
    """Sample i of the current epoch: the transformed image (uint8) and its label, drawn from its own generator."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], transform, seed: int):
        self.paths, self.labels, self.transform, self.seed = [str(p) for p in paths], list(labels), transform, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            with Image.open(self.paths[i]) as im:
                img = im.convert("RGB")
        except OSError as e:
            raise DataError(f"{self.paths[i]}: cannot read the image ({e})") from None
        with torch.random.fork_rng(devices=[]):  # torchvision draws from the CPU generator: seed it privately
            torch.default_generator.manual_seed(_seed_for(self.seed, self.epoch, 2 + i))  # (not the CUDA ones)
            return self.transform(img), self.labels[i]


class ImageLoader:
    """Training batches (x normalised float32 (B, 3, S, S) on ``device``, y (B,)) decoded from ``paths`` every epoch;
    the same interface as :class:`data.Loader` for training (``len``, ``set_epoch``, iteration, ``aug``,
    ``describe``). The last batch may be smaller (no drop_last), as in the cached path."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], batch_size: int, aug: Aug, img_size: int,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                 device: str | torch.device = "cpu", seed: int = 0, num_workers: int | None = None):
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        if not paths or len(paths) != len(labels):
            raise DataError(f"need one label per image and at least one image, got {len(paths)} and {len(labels)}")
        self.aug, self.img_size, self.batch_size = aug, int(img_size), int(batch_size)
        self.device, self.seed, self.epoch = torch.device(device), int(seed), 0
        self.num_workers = min(8, os.cpu_count() or 1) if num_workers is None else int(num_workers)
        self.files = _Files(paths, labels, image_transform(aug, img_size), self.seed)
        mean_t, std_t = (torch.tensor(v, device=self.device).view(1, 3, 1, 1) for v in (mean, std))
        self._scale, self._bias = 1.0 / (std_t * 255.0), -mean_t / std_t  # (x / 255 - mean) / std

    def __len__(self) -> int:
        return math.ceil(len(self.files) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int | None = None) -> torch.Tensor:
        """The sample order of an epoch (a pure function of seed and epoch, as :meth:`data.Loader.order`)."""
        e = self.epoch if epoch is None else int(epoch)
        return torch.randperm(len(self.files), generator=torch.Generator().manual_seed(_seed_for(self.seed, e, 0)))

    def describe(self) -> dict[str, Any]:
        return {"source": "image files, decoded every epoch", "n": len(self.files), "batch_size": self.batch_size,
                "aug": asdict(self.aug), "img_size": self.img_size,
                "num_workers": self.num_workers, "seed": self.seed, "device": str(self.device)}

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.files.epoch = epoch  # before the workers start: each gets a copy of the dataset
        batches = torch.utils.data.DataLoader(
            self.files, batch_size=self.batch_size, sampler=self.order(epoch).tolist(), num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(_seed_for(self.seed, epoch, 1)))  # its base seed: not global
        try:
            for x, y in batches:
                x = x.to(self.device, non_blocking=True).float().mul_(self._scale).add_(self._bias)
                yield x, y.to(self.device, non_blocking=True)
        except DataError as e:  # raised in a worker, it arrives wrapped in that worker's traceback: keep the message
            raise DataError(str(e).strip().splitlines()[-1].split("DataError: ", 1)[-1]) from None
        self.epoch = epoch + 1
