"""The data of one run: which splits a protocol reads (``data.tasks.protocol_splits``), loaded and decoded once
(``data.load_split``), and the loaders that feed them to the model, normalised as the configuration says."""
from __future__ import annotations

from dataclasses import dataclass

import data

from .config import RunConfig
from .dist import World
from .errors import RunError

__all__ = ["RunData", "build_data", "eval_loader"]


@dataclass
class RunData:
    benchmark: str  # vtab | fgvc | demo
    dataset: str  # canonical id
    splits: dict  # role (train, val, test) -> data.Split (or FileSplit when training from image files)
    loaders: dict  # role -> data.Loader / data.ImageLoader

    @property
    def num_classes(self) -> int:
        return self.splits["train"].num_classes


def _check_augmentation(cfg: RunConfig, benchmark: str, name: str) -> None:
    """Colour jitter and training from image files are FGVC options: VTAB trains without augmentation
    (docs/benchmarks.md §4), so a value that would silently do nothing is refused."""
    if cfg.color_jitter and benchmark != "fgvc":
        raise RunError(f"color_jitter={cfg.color_jitter:g}: colour jitter is part of the FGVC train augmentation; "
                       f"{name} ({benchmark}) trains without augmentation (docs/benchmarks.md §4), so set it to 0")
    if cfg.fgvc_source != "cache" and benchmark != "fgvc":
        raise RunError(f"fgvc_source={cfg.fgvc_source}: only FGVC trains from image files; {name} ({benchmark}) "
                       "is read from its cache (no augmentation, docs/benchmarks.md §4), so set it to cache")


def build_data(cfg: RunConfig, world: World = World()) -> RunData:
    """Load the protocol's splits (training, selection when clean, test) and build their loaders. FGVC trains with
    ``fgvc_aug`` (+ colour jitter), from the cache or, with ``fgvc_source: images``, from the original files
    decoded every epoch (data/images.py); VTAB and demo tasks train without augmentation. Under torchrun every
    loader is this rank's shard (``data.Loader(shard=...)``): the same global batches, each image evaluated once."""
    benchmark, name = data.resolve_task(cfg.dataset)
    _check_augmentation(cfg, benchmark, name)
    train_name, val_name = data.tasks.protocol_splits(benchmark, cfg.protocol)

    def load(split: str):
        return data.load_split(name, cfg.data_root, split, img_size=cfg.img_size, cache_dir=cfg.cache_dir,
                               num_workers=cfg.data_workers)

    exact = benchmark == "fgvc" and cfg.fgvc_source == "images"
    if exact:
        from data.fgvc import fgvc_file_split

        splits = {"train": fgvc_file_split(name, cfg.data_root, train_name), "test": load("test")}
    else:
        splits = {"train": load(train_name), "test": load("test")}
    if val_name:
        splits["val"] = load(val_name)
    mean, std = data.normalization(cfg.norm)
    aug = (data.Aug(cfg.fgvc_aug, color_jitter=cfg.color_jitter, interpolation=cfg.fgvc_interpolation)
           if benchmark == "fgvc" else None)
    if exact:
        tr = splits["train"]
        loaders = {"train": data.ImageLoader(tr.paths, tr.labels, cfg.batch_size, aug, cfg.img_size, mean=mean,
                                             std=std, device=cfg.device, seed=cfg.seed,
                                             num_workers=cfg.data_workers)}
    else:
        loaders = {"train": data.Loader(splits["train"], cfg.batch_size, shuffle=True, train=True, seed=cfg.seed,
                                        aug=aug, mean=mean, std=std, img_size=cfg.img_size, device=cfg.device,
                                        shard=(world.rank, world.size))}
    for role in ("val", "test"):
        if role in splits:
            loaders[role] = data.Loader(splits[role], cfg.eval_batch_size, shuffle=False, train=False, mean=mean,
                                        std=std, img_size=cfg.img_size, device=cfg.device,
                                        shard=(world.rank, world.size))
    return RunData(benchmark, name, splits, loaders)


def eval_loader(dataset: str, split: str, *, data_root, img_size: int, norm: str, batch_size: int, device,
                cache_dir=None):
    """(split, loader) of one split for evaluation only (``eval.py``): no shuffling, no augmentation."""
    _, name = data.resolve_task(dataset)
    s = data.load_split(name, data_root, split, img_size=img_size, cache_dir=cache_dir)
    mean, std = data.normalization(norm)
    return s, data.Loader(s, batch_size, shuffle=False, train=False, mean=mean, std=std, img_size=img_size,
                          device=device)
