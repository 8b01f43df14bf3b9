"""Generated demo tasks in the VTAB/NOAH layout (numpy only, fixed seed, no downloads).

Three small structured tasks, dSprites-like: one bright shape on a dark noisy canvas.

* ``demo``       -- label = quadrant of the shape centre (4 classes); shape type random.
* ``demo_ori``   -- label = orientation of a bar, 0/45/90/135 degrees (4 classes); position random.
* ``demo_shape`` -- label = shape type: square / disc / triangle / cross (4 classes); position random.

Pre-train on one and adapt to another: they share the image distribution but not the label.

Layout: ``<root>/<task>/{train800,val200,train800val200,test}.txt`` and PNG files under
``<root>/<task>/images/<split>/NNNNNN.png`` (``train800val200.txt`` lists the train800 and
val200 files, so the union holds by construction).  Split names keep the VTAB names whatever
``n_train`` / ``n_val`` are.  Labels are class-balanced in every split (all classes present).

Deterministic: the same arguments give byte-identical files (pixels from
``numpy.random.default_rng``; PNGs written by a small zlib writer, no timestamps).
``make_demo`` is idempotent: it regenerates only when ``demo_info.json`` is missing, records
other arguments, or a listed file is missing.  Regeneration happens in a temp folder that is
moved into place.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from util import files
from util.cli import ArgumentParser

from .errors import DataError, cli_main
from .tasks import DEMO_NUM_CLASSES, DEMO_TASKS, resolve_task

DEMO_VERSION = 1
_TASK_SALT = {"demo": 11, "demo_ori": 23, "demo_shape": 37}
_SPLIT_SALT = {"train800": 1, "val200": 2, "test": 3}


def write_png(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 array as an 8-bit RGB PNG (deterministic bytes)."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    h, w, c = img.shape
    assert c == 3
    raw = b"".join(b"\x00" + img[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)


def _shape_mask(kind: int, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if kind == 0:  # square
        return (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
    if kind == 1:  # disc
        return dx * dx + dy * dy <= r * r
    if kind == 2:  # upward triangle
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    # cross
    t = max(r * 0.3, 1.0)
    return ((np.abs(dx) <= t) & (np.abs(dy) <= r)) | ((np.abs(dy) <= t) & (np.abs(dx) <= r))


def _bar_mask(theta: float, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, length: float,
              width: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(theta) - dy * np.sin(theta)  # image y points down: angle measured counter-clockwise
    v = dx * np.sin(theta) + dy * np.cos(theta)
    return (np.abs(u) <= length) & (np.abs(v) <= width)


def render(task: str, label: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One (size, size, 3) uint8 image of ``task`` with class ``label``."""
    S = size
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float64) + 0.5
    img = rng.integers(0, 48, size=(S, S, 3)).astype(np.float64)
    img += rng.integers(0, 24, size=3)  # background tint
    color = rng.integers(150, 256, size=3).astype(np.float64)
    color[rng.integers(0, 3)] = 255.0
    if task == "demo":
        r = rng.uniform(0.10, 0.16) * S
        qy, qx = divmod(label, 2)
        cy = (qy + rng.uniform(0.25, 0.75)) * S / 2
        cx = (qx + rng.uniform(0.25, 0.75)) * S / 2
        mask = _shape_mask(int(rng.integers(0, 4)), yy, xx, cy, cx, r)
    elif task == "demo_shape":
        r = rng.uniform(0.16, 0.24) * S
        cy, cx = rng.uniform(r + 1, S - r - 1, size=2)
        mask = _shape_mask(label, yy, xx, cy, cx, r)
    elif task == "demo_ori":
        length, width = rng.uniform(0.26, 0.34) * S, max(rng.uniform(0.05, 0.08) * S, 1.2)
        cy, cx = rng.uniform(length * 0.75 + 1, S - length * 0.75 - 1, size=2)
        theta = np.deg2rad(45.0 * label + rng.uniform(-6, 6))
        mask = _bar_mask(theta, yy, xx, cy, cx, length, width)
    else:
        raise DataError(f"unknown demo task {task!r}; valid: {', '.join(DEMO_TASKS)}")
    img[mask] = color
    return np.clip(img, 0, 255).astype(np.uint8)


