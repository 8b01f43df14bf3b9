"""In-memory batch loader over a decoded :class:`data.Split`.

* No decoding, no worker processes: batches are gathered from the cached uint8 array.
* Only uint8 crosses to the device; conversion to float, augmentation and normalisation run on
  the target device.  On CUDA the whole split is uploaded once when it fits
  (``resident='auto'``, up to 4 GiB), otherwise batches go through two pinned staging buffers.
* Order and augmentation are a pure function of ``(seed, epoch)``: each epoch uses its own
  ``torch.Generator``.  ``set_epoch(e)`` selects the epoch; after a complete pass the epoch
  advances by one by itself, so both ``for e in ...: loader.set_epoch(e)`` and plain repeated
  iteration give the same sequence, and a resumed run only needs ``set_epoch(start_epoch)``.
* Yields ``(images float32 (B, 3, img_size, img_size) normalised, labels int64)`` on ``device``.

Augmentation (``train=True`` only; ``aug`` is a name or :class:`Aug`):

==================  ========================================================================
``'none'``          deterministic eval transform (VTAB default: resize-only, as the papers)
``'flip'``          + horizontal flip p=0.5 (RLRR's optional per-task flip)
``'resize_crop'``   random ``img_size`` crop of the stored image + flip (ARC / RLRR / VPT FGVC)
``'rrc'``           RandomResizedCrop scale (0.08, 1), ratio (3/4, 4/3) + flip (timm / SNELL /
                    HTA FGVC; default for FGVC when ``aug`` is None)
==================  ========================================================================

``Aug(color_jitter=0.4)`` adds brightness / contrast / saturation jitter (timm's
``color_jitter=0.4`` used by SNELL), applied in a fixed order (torchvision randomises it).
Eval transform: identity when the stored size equals ``img_size``; FGVC: centre crop; otherwise
a bicubic antialiased tensor resize.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from .errors import DataError
from .split import Split

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)

AUG_KINDS = ("none", "flip", "resize_crop", "rrc")
RESIDENT_MAX_BYTES = 4 << 30


@dataclass(frozen=True)
class Aug:
    kind: str = "none"
    hflip: float = 0.5
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    color_jitter: float = 0.0
    interpolation: str = "bilinear"  # rrc resampling: bilinear (torchvision's default) or bicubic (timm's, SNELL)

    def __post_init__(self) -> None:
        if self.kind not in AUG_KINDS:
            raise DataError(f"unknown augmentation {self.kind!r}; use one of {', '.join(AUG_KINDS)}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise DataError(f"unknown interpolation {self.interpolation!r}; use bilinear or bicubic")


def make_aug(aug: Any, benchmark: str) -> Aug:
    if aug is None:
        return Aug("rrc" if benchmark == "fgvc" else "none")
    if isinstance(aug, Aug):
        return aug
    if isinstance(aug, str):
        return Aug("none" if aug.lower() in ("", "none") else aug.lower())
    if isinstance(aug, dict):
        return Aug(**aug)
    raise DataError(f"aug must be None, a name ({', '.join(AUG_KINDS)}), a dict or data.Aug; got {aug!r}")


def _seed_for(seed: int, epoch: int, stream: int | str) -> int:
    h = hashlib.sha256(f"vit_peft.loader:{int(seed)}:{int(epoch)}:{stream}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


class Loader:
    def __init__(self, split: Split, batch_size: int, shuffle: bool = False, train: bool = False,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                 img_size: int | None = None, device: str | torch.device = "cpu", seed: int = 0,
                 drop_last: bool = False, aug: Any = None, resident: bool | str = "auto",
                 shard: tuple[int, int] = (0, 1)):
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.rank, self.world = (int(v) for v in shard)
        if not 0 <= self.rank < self.world:
            raise DataError(f"shard {shard}: the rank must be in [0, world size)")
        if len(split) == 0:
            raise DataError(f"split {split.name}/{split.split} is empty")
        self.split = split
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.train = bool(train)
        self.img_size = int(img_size or split.img_size)
        self.device = torch.device(device)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.aug = make_aug(aug, split.benchmark) if self.train else Aug("none")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise DataError("mean and std need 3 values (RGB)")
        self.epoch = 0
        stored = split.stored_size
        if self.aug.kind == "resize_crop" and stored < self.img_size:
            raise DataError(f"resize_crop needs stored images >= img_size ({stored} < {self.img_size}); "
                            f"load the split with img_size={self.img_size}")
        self._resident_mode = resident
        self._dev_images: torch.Tensor | None = None
        self._dev_labels: torch.Tensor | None = None
        self._pinned: list[torch.Tensor] = []
        self._events: list[Any] = []
        self._cpu_buf: torch.Tensor | None = None
        self._pool: list[tuple[torch.Tensor, int]] = []
        self._mean255 = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self._inv_std255 = 1.0 / (torch.tensor(self.std, device=self.device).view(1, 3, 1, 1) * 255.0)
        self._bias = -self._mean255 * self._inv_std255  # (x/255 - mean)/std == x*inv + bias

    # -- bookkeeping -------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Batches per epoch (every rank of a sharded training loader yields as many)."""
        if self.world > 1 and not self.shuffle:  # this rank's part of the split
            n = len(range(self.rank, len(self.split), self.world))
            return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return len(self.global_sizes())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def get_state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "seed": self.seed}

    def set_state(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.seed = int(state.get("seed", self.seed))

    def describe(self) -> dict[str, Any]:
        """Everything about the input pipeline worth logging with a run."""
        return {"dataset": self.split.name, "split": self.split.split, "n": len(self.split),
                "batch_size": self.batch_size, "shuffle": self.shuffle, "train": self.train,
                "aug": asdict(self.aug), "mean": self.mean, "std": self.std, "img_size": self.img_size,
                "stored_size": self.split.stored_size, "stored": self.split.info.get("stored"),
                "resize": self.split.info.get("resize"), "format": self.split.info.get("format"),
                "seed": self.seed, "drop_last": self.drop_last, "device": str(self.device)}

    def order(self, epoch: int | None = None) -> torch.Tensor:
        """The sample order of an epoch (a pure function of seed and epoch)."""
        e = self.epoch if epoch is None else int(epoch)
        n = len(self.split)
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(_seed_for(self.seed, e, 0))
        return torch.randperm(n, generator=g)

    # -- data movement -----------------------------------------------------------------------------
    def _use_resident(self) -> bool:
        if self.device.type == "cpu":
            return False
        if self._resident_mode == "auto":
            return self.split.images.numel() <= RESIDENT_MAX_BYTES
        return bool(self._resident_mode)

    def _fetch(self, idx: torch.Tensor, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        imgs, labs = self.split.images, self.split.labels
        if self.device.type == "cpu":
            b = idx.numel()
            if self._cpu_buf is None or self._cpu_buf.shape[0] < b:
                self._cpu_buf = torch.empty((self.batch_size, *imgs.shape[1:]), dtype=torch.uint8)
            out = self._cpu_buf[:b]
            torch.index_select(imgs, 0, idx, out=out)  # internal buffer: converted (copied) before yield
            return out, labs.index_select(0, idx)
        if self._use_resident():
            if self._dev_images is None:
                self._dev_images = imgs.to(self.device)
                self._dev_labels = labs.to(self.device)
            didx = idx.to(self.device, non_blocking=True)
            return self._dev_images.index_select(0, didx), self._dev_labels.index_select(0, didx)
        # streamed: two pinned staging buffers, reuse guarded by CUDA events
        b = idx.numel()
        if not self._pinned:
            shape = (self.batch_size, *imgs.shape[1:])
            pin = self.device.type == "cuda"
            self._pinned = [torch.empty(shape, dtype=torch.uint8, pin_memory=pin) for _ in range(2)]
            self._events = [None, None]
        ev = self._events[slot]
        if ev is not None:
            ev.synchronize()
        buf = self._pinned[slot][:b]
        torch.index_select(imgs, 0, idx, out=buf)
        x = buf.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            e = torch.cuda.Event()
            e.record()
            self._events[slot] = e
        return x, labs.index_select(0, idx).to(self.device, non_blocking=True)

    # -- transforms (on device) --------------------------------------------------------------------
    def _gen(self, epoch: int) -> torch.Generator:
        """Augmentation draws of an epoch; each rank of a shard has its own stream (the same draws on every rank
        would give their slices the same crops)."""
        return torch.Generator().manual_seed(_seed_for(self.seed, epoch, 1 if self.rank == 0 else f"1/{self.rank}"))

    def _eval_geometry(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 or float (B,3,H,W) -> (B,3,S,S) deterministically."""
        S, H = self.img_size, x.shape[-1]
        if H == S:
            return x
        if self.split.info.get("stored") == "resize_short_center_square" and H > S:
            o = int(round((H - S) / 2.0))
            return x[:, :, o:o + S, o:o + S]
        return F.interpolate(x.float(), size=(S, S), mode="bicubic", antialias=True, align_corners=False)

    def _transform(self, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        a = self.aug
        B, S, H = x.shape[0], self.img_size, x.shape[-1]
        dev = x.device
        if a.kind == "none" or g is None:
            x = self._eval_geometry(x)
        elif a.kind == "flip":
            x = self._eval_geometry(x)
            flip = (torch.rand(B, generator=g) < a.hflip).to(dev)
            x = torch.where(flip.view(B, 1, 1, 1), x.flip(3), x)
        elif a.kind == "resize_crop":
            top = torch.randint(0, H - S + 1, (B,), generator=g)
            left = torch.randint(0, H - S + 1, (B,), generator=g)
            flip = torch.rand(B, generator=g) < a.hflip
            if dev.type == "cpu":  # plain slicing: cheaper than index gathers on CPU
                out = torch.empty((B, x.shape[1], S, S), dtype=x.dtype)
                for i, (t, l, f) in enumerate(zip(top.tolist(), left.tolist(), flip.tolist())):
                    c = x[i, :, t:t + S, l:l + S]
                    out[i] = c.flip(2) if f else c
                x = out
            else:  # one gather per axis, no per-sample kernel launches
                ar = torch.arange(S)
                rows = (top[:, None] + ar).to(dev)
                cols = torch.where(flip[:, None], left[:, None] + (S - 1 - ar), left[:, None] + ar).to(dev)
                C = x.shape[1]
                x = x.gather(2, rows.view(B, 1, S, 1).expand(B, C, S, H))
                x = x.gather(3, cols.view(B, 1, 1, S).expand(B, C, S, S))
        elif a.kind == "rrc":
            theta = rrc_theta(B, H, H, a.scale, a.ratio, a.hflip, g).to(dev)
            grid = F.affine_grid(theta, [B, x.shape[1], S, S], align_corners=False)
            x = F.grid_sample(x.float(), grid, mode=a.interpolation, padding_mode="border", align_corners=False)
            if a.interpolation == "bicubic":  # bicubic overshoots: back into the pixel range, as PIL's is
                x = x.clamp_(0, 255)
        jitter = bool(a.color_jitter) and g is not None and a.kind != "none"
        if x.dtype == torch.uint8 and not jitter:
            return self._to_float(x, normalise=True)
        x = self._to_float(x)
        if jitter:
            x = color_jitter(x, a.color_jitter, g)
        return x.mul_(self._inv_std255).add_(self._bias)

    def _to_float(self, x: torch.Tensor, normalise: bool = False) -> torch.Tensor:
        """uint8 -> float32 (and, with ``normalise``, ``x * inv_std + bias`` in the same sweep).

        On CPU the output comes from a small pool of buffers that are reused only when nothing
        outside the pool references them any more (storage use count): a fresh 40+ MB allocation
        per batch is page-fault bound.  The work runs in chunks of a few images so the float data
        is still in cache for the normalisation (one memory sweep instead of three)."""
        if x.dtype == torch.float32:
            return x.mul_(self._inv_std255).add_(self._bias) if normalise else x
        if self.device.type != "cpu" or not hasattr(torch._C, "_storage_Use_Count"):
            out = x.float()
            return out.mul_(self._inv_std255).add_(self._bias) if normalise else out
        shape = tuple(x.shape)
        out = None
        for buf, base in self._pool:
            if buf.shape[1:] == shape[1:] and buf.shape[0] >= shape[0] and _use_count(buf) == base:
                out = buf[:shape[0]]
                break
        if out is None:
            buf = torch.empty((max(self.batch_size, shape[0]), *shape[1:]), dtype=torch.float32)
            if len(self._pool) < 3:
                self._pool.append((buf, _use_count(buf)))
            out = buf[:shape[0]]
        step = max(1, (1 << 21) // max(1, x[0].numel() * 4))  # ~2 MB of float per chunk
        for lo in range(0, shape[0], step):
            o = out[lo:lo + step]
            o.copy_(x[lo:lo + step])
            if normalise:
                o.mul_(self._inv_std255).add_(self._bias)
        return out

    # -- iteration ---------------------------------------------------------------------------------
    def _batches(self, order: torch.Tensor | None = None) -> list[torch.Tensor]:
        """This rank's index batches of an epoch.

        One process (``shard=(0, 1)``): batches of ``batch_size`` in ``order``. Sharded training (``shuffle``):
        ``batch_size`` is the GLOBAL batch; every rank cuts the same global batches from the same seed-and-epoch
        order and takes every ``world``-th sample of each (``[rank::world]``), so the ranks together see exactly the
        one-process batches; a last global batch smaller than the world (some rank would get none) is dropped.
        Sharded evaluation (no shuffle): the split's samples ``[rank::world]``, in batches of ``batch_size``: every
        sample is read by exactly one rank."""
        order = self.order() if order is None else order
        n, bs = len(order), self.batch_size
        if self.world > 1 and not self.shuffle:
            order, n = order[self.rank::self.world], len(order[self.rank::self.world])
        stop = (n // bs) * bs if self.drop_last else n
        batches = [order[lo:lo + bs] for lo in range(0, stop, bs)]
        if self.world > 1 and self.shuffle:
            batches = [b[self.rank::self.world] for b in batches if len(b) >= self.world]
        return batches

    def global_sizes(self) -> list[int]:
        """The global batch size of each step of an epoch (sharded training: the sum over the ranks' slices)."""
        n, bs = len(self.split), self.batch_size
        stop = (n // bs) * bs if self.drop_last else n
        sizes = [min(bs, stop - lo) for lo in range(0, stop, bs)]
        return [s for s in sizes if s >= self.world] if self.world > 1 and self.shuffle else sizes

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        g = self._gen(epoch) if self.train and self.aug.kind != "none" else None
        for k, idx in enumerate(self._batches(self.order(epoch))):
            x, y = self._fetch(idx, k % 2)
            x = self._transform(x, g)
            yield x, y
            del x, y  # drop our references so the CPU float buffer can be reused
        self.epoch = epoch + 1


def _use_count(t: torch.Tensor) -> int:
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


def rrc_theta(B: int, H: int, W: int, scale: tuple[float, float], ratio: tuple[float, float], hflip: float,
              g: torch.Generator) -> torch.Tensor:
    """Affine ``theta`` (B, 2, 3) for RandomResizedCrop boxes (torchvision's sampling, 10 tries,
    fallback: the whole image clamped to the ratio range), with a horizontal flip folded in."""
    area = H * W
    tries = 10
    target = area * torch.empty(B, tries).uniform_(scale[0], scale[1], generator=g)
    logr = torch.empty(B, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    ar = torch.exp(logr)
    w = torch.sqrt(target * ar).round()
    h = torch.sqrt(target / ar).round()
    ok = (w > 0) & (h > 0) & (w <= W) & (h <= H)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((B,), -1))
    u_i = torch.rand(B, generator=g)
    u_j = torch.rand(B, generator=g)
    flip = torch.rand(B, generator=g) < hflip
    rows = torch.arange(B)
    fi = first.clamp(min=0)
    w_sel, h_sel = w[rows, fi], h[rows, fi]
    # fallback (no valid try): whole image with the ratio clamped
    in_ratio = W / H
    if in_ratio < ratio[0]:
        fw, fh = float(W), float(round(W / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = float(round(H * ratio[1])), float(H)
    else:
        fw, fh = float(W), float(H)
    bad = first < 0
    w_sel = torch.where(bad, torch.full_like(w_sel, fw), w_sel)
    h_sel = torch.where(bad, torch.full_like(h_sel, fh), h_sel)
    top = torch.floor(u_i * (H - h_sel + 1)).clamp(max=H - h_sel)
    left = torch.floor(u_j * (W - w_sel + 1)).clamp(max=W - w_sel)
    top = torch.where(bad, torch.round((H - h_sel) / 2), top)
    left = torch.where(bad, torch.round((W - w_sel) / 2), left)
    cx = (left + w_sel / 2) / W * 2 - 1
    cy = (top + h_sel / 2) / H * 2 - 1
    sx = w_sel / W * torch.where(flip, -1.0, 1.0)
    sy = h_sel / H
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx, cx
    theta[:, 1, 1], theta[:, 1, 2] = sy, cy
    return theta


def color_jitter(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation factors U[1-s, 1+s] per image, on 0..255 floats."""
    B, dev = x.shape[0], x.device
    f = torch.empty(3, B).uniform_(max(0.0, 1 - strength), 1 + strength, generator=g).to(dev)
    wts = torch.tensor([0.299, 0.587, 0.114], device=dev).view(1, 3, 1, 1)
    x = (x * f[0].view(B, 1, 1, 1)).clamp_(0, 255)
    m = (x * wts).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = ((x - m) * f[1].view(B, 1, 1, 1) + m).clamp_(0, 255)
    gray = (x * wts).sum(1, keepdim=True)
    x = ((x - gray) * f[2].view(B, 1, 1, 1) + gray).clamp_(0, 255)
    return x
