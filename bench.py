"""Speed and memory of methods side by side, in one process, on one device.

    python bench.py --device cuda --precision bf16 --methods arc,arc_att,hta,lora,snell --json bench.json
    python bench.py --methods hta:impl=lowrank,snell:dropout=0:drop_path=0,lora:targets=q,k,v,proj,fc1,fc2
    python bench.py --device cpu --arch vit_micro_patch8 --img-size 32 --batch-size 16 --steps 3   # seconds

A row is a method variant: a registered method name, optionally with method arguments in train.py's
``--method-args`` syntax, separated by ``:`` (``hta:impl=lowrank:batch_weights=false``). Variants are separated by
commas; a comma starts a new variant only where a method name follows it, so list values keep theirs
(``lora:targets=q,k,v``).

For each row: training img/s, ms/step, peak memory and trainable parameters (random weights, random data, AdamW,
the same step as train.py), next to two reference rows measured in the same run:

* ``floor``: frozen backbone with gradients flowing back through every block (only pos_embed and the head train) —
  what no adapter method can beat;
* ``full``: full fine-tuning.

Then inference: the plain ViT vs each row's merged ViT (``models.merge``) and vs the row's own evaluation path
(unmerged, eval mode), in img/s, and, for one row (``--eval-loop``), train.py's evaluation loop itself (merge, cached
split, loader). Ratios are printed against floor/full/plain. Warm-up steps are excluded from timing.

Two device-independent columns explain what a GPU run shows, and can be measured on the CPU (one extra untimed
step per row, skipped with ``--compile``):

* ``ops/step``: ATen operations dispatched by the forward and backward of one training step (not the optimizer). An
  eager GPU step launches about one kernel per operation (views excepted), and at batch 64 the ViT-B step is bound
  by launching them;
* ``saved MiB``: bytes autograd keeps for backward in one forward (distinct storages); the JSON also has the part
  that grows with the batch (``saved_mib_per_sample``, from a second forward at batch 1).

This script measures and reports; what the numbers are held against (targets, the projection of a sweep's wall
time) is ``python -m reproduce.project``'s, and whether the fast paths compute what they should is the test suite's
(``pytest tests/test_methods_hta.py tests/test_methods_snell.py`` checks them on CUDA too, when one is present).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import models
from engine import config as C
from engine.errors import RunError
from engine.loop import autocast, compiled, eval_network, evaluate
from engine.rundir import write_json
from engine.variants import parse_variant, split_variants
from util.cli import ArgumentParser

REFERENCE_ROWS = ("floor", "full")


def build(name: str, args, device: torch.device):
    """The model of a row: ``floor`` (a linear probe whose pos_embed, or on Swin / ConvNeXt the first bias, trains, so
    gradients flow back through every block), or a method variant."""
    if name == "floor":
        model = models.create_model(args.arch, "linear", num_classes=args.num_classes, img_size=args.img_size)
        early = getattr(model, "pos_embed", None)
        early = early if early is not None else next(p for n, p in model.named_parameters() if n.endswith(".bias"))
        early.requires_grad_(True)
    else:
        method, kw = parse_variant(name)
        model = models.create_model(args.arch, method, num_classes=args.num_classes, img_size=args.img_size, **kw)
    return model.to(device)


# ------------------------------------------------------------------------------------------------------ measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds_per_call(fn, device: torch.device, warmup: int, steps: int, timing: dict | None = None) -> float:
    """Mean wall time of ``fn()`` over ``steps`` calls after ``warmup`` untimed ones, the device synchronised. The
    warm-up's own wall time goes to ``timing["warmup_s"]`` when given (under ``--compile`` it holds the compilation
    and the CUDA-graph capture)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    _sync(device)
    if timing is not None:
        timing["warmup_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / steps


class OpCounter(TorchDispatchMode):
    """Counts ATen operations dispatched while active (autograd's backward included)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs."""
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        seen.setdefault(st.data_ptr(), st.nbytes())
        return t.detach()  # not t: a saved output would hold its own grad_fn, a cycle through C++ that gc never frees

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _profile(step, device: torch.device, steps: int = 3, top: int = 8) -> dict:
    """Where a training step's time goes, from ``torch.profiler`` over ``steps`` more steps: wall ms per step (the
    profiler adds host overhead of its own), host ms per step inside ATen ops (self CPU time), device-busy ms per step
    (the kernels' self time; None on the CPU) and the ``top`` ops by device time (by host time on the CPU). A step
    whose device is busy for a small part of its wall time is bound by the host issuing kernels."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        wall = (time.perf_counter() - t0) / steps
    events = prof.key_averages()
    dev = lambda e: getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)  # noqa: E731
    key = dev if device.type == "cuda" else (lambda e: e.self_cpu_time_total)
    return {"steps": steps, "wall_ms": wall * 1e3,
            "host_ms": sum(e.self_cpu_time_total for e in events) / steps / 1e3,
            "device_ms": sum(map(dev, events)) / steps / 1e3 if device.type == "cuda" else None,
            "top": [{"op": e.key, "calls": e.count / steps, "ms": key(e) / steps / 1e3}
                    for e in sorted(events, key=key, reverse=True)[:top]]}


def bench_train(model, args, device, profile: bool = False) -> dict:
    """A row's training step: train.py's (AdamW fused on CUDA, autocast, cross-entropy) on one random batch."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4, fused=device.type == "cuda")
    net = compiled(model, args.compile)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    model.train()

    def forward_backward():
        with autocast(device, args.precision):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()

    def step():
        forward_backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timing: dict = {}
    dt = _seconds_per_call(step, device, args.warmup, args.steps, timing)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    out = {"img_per_s": args.batch_size / dt, "ms_per_step": dt * 1e3, "peak_mem_gib": peak,
           # the warm-up's time beyond its steps at the timed speed: compilation and graph capture under --compile
           "warmup_extra_s": max(0.0, timing["warmup_s"] - args.warmup * dt),
           "params": models.count_parameters(model), "params_no_head": models.count_parameters(model, head=False)}
    if profile:
        try:
            out["profile"] = _profile(step, device)
        except Exception as e:  # noqa: BLE001 - a profiler failure must not cost a short device lease its rows
            out["profile"] = {"error": f"{type(e).__name__}: {e}"}
    if args.compile == "none":  # untimed: one step under an op counter, one forward under saved-tensor hooks
        with OpCounter() as counter:  # the optimizer is left out: fused AdamW on CUDA is a few kernels in all
            forward_backward()
        out["ops_per_step"] = counter.n

        def forward(inputs):
            with autocast(device, args.precision):
                net(inputs)

        saved, saved_one = _saved_bytes(lambda: forward(x)), _saved_bytes(lambda: forward(x[:1]))
        out["saved_mib"] = saved / 2**20
        # what grows with the batch (activations), apart from what does not (e.g. bf16 copies of frozen weights)
        out["saved_mib_per_sample"] = (saved - saved_one) / max(args.batch_size - 1, 1) / 2**20
        opt.zero_grad(set_to_none=True)
    return out


@torch.no_grad()
def bench_infer(model, args, device) -> float:
    model.eval()
    model = compiled(model, args.compile)
    x = torch.randn(args.eval_batch_size, 3, args.img_size, args.img_size, device=device)

    def forward():
        with autocast(device, args.precision):
            model(x)

    return args.eval_batch_size / _seconds_per_call(forward, device, args.warmup, args.steps)


def bench_eval_loop(model, args, device) -> float:
    """img/s of an evaluation as train.py runs it: ``eval_network`` (the merged copy, built once per evaluation,
    when the method is mergeable and ``eval_merged``) and ``evaluate`` over a cached uint8 split of
    ``--eval-loop-images`` images through ``data.Loader`` (uploaded once, indexed and normalised on the device,
    one host sync per evaluation). The default size is the mean VTAB-1k test split, so the merge is weighed as in
    a real run. Image content does not affect speed: one random batch, tiled."""
    import data

    n, size = args.eval_loop_images, args.img_size
    g = torch.Generator().manual_seed(0)
    tile = torch.randint(0, 256, (min(n, 256), 3, size, size), dtype=torch.uint8, generator=g)
    images = tile.repeat((n + tile.shape[0] - 1) // tile.shape[0], 1, 1, 1)[:n]
    labels = torch.randint(0, args.num_classes, (n,), generator=g)
    split = data.Split(images=images, labels=labels, num_classes=args.num_classes, name="bench", split="test",
                       img_size=size)
    loader = data.Loader(split, args.eval_batch_size, device=device)
    merged = C.RunConfig().eval_merged
    seconds = _seconds_per_call(lambda: evaluate(eval_network(model, merged), loader, device, args.precision,
                                                 report=False), device, 1, max(1, min(args.steps, 3)))
    return n / seconds


# ---------------------------------------------------------------------------------------------------------- main
def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())


# Defaults by device type: a GPU run times enough steps to be stable; a CPU run (device-independent columns, a
# smoke test) finishes in a couple of minutes with the ViT-B/16 shapes.
DEVICE_DEFAULTS = {"cuda": {"batch_size": 64, "eval_batch_size": 256, "steps": 20, "warmup": 5, "precision": "bf16"},
                   "cpu": {"batch_size": 2, "eval_batch_size": 8, "steps": 1, "warmup": 1, "eval_loop_images": 32,
                           "precision": "fp32"}}  # bf16 on a CPU without bf16 units is emulated: slower, not faster


def parse_args(argv=None) -> argparse.Namespace:
    import data

    mean_test = round(sum(data.VTAB_TEST_SIZES.values()) / len(data.VTAB_TEST_SIZES))

    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="vit_base_patch16_224", help="architecture (models.ARCHS) [default: %(default)s]")
    p.add_argument("--img-size", type=int, default=224, help="input resolution [default: %(default)s]")
    p.add_argument("--batch-size", type=int, help="training batch size [default: 64 on CUDA, 2 on the CPU]")
    p.add_argument("--eval-batch-size", type=int, help="inference batch size [default: 256 on CUDA, 8 on the CPU]")
    p.add_argument("--num-classes", type=int, default=100, help="classes of the random head [default: %(default)s]")
    p.add_argument("--precision", choices=C.CHOICES["precision"],
                   help="bf16 autocast or fp32 [default: bf16 on CUDA, fp32 on the CPU]")
    p.add_argument("--methods", default="arc,arc_att,hta,lora,lora:targets=q,k,v,proj,fc1,fc2,snell",
                   help="comma-separated rows, each METHOD[:KEY=VALUE...] (e.g. hta:impl=lowrank, "
                        "lora:targets=q,k,v,proj,fc1,fc2); floor and full are always measured first "
                        "[default: %(default)s]")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda | cpu [default: cuda when available]")
    p.add_argument("--steps", type=int, help="timed steps per row [default: 20 on CUDA, 1 on the CPU]")
    p.add_argument("--warmup", type=int, help="untimed steps per row [default: 5 on CUDA, 1 on the CPU]")
    p.add_argument("--json", help="write all numbers here (rewritten after each row)")
    p.add_argument("--compile", choices=C.CHOICES["compile"], default="none",
                   help="torch.compile every row's model (training and inference) in this mode [default: none]")
    p.add_argument("--train-only", action="store_true", help="skip the inference rows (e.g. to keep a --compile run "
                                                               "short: each inference model compiles again)")
    p.add_argument("--eval-loop", metavar="ROW", help="the row whose evaluation loop is timed as train.py runs it "
                                                       "(default: the first of --methods; none: no row)")
    p.add_argument("--eval-loop-images", type=int,
                   help="images per timed evaluation loop [default on CUDA: the mean VTAB-1k test split, "
                        f"{mean_test:,}; on the CPU: 32]")
    p.add_argument("--profile", default="", help="comma-separated rows to profile for 3 more training steps "
                                                   "(host vs device time per step, top ops), e.g. arc,snell")
    args = p.parse_args(argv)
    kind = "cpu" if torch.device(args.device).type == "cpu" else "cuda"
    for name, value in {"eval_loop_images": mean_test, **DEVICE_DEFAULTS[kind]}.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.rows = [*REFERENCE_ROWS, *split_variants(args.methods, REFERENCE_ROWS)]
    for name in args.rows[len(REFERENCE_ROWS):]:
        method, _ = parse_variant(name)
        if method not in models.METHODS:
            raise RunError(f"--methods: unknown method {method!r}; known: {', '.join(sorted(models.METHODS))}")
        if name in REFERENCE_ROWS or args.rows.count(name) > 1:
            raise RunError(f"--methods: {name} is listed twice (floor and full are always measured)")
        with torch.device("meta"):  # a bad argument is refused before anything is measured
            build(name, args, torch.device("meta"))
    profiled = split_variants(args.profile, REFERENCE_ROWS)
    if set(profiled) - set(args.rows):
        raise RunError(f"--profile: {', '.join(sorted(set(profiled) - set(args.rows)))} not among the rows (floor, "
                       "full and --methods)")
    args.profile = profiled
    if args.eval_loop is None:
        args.eval_loop = args.rows[len(REFERENCE_ROWS)] if len(args.rows) > len(REFERENCE_ROWS) else "floor"
    elif args.eval_loop != "none" and args.eval_loop not in args.rows:
        raise RunError(f"--eval-loop: {args.eval_loop} is not among the rows ({', '.join(args.rows)})")
    for name in ("steps", "eval_loop_images", "batch_size", "eval_batch_size", "num_classes", "img_size"):
        if getattr(args, name) < 1:
            raise RunError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise RunError(f"--warmup must be >= 0, got {args.warmup}")
    return args


