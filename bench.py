"""Speed and memory of methods side by side, in one process, on one device.

    python bench.py --device cuda --precision bf16 --methods arc,arc_att,hta,lora,snell --json bench.json
    python bench.py --device cpu --arch vit_micro_patch8 --img-size 32 --batch-size 16 --steps 3   # seconds

For each method: training img/s, ms/step, peak memory and trainable parameters (random weights, random data, AdamW,
the same step as train.py), next to two reference rows measured in the same run:

* ``floor``: frozen backbone with gradients flowing back through every block (only pos_embed and the head train) —
  what no adapter method can beat;
* ``full``: full fine-tuning.

Then inference: the plain ViT vs each method's merged ViT (``models.merge``) and vs the method's own evaluation path
(unmerged, eval mode), in img/s, and, for one row, train.py's evaluation loop itself (merge, cached split, loader;
:func:`bench_eval_loop`). Ratios are printed against floor/full/plain. Warm-up steps are excluded from timing.
``--project`` adds the projected wall time of reproduce/householder_vtab.sh from the measured throughputs
(see :func:`projection`).

Two device-independent columns explain what a GPU run shows, and can be measured on the CPU (one extra untimed
step per row, skipped with ``--compile``):

* ``ops/step``: ATen operations dispatched by the forward and backward of one training step (not the optimizer: the
  fused AdamW used on CUDA is a few kernels whatever the parameter count, the CPU's foreach AdamW is not). An eager
  GPU step launches about one kernel per operation (views excepted), and at batch 64 the ViT-B step is bound by
  launching them;
* ``saved MiB``: bytes autograd keeps for backward in one forward (distinct storages); the JSON also has the part
  that grows with the batch (``saved_mib_per_sample``, from a second forward at batch 1): the activation memory that
  decides the peak at batch 64.

The run ends with the issue's targets judged from its own numbers (:func:`target_verdicts`: met / MISSED, value
and limit; also in the JSON under "targets").

``--select`` times SNELL's threshold strategies (``models.methods.snell.SELECTORS``) on the arch's real |K| shapes,
per training step, as the model batches them (``SNELLPrelude``: one selection per stack of same-shape matrices) and
unbatched (per block), so the device default can be chosen by measurement.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import platform
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import models
from models.methods import hta as _hta
from models.methods import snell as _snell
from models.methods.base import take_handover
from models.vit import ARCHS
from engine import config as C
from engine.loop import eval_epochs, eval_network, evaluate
from engine.rundir import write_json

# VTAB-1k test-set sizes (specs/benchmarks.md §1), for the projection of a full 19-task sweep.
VTAB_TEST_SIZES = {
    "cifar": 10000, "caltech101": 6084, "dtd": 1880, "oxford_flowers102": 6149, "oxford_iiit_pet": 3669,
    "svhn": 26032, "sun397": 21750, "patch_camelyon": 32768, "eurosat": 5400, "resisc45": 6300,
    "diabetic_retinopathy": 42670, "clevr_count": 15000, "clevr_dist": 15000, "dmlab": 22735, "kitti": 711,
    "dsprites_loc": 73728, "dsprites_ori": 73728, "smallnorb_azi": 12150, "smallnorb_ele": 12150,
}


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


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def build(method: str, args, device: torch.device, **kw):
    if method == "floor":
        model = models.create_model(args.arch, "linear", num_classes=args.num_classes, img_size=args.img_size)
        model.pos_embed.requires_grad_(True)  # gradients must flow back through every block
    else:
        model = models.create_model(args.arch, method, num_classes=args.num_classes, img_size=args.img_size, **kw)
    return model.to(device)


def _compiled(model, args):
    return model if args.compile == "none" else torch.compile(model, mode=None if args.compile == "default" else
                                                              args.compile)


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
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4, fused=device.type == "cuda")  # as train.py
    net = _compiled(model, args)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    model.train()

    def forward_backward():
        with _autocast(device, args.precision):
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
            with _autocast(device, args.precision):
                net(inputs)

        saved, saved_one = _saved_bytes(lambda: forward(x)), _saved_bytes(lambda: forward(x[:1]))
        out["saved_mib"] = saved / 2**20
        # what grows with the batch (activations), apart from what does not (e.g. bf16 copies of frozen weights)
        out["saved_mib_per_sample"] = (saved - saved_one) / max(args.batch_size - 1, 1) / 2**20
        opt.zero_grad(set_to_none=True)
    return out


def _kernel_magnitudes(m: int, n_in: int, n_out: int, g: torch.Generator, device) -> torch.Tensor:
    """|K| of m SNELL-r8 kernels of one shape with factors as SNELL initialises them, flattened: (m, n_in·n_out)."""
    A = (torch.rand(m, 2, n_in, 4, generator=g) * 2 - 1) / (n_in * 4) ** 0.5
    B = (torch.rand(m, 2, n_out, 4, generator=g) * 2 - 1) / (n_out * 4) ** 0.5
    return _snell.kernel(A, B, torch.tensor(_snell.ALPHA).view(2, 1, 1)).abs().flatten(-2).to(device)


def _select_layouts(args) -> dict:
    """The (m, n_in, n_out) |K| stacks one SNELL training step selects thresholds from: ``batched`` as the model
    runs them (``SNELLPrelude``'s batches, read off a SNELL model built on the meta device), ``unbatched`` as each
    block would alone (q/k/v as one stack, proj, fc1, fc2)."""
    with torch.device("meta"):
        model = models.create_model(args.arch, "snell", num_classes=10, img_size=args.img_size)
    batched = [(len(b), b[0].in_features, b[0].out_features) for b in model.prelude.groups]
    cfg = ARCHS[args.arch]
    d, h = cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio)
    return {"batched": batched, "unbatched": [(3, d, d), (1, d, d), (1, d, h), (1, h, d)] * cfg.depth}


def bench_select(args, device) -> dict:
    """ms per training step of each SNELL threshold strategy, for both layouts of :func:`_select_layouts`, on |K|
    of SNELL's default init: {layout: {strategy: ms}}."""
    g = torch.Generator(device="cpu").manual_seed(0)
    out: dict = {}
    for layout, shapes in _select_layouts(args).items():
        cache: dict = {}  # one |K| stack per distinct shape (the unbatched layout repeats each shape per block)
        for s in shapes:
            if s not in cache:
                cache[s] = _kernel_magnitudes(*s, g, device)
        mags = [cache[s] for s in shapes]
        out[layout] = {}
        for name in _snell.SELECTORS:
            def run():
                for a in mags:
                    _snell.quantile_threshold(a, 0.9, select=name)
            # at most 1 + 5 calls: a slow strategy (kthvalue on CUDA: ~1.5 s per step) must not eat a short lease
            out[layout][name] = _seconds_per_call(run, device, 1, max(1, min(args.steps, 5))) * 1e3
    return out


@torch.no_grad()
def bench_infer(model, args, device) -> float:
    model.eval()
    model = _compiled(model, args)
    x = torch.randn(args.eval_batch_size, 3, args.img_size, args.img_size, device=device)

    def forward():
        with _autocast(device, args.precision):
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
    seconds = _seconds_per_call(lambda: evaluate(eval_network(model, merged), loader, device, args.precision), device,
                                1, max(1, min(args.steps, 3)))
    return n / seconds


def _rel_err(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@contextlib.contextmanager
def _true_fp32():
    """TF32 off for CUDA matmuls and convolutions while inside (bench's training rows turn it on). A TF32 GEMM keeps
    10 mantissa bits: with TF32 on, the fp32 HTA prelude check read 0.16 on an H200 (2026-11-27). The checks'
    verdicts are now taken in fp64 (:func:`_fast_vs_reference`), which TF32 does not touch; this keeps their fp32
    diagnostics in true fp32."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def _outputs_and_grads(model, x) -> list[torch.Tensor]:
    """A training forward's output and the gradient of every trainable tensor (of Σ y²), the RNG seeded first: two
    calls draw the same dropout masks and drop-path samples."""
    torch.manual_seed(0)
    y = model(x)
    params = [p for p in model.parameters() if p.requires_grad]
    return [y.detach(), *torch.autograd.grad(y.square().sum(), params)]


def _fast_vs_reference(model, x, fast, reference) -> dict:
    """``model``'s outputs and gradients with a fast path switched on (``fast()``) against the reference path
    (``reference()``), in fp64 (``fp64``: the verdict) and fp32 (``fp32``), and the reference in fp32 against fp64
    (``fp32_vs_fp64``). The model is left in fp32.

    Why fp64 decides: the checks run a perturbed 12-block ViT whose outputs and gradients amplify rounding. Its
    per-layer path in fp32 differs from fp64 by 7e-6 on the CPU (``vit_base_patch16_224``, 2026-11-27), about 100
    fp32 ulps, so two fp32 paths that sum in different orders (a batched GEMM kernel against one per layer) can differ
    by that much, and by far more with TF32. In fp64 the same rearrangement differs by ~1e-14, and any real
    difference between the two paths stays as large as it is: a 1e-9 tolerance separates the two.
    ``fp32_vs_fp64`` says how much this device's fp32 rounding alone moves the result."""
    runs = {}
    for dtype in (torch.float64, torch.float32):
        model.to(dtype)
        fast()
        got = _outputs_and_grads(model, x.to(dtype))
        reference()
        runs[dtype] = got, _outputs_and_grads(model, x.to(dtype))
    err = lambda a, b: max(_rel_err(u.double(), v.double()) for u, v in zip(a, b))  # noqa: E731
    return {"fp64": err(*runs[torch.float64]), "fp32": err(*runs[torch.float32]),
            "fp32_vs_fp64": err(runs[torch.float32][1], runs[torch.float64][1])}


def device_checks(args, device, tol: float = 1e-4, tol_fp64: float = 1e-9) -> dict:
    """The fast paths against their references ON THIS DEVICE (the CPU test suite checks them on the CPU), with TF32
    off (:func:`_true_fp32`):

    * every SNELL threshold strategy == ``torch.quantile`` exactly, on |K| of the arch's q/k/v shape (fp32);
    * HTA with the batched prelude (factors only; GEMM weights W + ΔW and ΔW) == the per-layer path (output and
      every gradient; same dropout masks), in fp64 (:func:`_fast_vs_reference`: ``hta_prelude_rel_err``, to
      ``tol_fp64``); what the prelude hands each layer == the layer's own build, in fp32 (``*_handover``, to ``tol``);
    * SNELL with the prelude building every kernel (``batch_weights``) == each layer building its own (fp64);
    * SNELL's batched thresholds (``SNELLPrelude``) == each layer's own selection (fp32, to ``tol``);
    * SNELL with activation checkpointing == without (every gradient; same dropout and drop-path draws; fp64).

    The fp32 comparisons of the same paths are reported beside each fp64 one (``*_diagnostics``), not judged.
    """
    d = ARCHS[args.arch].embed_dim
    g = torch.Generator(device="cpu").manual_seed(0)
    mag = _kernel_magnitudes(3, d, d, g, device)
    ref = torch.quantile(mag, 0.9, dim=-1)
    out: dict = {f"select_{n}_exact": bool(torch.equal(_snell.quantile_threshold(mag, 0.9, select=n), ref))
                 for n in _snell.SELECTORS}
    x = torch.randn(4, 3, args.img_size, args.img_size, generator=g).to(device)

    errs, diag = {}, {}
    for form, kw in (("factors", {"dropout": 0.1, "batch_weights": False}),
                     ("delta", {"dropout": 0.1, "batch_weights": True}), ("merged", {"batch_weights": True})):
        torch.manual_seed(0)
        hta = models.create_model(args.arch, "hta", num_classes=10, img_size=args.img_size, **kw).to(device).train()
        with torch.no_grad():
            for n, p in hta.named_parameters():
                if n.endswith((".d", ".up")) or n.startswith("head."):
                    p.normal_(0, 0.2)
        # what the prelude hands each layer against what the layer builds itself: no network in between to amplify
        diag[f"{form}_handover"] = _hta_handover_rel_err(hta)
        prelude = hta.prelude
        res = _fast_vs_reference(hta, x, lambda: setattr(hta, "prelude", prelude),
                                 lambda: setattr(hta, "prelude", None))
        errs[form] = res.pop("fp64")
        diag.update({f"{form}_{k}": v for k, v in res.items()})
    out["hta_prelude_rel_err_by_form"] = errs
    out["hta_prelude_diagnostics"] = diag
    out["hta_prelude_rel_err"] = max(errs.values())
    torch.manual_seed(0)
    sn = models.create_model(args.arch, "snell", num_classes=10, img_size=args.img_size, batch_weights=True)
    sn = sn.to(device).train()
    # the prelude builds every kernel, one batch per shape, or only selects the thresholds, each layer building its own
    res = _fast_vs_reference(sn, x, lambda: setattr(sn.prelude, "batch_weights", True),
                             lambda: setattr(sn.prelude, "batch_weights", False))
    out["snell_batched_kernels_rel_err"] = res.pop("fp64")
    snell_diag = {f"batched_kernels_{k}": v for k, v in res.items()}
    with torch.no_grad():  # the prelude's batched thresholds == each layer's own selection (exact on the CPU)
        sn.prelude()
        layers = [lin for b in sn.prelude.groups for lin in b]
        out["snell_prelude_threshold_rel_err"] = max(
            _rel_err(lin._threshold, _snell.kernel_threshold(lin.A, lin.B, lin.alpha, lin.sparsity)) for lin in layers)
        for lin in layers:
            lin._threshold = None
    ckpt = [m for m in sn.modules() if hasattr(m, "checkpoint")]
    res = _fast_vs_reference(sn, x, lambda: [setattr(m, "checkpoint", True) for m in ckpt],
                             lambda: [setattr(m, "checkpoint", False) for m in ckpt])
    out["snell_checkpoint_rel_err"] = res.pop("fp64")
    snell_diag.update({f"checkpoint_{k}": v for k, v in res.items()})
    out["snell_diagnostics"] = snell_diag
    fp64 = ("hta_prelude_rel_err", "snell_batched_kernels_rel_err", "snell_checkpoint_rel_err")
    out["ok"] = all(v for k, v in out.items() if k.endswith("_exact")) and \
        all(v <= (tol_fp64 if k in fp64 else tol) for k, v in out.items() if k.endswith("_rel_err")) and \
        all(v <= tol for k, v in diag.items() if k.endswith("_handover"))
    return out


@torch.no_grad()
def _hta_handover_rel_err(model) -> float:
    """Max relative error between what ``model.prelude`` hands each HTA layer (factors, ΔW or W + ΔW) and what that
    layer builds on its own; the slots are emptied again."""
    model.prelude()
    errs = []
    for layer in model.modules():
        if isinstance(layer, _hta.HTALinear):
            w, factors = take_handover(layer, "_weight"), take_handover(layer, "_factors")
            if factors is not None:
                errs += map(_rel_err, factors, _hta.hta_factors(layer))
            else:  # W + ΔW ("merged") or ΔW ("delta")
                base = layer.base.weight if layer._prelude_form() == "merged" else None
                errs.append(_rel_err(w, _hta.hta_delta_weight(layer, base).to(w.dtype)))
    return max(errs)


def _checks(args, device) -> dict:
    """:func:`device_checks` with TF32 off, printed. A check that raises is reported as failed (``error``) and the
    bench goes on: on a short device lease the rows still get measured."""
    try:
        with _true_fp32():
            chk = device_checks(args, device)
    except Exception as e:  # noqa: BLE001 - reported, and the exit status says it failed
        traceback.print_exc()
        chk = {"error": f"{type(e).__name__}: {e}", "ok": False}
    fmt = lambda v: f"{v:.1e}" if isinstance(v, float) else (  # noqa: E731
        "(" + ", ".join(f"{k} {x:.1e}" for k, x in v.items()) + ")" if isinstance(v, dict) else str(v))
    print("fast paths vs references on this device (TF32 off; verdicts in fp64, see device_checks): "
          + ", ".join(f"{k} {fmt(v)}" for k, v in chk.items()), flush=True)
    return chk


HTA_VTAB_CONFIG = Path(__file__).resolve().parent / "reproduce" / "configs" / "hta_vtab.yaml"


def projection(rows: dict, args, measure=None) -> dict:
    """Projected wall time of ``reproduce/householder_vtab.sh``: every task of ``configs/hta_vtab.yaml`` resolved as
    the sweep resolves it (epochs, batch size, evaluation schedule; 1,000 training images per epoch), at the
    measured training throughput of HTA as configured (the ``hta_cfg`` row, else ``hta``) and the evaluation
    throughput of that row: train.py's own evaluation loop when measured (``bench_eval_loop``), else the merged
    model's inference when ``eval_merged``, else the unmerged one's. Also given: the same with the 19-evaluation
    schedule (every 10th + the last 10 epochs) instead of the config's.

    A task whose batch size is not the bench's (the config trains at 32, the issue's setup is 64) is projected at
    the throughput of that batch size, ``measure(row, batch_size)`` -> a training row (see ``main``): an eager step
    is bound by launching kernels, so halving the batch nearly halves img/s. Without ``measure`` such a task is
    refused (ValueError) rather than projected at the wrong speed."""
    from reproduce import taskcfg

    name = next((n for n in ("hta_cfg", "hta") if n in rows), None)
    if name is None:
        return {}
    hta = rows[name]
    spec = taskcfg.load(HTA_VTAB_CONFIG)
    eval_key = next((k for k in ("eval_loop_img_per_s", "merged_img_per_s" if C.RunConfig().eval_merged else None,
                                 "eval_img_per_s") if k and k in hta), None)
    if eval_key is None:
        return {}
    by_batch = {args.batch_size: hta}  # the training row per batch size
    train_s = compile_s = 0.0
    eval_imgs = eval_imgs_19 = 0
    for task in spec["tasks"]:
        cfg = C.from_mapping(taskcfg.resolve(spec, task))
        bs = cfg.batch_size
        if bs not in by_batch:
            if measure is None:
                raise ValueError(f"projection: {task} trains at batch {bs}, the bench at {args.batch_size}; "
                                 "pass measure= to time that batch size")
            by_batch[bs] = measure(name, bs)
        row = by_batch[bs]
        train_s += cfg.epochs * 1000 / row["img_per_s"]
        # under --compile each task (its own train.py run) compiles its training step once per batch shape (the
        # epoch's last, smaller batch is a second one); the bench's warm-up holds one such compilation (an estimate:
        # later tasks may hit the compile cache; train.py evaluates eagerly)
        if args.compile != "none":
            compile_s += (1 if 1000 % bs == 0 else 2) * row["warmup_extra_s"]
        eval_imgs += len(eval_epochs(cfg)) * VTAB_TEST_SIZES[task]
        eval_imgs_19 += len(eval_epochs(dataclasses.replace(cfg, eval_every=10, eval_last=10))) * VTAB_TEST_SIZES[task]
    return {"row": name, "eval_throughput": eval_key, "train_s": train_s,
            "train_img_per_s_by_batch": {bs: r["img_per_s"] for bs, r in sorted(by_batch.items())},
            "precision": args.precision,  # the sweep's own default is fp32 (PRECISION=bf16 to match this)
            "compile": args.compile, "compile_s": compile_s, "eval_images": eval_imgs,
            "total_min": (train_s + compile_s + eval_imgs / hta[eval_key]) / 60,
            "total_min_19_evals": (train_s + compile_s + eval_imgs_19 / hta[eval_key]) / 60}


def target_verdicts(rows: dict, proj: dict | None) -> list[dict]:
    """The issue's targets (docs/PERFORMANCE.md) checked against this run's measurements: one entry per target and
    row measured, {"target", "row", "value", "limit", "met"}; targets whose rows were not measured are left out
    (the data-loader target is ``python -m data.bench``'s). Ratios are this run's, side by side."""
    out = []

    def add(target, row, value, limit, at_least=True):
        if value is not None:
            out.append({"target": target, "row": row, "value": value, "limit": limit,
                        "met": value >= limit if at_least else value <= limit})

    for name in ("arc", "arc_att", "hta", "hta_cfg", "lora"):
        if name in rows:
            add("training >= 0.85 x floor", name, rows[name]["x_floor"], 0.85)
    if "snell" in rows:
        add("SNELL training >= 0.9 x full", "snell", rows["snell"]["x_full"], 0.9)
        peak, ref = rows["snell"].get("peak_mem_gib"), rows.get("lora_all", {}).get("peak_mem_gib")
        if peak is not None and ref is not None:
            add("SNELL peak memory <= lora_all's (GiB)", "snell", peak, ref, at_least=False)
    for name, r in rows.items():
        add("merged inference >= 0.97 x plain", name, r.get("merged_x_plain"), 0.97)
        add("evaluation loop >= 0.9 x plain", name, r.get("eval_loop_x_plain"), 0.9)
    if proj:
        add("householder_vtab.sh projected <= 30 min", proj["row"], proj["total_min"], 30.0, at_least=False)
    return out


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())


def _hta_config_args() -> dict:
    import yaml

    return dict(yaml.safe_load(HTA_VTAB_CONFIG.read_text())["defaults"]["method_args"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="vit_base_patch16_224")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--eval-batch-size", type=int, default=256)
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--methods", default="arc,arc_att,hta,lora,lora_all,snell",
                   help="comma-separated; 'lora_all' = LoRA r8 on all six linears (the SNELL memory reference), "
                        "'snell_nodrop' = SNELL with dropout and drop-path 0, 'hta_cfg' = HTA with the method "
                        "arguments of reproduce/configs/hta_vtab.yaml (used by --project), 'hta_lowrank' / "
                        "'hta_cfg_lowrank' = the same trained with impl='lowrank', 'hta[_cfg]_layer_weights' / "
                        "'hta[_cfg]_batched_weights' = with batch_weights false / true, "
                        "'snell[_nodrop]_layer_weights' / 'snell[_nodrop]_batched_weights' likewise")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=20, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per row")
    p.add_argument("--json", help="write all numbers here")
    p.add_argument("--compile", choices=("none", "default", "reduce-overhead", "max-autotune"), default="none",
                   help="torch.compile every row's model (training and inference) in this mode")
    p.add_argument("--project", action="store_true", help="project the 19-task HTA sweep time")
    p.add_argument("--select", action="store_true", help="also time SNELL's threshold strategies on this device")
    p.add_argument("--train-only", action="store_true", help="skip the inference rows (e.g. to keep a --compile run "
                                                               "short: each inference model compiles again)")
    p.add_argument("--eval-loop-images", type=int, default=round(sum(VTAB_TEST_SIZES.values()) / len(VTAB_TEST_SIZES)),
                   help="images per timed evaluation loop (default: the mean VTAB-1k test split); the loop is timed "
                        "for one row: the projection's HTA row, else the first method")
    p.add_argument("--profile", default="", help="comma-separated rows to profile for 3 more training steps "
                                                   "(host vs device time per step, top ops), e.g. arc,snell")
    p.add_argument("--check", action="store_true", help="also check the fast paths against their references on "
                                                          "this device (results in the JSON; exit 1 if one fails)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    hta_cfg_args = _hta_config_args()
    special = {"lora_all": ("lora", {"targets": ("q", "k", "v", "proj", "fc1", "fc2")}),
               # SNELL without its branch dropout / drop-path: the one-GEMM (W + Kˢ) path in training too
               "snell_nodrop": ("snell", {"dropout": 0.0, "drop_path": 0.0}),
               # HTA as reproduce/configs/hta_vtab.yaml trains it (its dropout takes the two-GEMM path)
               "hta_cfg": ("hta", hta_cfg_args),
               # the same two, trained through the low-rank branch instead of W + ΔW (models.methods.hta, impl)
               "hta_lowrank": ("hta", {"impl": "lowrank"}),
               "hta_cfg_lowrank": ("hta", {**hta_cfg_args, "impl": "lowrank"}),
               # the same two with the prelude batching only the factors, each layer forming its own weight (the
               # CPU's default), or the GEMM weights too (CUDA's): HTAPrelude.WEIGHTS_BY_DEVICE
               "hta_layer_weights": ("hta", {"batch_weights": False}),
               "hta_cfg_layer_weights": ("hta", {**hta_cfg_args, "batch_weights": False}),
               "hta_batched_weights": ("hta", {"batch_weights": True}),
               "hta_cfg_batched_weights": ("hta", {**hta_cfg_args, "batch_weights": True}),
               # SNELL with each layer building its kernel inside its checkpoint (the CPU's default), or the prelude
               # building all of them in one batch per shape (CUDA's): SNELLPrelude.WEIGHTS_BY_DEVICE
               "snell_layer_weights": ("snell", {"batch_weights": False}),
               "snell_nodrop_layer_weights": ("snell", {"dropout": 0.0, "drop_path": 0.0, "batch_weights": False}),
               "snell_batched_weights": ("snell", {"batch_weights": True}),
               "snell_nodrop_batched_weights": ("snell", {"dropout": 0.0, "drop_path": 0.0, "batch_weights": True})}
    methods = [m for m in args.methods.split(",") if m]
    profiled = {m for m in args.profile.split(",") if m}
    if profiled - {"floor", "full", *methods}:
        print(f"error: --profile: {', '.join(sorted(profiled - {'floor', 'full', *methods}))} not among the rows "
              f"(floor, full and --methods)", file=sys.stderr)
        return 2
    for m in methods:
        if m not in models.METHODS and m not in special:
            print(f"error: --methods: unknown method {m!r}; known: {', '.join(sorted([*models.METHODS, *special]))}",
                  file=sys.stderr)
            return 2
    if args.eval_loop_images < 1:
        print(f"error: --eval-loop-images must be >= 1, got {args.eval_loop_images}", file=sys.stderr)
        return 2
    dev_name = _device_name(device)
    # the one row whose evaluation loop is timed: what the projection reads, else the first method
    loop_row = next((m for m in ("hta_cfg", "hta") if m in methods), methods[0] if methods else "floor")
    chk = _checks(args, device) if args.check else None  # first: a short device lease answers it before the rows
    rows: dict[str, dict] = {}

    def build_row(name: str, at: argparse.Namespace):  # a row name (a method or one of ``special``) -> its model
        method, kw = special.get(name, (name, {}))
        return build(method, at, device, **kw)

    for name in ["floor", "full", *methods]:
        model = build_row(name, args)
        rows[name] = bench_train(model, args, device, profile=name in profiled)
        if name == loop_row and (args.project or not args.train_only):  # train.py's loop: eager, as train.py runs it
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
        if args.json:  # rows so far, so a run stopped by a time limit keeps what it measured
            write_json(Path(args.json), {"partial": True, "device": dev_name, "args": vars(args), "rows": rows,
                                         **({"checks": chk} if chk is not None else {})})
    floor_again = None
    if args.compile == "none" and methods:  # the floor once more, last: how far this run's speed drifted
        model = build_row("floor", args)
        floor_again = bench_train(model, args, device)["img_per_s"]
        del model
    floor, full, plain_inf = rows["floor"]["img_per_s"], rows["full"]["img_per_s"], rows["floor"].get("eval_img_per_s")
    for r in rows.values():
        r["x_floor"], r["x_full"] = r["img_per_s"] / floor, r["img_per_s"] / full
        if "eval_img_per_s" in r:
            r["eval_x_plain"] = r["eval_img_per_s"] / plain_inf
        if "merged_img_per_s" in r:
            r["merged_x_plain"] = r["merged_img_per_s"] / plain_inf
        if "eval_loop_img_per_s" in r and plain_inf:
            r["eval_loop_x_plain"] = r["eval_loop_img_per_s"] / plain_inf
    print(f"\n{args.arch} {args.img_size}px, batch {args.batch_size} (eval {args.eval_batch_size}), {args.precision}, "
          f"{dev_name}, {args.steps} timed steps after {args.warmup} warm-up")
    print(f"{'row':<16}{'params':>12}{'img/s':>10}{'ms/step':>9}{'peak GiB':>9}{'×floor':>8}{'×full':>7}"
          f"{'eval img/s':>12}{'×plain':>8}{'merged':>9}{'×plain':>8}{'ops/step':>9}{'saved MiB':>10}{'/sample':>8}")
    for name, r in rows.items():
        mem = f"{r['peak_mem_gib']:.2f}" if r["peak_mem_gib"] is not None else "-"
        ev = f"{r['eval_img_per_s']:.0f}" if "eval_img_per_s" in r else "-"
        evx = f"{r['eval_x_plain']:.2f}" if "eval_x_plain" in r else "-"
        mg = f"{r['merged_img_per_s']:.0f}" if "merged_img_per_s" in r else "-"
        mgx = f"{r['merged_x_plain']:.2f}" if "merged_x_plain" in r else "-"
        ops = f"{r['ops_per_step']:,}" if "ops_per_step" in r else "-"
        sv = f"{r['saved_mib']:.1f}" if "saved_mib" in r else "-"
        per = f"{r['saved_mib_per_sample']:.1f}" if "saved_mib_per_sample" in r else "-"
        print(f"{name:<16}{r['params']:>12,}{r['img_per_s']:>10.1f}{r['ms_per_step']:>9.1f}{mem:>9}"
              f"{r['x_floor']:>8.2f}{r['x_full']:>7.2f}{ev:>12}{evx:>8}{mg:>9}{mgx:>8}{ops:>9}{sv:>10}{per:>8}")
    if loop_row in rows and "eval_loop_img_per_s" in rows[loop_row]:
        r = rows[loop_row]
        print(f"\nevaluation loop as train.py runs it (row {loop_row}, {args.eval_loop_images:,} cached images, "
              f"{'merged' if r['eval_loop_merged'] else 'unmerged'}): {r['eval_loop_img_per_s']:.0f} img/s"
              + (f" = {r['eval_loop_x_plain']:.2f} × plain inference" if "eval_loop_x_plain" in r else ""))
    for name, r in rows.items():
        pr = r.get("profile")
        if pr and "error" not in pr:
            busy = (f", device busy {pr['device_ms']:.1f} ms ({100 * pr['device_ms'] / pr['wall_ms']:.0f} %)"
                    if pr["device_ms"] is not None else "")
            print(f"\nprofile {name}: {pr['wall_ms']:.1f} ms per step under the profiler, host in ops "
                  f"{pr['host_ms']:.1f} ms{busy}; top ops by {'device' if busy else 'host'} time: "
                  + ", ".join(f"{t['op']} {t['ms']:.2f} ms ({t['calls']:g}×)" for t in pr["top"]))
        elif pr:
            print(f"\nprofile {name}: {pr['error']}")
    if floor_again is not None:
        # Eager GPU steps are bound by the host issuing kernels, so a busy host slows whichever rows it overlaps:
        # on the H200 the floor measured 2,554 img/s in one run and 2,996 in the next, LoRA 0.98× and 0.68× it.
        print(f"\nfloor measured again after the last row: {floor_again:.1f} img/s "
              f"({100 * (floor_again / floor - 1):+.1f} % from the first; ratios move by as much)")
    report = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "device": dev_name,
              "torch": torch.__version__, "cuda": torch.version.cuda, "args": vars(args), "rows": rows,
              "floor_again_img_per_s": floor_again}
    if args.project:
        def measure(row: str, batch_size: int) -> dict:  # the projection's row at a config's own batch size
            at = argparse.Namespace(**{**vars(args), "batch_size": batch_size})
            r = bench_train(build_row(row, at), at, device)
            print(f"  measured {row} at batch {batch_size}: {r['img_per_s']:.1f} img/s", file=sys.stderr, flush=True)
            return r

        report["projection"] = projection(rows, args, measure)
        if report["projection"]:
            pr = report["projection"]
            print(f"\nprojected householder_vtab.sh (configs/hta_vtab.yaml, row {pr['row']}, {pr['precision']}): "
                  f"training {pr['train_s'] / 60:.1f} min ("
                  + ", ".join(f"{v:.0f} img/s at batch {b}" for b, v in pr["train_img_per_s_by_batch"].items())
                  + f"), {pr['eval_images']:,} test images evaluated "
                  f"({pr['eval_throughput']})"
                  + (f", compiling {pr['compile_s'] / 60:.1f} min" if pr["compile"] != "none" else "")
                  + f"; total {pr['total_min']:.1f} min; {pr['total_min_19_evals']:.1f} min with 19 evaluations per "
                  "task")
    if chk is not None:
        report["checks"] = chk
    if args.select:
        sel = bench_select(args, device)
        report["select_ms_per_step"], report["select_ms_per_step_unbatched"] = sel["batched"], sel["unbatched"]
        for layout, times in sel.items():
            print(f"\nSNELL threshold selection, ms per training step ({args.arch}, {layout}): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    report["targets"] = verdicts = target_verdicts(rows, report.get("projection"))
    if verdicts:
        print(f"\ntargets on {dev_name} ({args.precision}, batch {args.batch_size}):")
        for v in verdicts:
            print(f"  {'met   ' if v['met'] else 'MISSED'} {v['target']:<42} {v['row']:<24} "
                  f"{v['value']:>8.2f} (limit {v['limit']:.2f})")
    if args.json:
        write_json(Path(args.json), report)
    return 1 if chk is not None and not chk["ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
