"""Input-pipeline throughput on one CPU thread (``torch.set_num_threads(1)``).

    python -m data.bench [--img-size 224] [--n 1000] [--epochs 3] [--device cpu|cuda] [--cache-dir DIR]

Builds a cached VTAB-layout split (the generated ``demo`` task, 1,000 images decoded once and
resized to ``img_size``), then times epochs of :class:`data.Loader`:

* ``uint8 batches``       -- gather of the shuffled batch from the cached array: the whole CPU
  cost per batch when training on a GPU (conversion and normalisation run there);
* ``float, normalised``   -- the full CPU pipeline (``device='cpu'``): uint8 -> float32,
  ``(x/255 - mean) / std``;
* ``fgvc-style train aug`` -- resize_crop / rrc on a 256-px stored square (informational);
* with ``--device cuda`` also the device pipeline (upload once, index + normalise on the GPU).

The first decode is reported separately; epochs never decode.
"""
from __future__ import annotations

import datetime
import platform
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

from util.cli import ArgumentParser


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _time_epochs(loader, epochs: int, sync=None) -> float:
    n = 0
    next(iter(loader))  # warm-up (buffers, resident upload)
    t = time.perf_counter()
    for e in range(epochs):
        loader.set_epoch(e)
        for x, y in loader:
            n += y.shape[0]
    if sync:
        sync()
    return n / (time.perf_counter() - t)


def main(argv: Sequence[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m data.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--n", type=int, default=1000, help="images in the benchmark split")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache-dir", help="cache dir (default: a temporary folder)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)

    from . import Loader, load_split
    from .demo import make_demo
    from .split import Split

    tmp = tempfile.TemporaryDirectory(prefix="vit_peft_bench.")
    cache_dir = Path(a.cache_dir or tmp.name)
    print(f"data.bench  {datetime.date.today()}  cpu: {_cpu_name()}  torch {torch.__version__}  "
          f"threads={torch.get_num_threads()}  img_size={a.img_size}  n={a.n}")
    n_val = max(1, a.n // 5)
    make_demo(cache_dir / "bench_data", "demo", n_train=a.n - n_val, n_val=n_val, n_test=64, size=32)
    t = time.perf_counter()
    split = load_split("demo", cache_dir / "bench_data", "train800val200", img_size=a.img_size, cache_dir=cache_dir)
    t_decode = time.perf_counter() - t
    t = time.perf_counter()
    split = load_split("demo", cache_dir / "bench_data", "train800val200", img_size=a.img_size, cache_dir=cache_dir)
    t_hit = time.perf_counter() - t
    assert split.info["cache_hit"]
    print(f"first decode + cache write: {len(split) / t_decode:8.0f} img/s ({t_decode:.2f} s, "
          f"{split.images.numel() / 2**20:.0f} MiB uint8); cache hit load: {t_hit * 1e3:.0f} ms")

    rows = []
    for bs in a.batch_sizes:
        ld = Loader(split, bs, shuffle=True, train=False, device="cpu", img_size=a.img_size)
        # uint8 delivery: what the CPU does per batch when the model runs on a GPU
        n, t0 = 0, time.perf_counter()
        buf = torch.empty((bs, *split.images.shape[1:]), dtype=torch.uint8)
        for e in range(a.epochs):
            order = ld.order(e)
            for lo in range(0, len(order), bs):
                idx = order[lo:lo + bs]
                torch.index_select(split.images, 0, idx, out=buf[:idx.numel()])
                n += idx.numel()
        u8 = n / (time.perf_counter() - t0)
        fl = _time_epochs(ld, a.epochs)
        rows.append((bs, u8, fl))
    print(f"{'batch':>5s} {'uint8 batches img/s':>20s} {'float normalised img/s':>23s}   (cached VTAB split, 1 thread)")
    for bs, u8, fl in rows:
        print(f"{bs:5d} {u8:20.0f} {fl:23.0f}")

    # FGVC-style augmentation on a stored 256/224-ratio square (informational)
    R = int(round(256 * a.img_size / 224))
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (min(a.n, 512), 3, R, R), dtype=torch.uint8, generator=g)
    fsplit = Split(imgs, torch.zeros(len(imgs), dtype=torch.long), 2, "bench_fgvc", "train",
                   {"stored": "resize_short_center_square"}, "fgvc", a.img_size)
    for kind in ("resize_crop", "rrc"):
        ld = Loader(fsplit, 32, shuffle=True, train=True, aug=kind, img_size=a.img_size)
        print(f"fgvc-style train aug {kind:11s} (batch 32, cpu): {_time_epochs(ld, 1):8.0f} img/s")

    if a.device != "cpu":
        dev = torch.device(a.device)
        sync = torch.cuda.synchronize if dev.type == "cuda" else None
        for resident in (True, False):
            ld = Loader(split, 128, shuffle=True, train=False, device=dev, img_size=a.img_size, resident=resident)
            print(f"device {dev} resident={resident!s:5s} float normalised (batch 128): "
                  f"{_time_epochs(ld, a.epochs, sync):8.0f} img/s")
        ld = Loader(fsplit, 128, shuffle=True, train=True, aug="rrc", device=dev, img_size=a.img_size)
        print(f"device {dev} fgvc rrc (batch 128): {_time_epochs(ld, a.epochs, sync):8.0f} img/s")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