def measure(args, device: torch.device) -> dict:
    """Every row, side by side; the JSON is rewritten after each row, so a run stopped by a time limit keeps what
    it measured."""
    dev_name = _device_name(device)
    rows: dict[str, dict] = {}
    for name in args.rows:
        model = build(name, args, device)
        rows[name] = bench_train(model, args, device, profile=name in args.profile)
        if name == args.eval_loop:  # train.py's evaluation loop: eager, as train.py runs it
            rows[name]["eval_loop_img_per_s"] = bench_eval_loop(model, args, device)
            rows[name]["eval_loop_merged"] = bool(C.RunConfig().eval_merged and model.method.mergeable)
        if not args.train_only and name != "full":  # floor: the plain ViT's inference, the reference of ×plain
            rows[name]["eval_img_per_s"] = bench_infer(model, args, device)
            if name != "floor" and model.method.mergeable:
                rows[name]["merged_img_per_s"] = bench_infer(models.merge(model), args, device)
        del model  # nothing of this row stays allocated into the next row's peak memory
        if device.type == "cuda":
            torch.cuda.empty_cache()  # between rows only, so each row's peak memory is its own
        print(f"  measured {name}: {rows[name]['img_per_s']:.1f} img/s", file=sys.stderr, flush=True)
        if args.json:
            write_json(Path(args.json), {"partial": True, "device": dev_name, "args": vars(args), "rows": rows})
    floor_again = None
    if args.compile == "none" and len(args.rows) > len(REFERENCE_ROWS):  # the floor once more: the run's drift
        floor_again = bench_train(build("floor", args, device), args, device)["img_per_s"]
    floor, full, plain_inf = rows["floor"]["img_per_s"], rows["full"]["img_per_s"], rows["floor"].get("eval_img_per_s")
    for r in rows.values():
        r["x_floor"], r["x_full"] = r["img_per_s"] / floor, r["img_per_s"] / full
        for key in ("eval", "merged", "eval_loop"):
            if f"{key}_img_per_s" in r and plain_inf:
                r[f"{key}_x_plain"] = r[f"{key}_img_per_s"] / plain_inf
    return {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "device": dev_name,
            "torch": torch.__version__, "cuda": torch.version.cuda, "args": vars(args), "rows": rows,
            "floor_again_img_per_s": floor_again}