def _balanced_labels(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    lab = np.arange(n) % k
    rng.shuffle(lab)
    return lab


def generate_arrays(task: str, n: int, split: str, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, size, size, 3) uint8, labels (n,) int64) of one split, purely from the seed."""
    _, task = resolve_task(task)
    k = DEMO_NUM_CLASSES[task]
    rng = np.random.default_rng([int(seed), _TASK_SALT[task], _SPLIT_SALT[split], int(size)])
    labels = _balanced_labels(n, k, rng)
    images = np.stack([render(task, int(y), rng, size) for y in labels]) if n else np.zeros((0, size, size, 3), np.uint8)
    return images, labels.astype(np.int64)


def _params(task: str, n_train: int, n_val: int, n_test: int, size: int, seed: int) -> dict:
    return {"version": DEMO_VERSION, "task": task, "n_train": n_train, "n_val": n_val, "n_test": n_test,
            "size": size, "seed": seed, "num_classes": DEMO_NUM_CLASSES[task]}


def _complete(task_dir: Path, params: dict) -> bool:
    info = task_dir / "demo_info.json"
    try:
        if json.loads(info.read_text()).get("params") != params:
            return False
        for s in ("train800", "val200", "train800val200", "test"):
            lines = (task_dir / f"{s}.txt").read_text().split("\n")
            for ln in lines:
                if ln.strip() and not (task_dir / ln.split()[0]).is_file():
                    return False
    except (OSError, json.JSONDecodeError, AttributeError):
        return False
    return True


def make_demo(root: str | os.PathLike, task: str = "demo", n_train: int = 800, n_val: int = 200, n_test: int = 300,
              size: int = 32, seed: int = 0) -> Path:
    """Generate (if missing or incomplete) demo task ``task`` under ``root``; return ``<root>/<task>``."""
    bench, task = resolve_task(task)
    if bench != "demo":
        raise DataError(f"{task!r} is not a demo task; valid: {', '.join(DEMO_TASKS)}")
    if min(n_train, n_val, n_test) < 1 or size < 16:
        raise DataError("demo task needs n_train, n_val, n_test >= 1 and size >= 16")
    root = Path(root).expanduser()
    task_dir = root / task
    params = _params(task, int(n_train), int(n_val), int(n_test), int(size), int(seed))
    if _complete(task_dir, params):
        return task_dir
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{task}.", dir=root))
    os.chmod(tmp, 0o777 & ~files.umask())
    try:
        lines: dict[str, list[str]] = {}
        for split, n in (("train800", n_train), ("val200", n_val), ("test", n_test)):
            images, labels = generate_arrays(task, int(n), split, int(size), int(seed))
            (tmp / "images" / split).mkdir(parents=True)
            lines[split] = []
            for i, (im, y) in enumerate(zip(images, labels)):
                rel = f"images/{split}/{i:06d}.png"
                write_png(tmp / rel, im)
                lines[split].append(f"{rel} {int(y)}")
        lines["train800val200"] = lines["train800"] + lines["val200"]
        for split, ls in lines.items():
            (tmp / f"{split}.txt").write_text("\n".join(ls) + "\n")
        (tmp / "demo_info.json").write_text(json.dumps({"params": params, "generated_by": "data.demo",
                                                         "note": "synthetic demo task, not VTAB data"},
                                                        indent=1, sort_keys=True) + "\n")
        if task_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{task}.old.", dir=root))
            os.replace(task_dir, old / task)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, task_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return task_dir


def main(argv: Sequence[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m data.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="folder to create <root>/<task>/ in")
    ap.add_argument("--task", action="append", choices=DEMO_TASKS, help="task(s); default: all")
    ap.add_argument("--n-train", type=int, default=800)
    ap.add_argument("--n-val", type=int, default=200)
    ap.add_argument("--n-test", type=int, default=300)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    for t in a.task or DEMO_TASKS:
        d = make_demo(a.root, t, a.n_train, a.n_val, a.n_test, a.size, a.seed)
        print(f"{t}: {d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli_main(main))
