"""CPU smoke run of a whole sweep script (issue 4 item 5): reproduce/householder_vtab.sh with two tasks, one epoch,
random weights and 32-px images on a generated VTAB-layout tree; it trains, writes results.json, prints the
verification table, and a second call skips the finished runs.

The issue's smoke command uses ARCH=vit_tiny_patch16_224 (12 blocks); the test uses the 2-block vit_micro_patch8 so
that it stays within the suite's CPU budget — the script path exercised is the same."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def make_vtab_tree(root: Path, tasks: list[str], n_images: int = 8, n_classes: int = 4, size: int = 32) -> None:
    """NOAH layout (docs/benchmarks.md §2) with the VTAB-1k line counts 800/200/1000 (the data package checks them) that
    point at a few distinct tiny PNGs; labels 0..n_classes-1 (valid for every task); a 16-image test split."""
    rng = np.random.default_rng(0)
    for task in tasks:
        d = root / task
        (d / "images").mkdir(parents=True)
        lines = []
        for i in range(n_images):
            label = i % n_classes
            img = np.full((size, size, 3), 60 * label, np.uint8) + rng.integers(0, 40, (size, size, 3), np.uint8)
            Image.fromarray(img).save(d / "images" / f"{i:06d}.png")
            lines.append(f"images/{i:06d}.png {label}\n")
        for split, n in (("train800", 800), ("val200", 200), ("train800val200", 1000), ("test", 16)):
            (d / f"{split}.txt").write_text("".join(lines[j % n_images] for j in range(n)))


def finished_run(folder: Path, cfg: dict, task: str = "cifar", seed: int = 0, acc: float = 50.0) -> None:
    """A finished run's results.json in ``folder/<task>/seed<seed>`` for a table row a smoke test does not train
    (a train.py run costs seconds of imports): the sweep skips it as any finished run and still prints its table.
    ``cfg`` is the row's resolved task config (taskcfg.resolve)."""
    d = folder / task / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({
        "method": cfg["method"], "method_args": cfg["method_args"], "arch": "vit_micro_patch8", "dataset": task,
        "pretrained": {"source": None}, "benchmark": "vtab", "protocol": "paper", "seed": seed,
        "acc_best_test": acc, "acc_last": acc, "epochs": 1}))


def test_householder_vtab_smoke_run(tmp_path):
    make_vtab_tree(tmp_path / "vtab", ["cifar", "dtd"])
    env = {**os.environ, "TASKS": "cifar dtd", "EPOCHS": "1", "ARCH": "vit_micro_patch8", "WEIGHTS": "none",
           "IMG_SIZE": "32", "VTAB_ROOT": str(tmp_path / "vtab"), "OUT": str(tmp_path / "runs"),
           "VIT_PEFT_CACHE": str(tmp_path / "cache"), "PYTHONWARNINGS": "ignore",
           "OMP_NUM_THREADS": "1"}  # a 2-block, 64-wide model: threads would only contend
    run = lambda: subprocess.run([str(ROOT / "reproduce/householder_vtab.sh")], cwd=ROOT, env=env,  # noqa: E731
                                 capture_output=True, text=True, timeout=300)
    p = run()
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for task in ("cifar", "dtd"):
        folder = tmp_path / "runs" / "hta_vtab" / task / "seed42"
        res = json.loads((folder / "results.json").read_text())
        assert (res["dataset"], res["method"], res["epochs"], res["protocol"]) == (task, "hta", 1, "paper")
        assert res["acc_best_test"] is not None and res["acc_last"] is not None
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        assert (cfg["epochs"], cfg["warmup_epochs"], cfg["method_args"]["rank"]) == (1, 0, 1)
        assert f"--dataset {task}" in (folder / "command.txt").read_text()
    table = p.stdout[p.stdout.index("hta_vtab: 2 run(s)"):]
    for needle in ("ours: test-selected (paper protocol)", "ours: clean (last epoch)", "mean_19 = plain mean",
                   "mean_groups = mean of the 3 group means", "Trainable parameters"):
        assert needle in table, needle
    assert [line.split()[0] for line in table.splitlines() if line.split()[:1] in (["cifar"], ["dtd"])] == \
        ["cifar", "dtd"]
    again = run()  # resumable: both runs are done, nothing trains, the table is printed again
    assert again.returncode == 0 and again.stdout.count("skipped") == 2 and "epoch 1/1" not in again.stdout
    assert "hta_vtab: 2 run(s)" in again.stdout