def print_report(report: dict) -> None:
    args, rows = argparse.Namespace(**report["args"]), report["rows"]
    print(f"\n{args.arch} {args.img_size}px, batch {args.batch_size} (eval {args.eval_batch_size}), {args.precision}, "
          f"{report['device']}, {args.steps} timed steps after {args.warmup} warm-up"
          + (f", compile {args.compile}" if args.compile != "none" else ""))
    width = max(16, *(len(n) + 2 for n in rows))
    print(f"{'row':<{width}}{'params':>12}{'img/s':>10}{'ms/step':>9}{'peak GiB':>9}{'×floor':>8}{'×full':>7}"
          f"{'eval img/s':>12}{'×plain':>8}{'merged':>9}{'×plain':>8}{'ops/step':>9}{'saved MiB':>10}{'/sample':>8}")

    def cell(r, key, fmt):
        return format(r[key], fmt) if r.get(key) is not None else "-"

    for name, r in rows.items():
        print(f"{name:<{width}}{r['params']:>12,}{r['img_per_s']:>10.1f}{r['ms_per_step']:>9.1f}"
              f"{cell(r, 'peak_mem_gib', '.2f'):>9}{r['x_floor']:>8.2f}{r['x_full']:>7.2f}"
              f"{cell(r, 'eval_img_per_s', '.0f'):>12}{cell(r, 'eval_x_plain', '.2f'):>8}"
              f"{cell(r, 'merged_img_per_s', '.0f'):>9}{cell(r, 'merged_x_plain', '.2f'):>8}"
              f"{cell(r, 'ops_per_step', ','):>9}{cell(r, 'saved_mib', '.1f'):>10}"
              f"{cell(r, 'saved_mib_per_sample', '.1f'):>8}")
    for name, r in rows.items():
        if "eval_loop_img_per_s" in r:
            print(f"\nevaluation loop as train.py runs it (row {name}, {args.eval_loop_images:,} cached images, "
                  f"{'merged' if r['eval_loop_merged'] else 'unmerged'}): {r['eval_loop_img_per_s']:.0f} img/s"
                  + (f" = {r['eval_loop_x_plain']:.2f} × plain inference" if "eval_loop_x_plain" in r else ""))
        pr = r.get("profile")
        if pr and "error" not in pr:
            busy = (f", device busy {pr['device_ms']:.1f} ms ({100 * pr['device_ms'] / pr['wall_ms']:.0f} %)"
                    if pr["device_ms"] is not None else "")
            print(f"\nprofile {name}: {pr['wall_ms']:.1f} ms per step under the profiler, host in ops "
                  f"{pr['host_ms']:.1f} ms{busy}; top ops by {'device' if busy else 'host'} time: "
                  + ", ".join(f"{t['op']} {t['ms']:.2f} ms ({t['calls']:g}×)" for t in pr["top"]))
        elif pr:
            print(f"\nprofile {name}: {pr['error']}")
    again = report["floor_again_img_per_s"]
    if again is not None:  # an eager GPU step is host-bound: a busy host slows whichever rows it overlaps
        floor = rows["floor"]["img_per_s"]
        print(f"\nfloor measured again after the last row: {again:.1f} img/s ({100 * (again / floor - 1):+.1f} % from "
              "the first; ratios move by as much)")


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except (RunError, ValueError) as e:  # ValueError: a method refused its arguments (named in the message)
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    report = measure(args, device)
    print_report(report)
    if args.json:
        write_json(Path(args.json), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
