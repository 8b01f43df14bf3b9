"""Speed and memory of methods side by side, in one process, on one device.

    python bench.py --device cuda --precision bf16 --methods arc,arc_att,hta,lora,snell --json bench.json
    python bench.py --device cpu --arch vit_micro_patch8 --img-size 32 --batch-size 16 --steps 3   # seconds

For each method: training img/s, ms/step, peak memory and trainable parameters (random weights, random data, AdamW,
the same step as train.py), next to two reference rows measured in the same run:

* ``floor``: frozen backbone with gradients flowing back through every block (only pos_embed and the head train) —
  what no adapter method can beat;
* ``full``: full fine-tuning.

Then inference: the plain ViT vs each method's merged ViT (``models.merge``) and vs the method's own evaluation path
(unmerged, eval mode), in img/s. Ratios are printed against floor/full/plain. Warm-up steps are excluded from timing.
``--project`` adds the projected wall time of reproduce/householder_vtab.sh from the measured throughputs.

Two device-independent columns explain what a GPU run shows, and can be measured on the CPU (one extra untimed
step per row, skipped with ``--compile``):

* ``ops/step``: ATen operations dispatched by one training step (forward, backward, optimizer). An eager GPU step
  launches about one kernel per operation, and at batch 64 the ViT-B step is bound by launching them;
* ``saved MiB``: bytes autograd keeps for backward in one forward (distinct storages), the activation memory that
  grows with the batch.

``--select`` times SNELL's threshold strategies (``models.methods.snell.SELECTORS``) on the arch's real |K| shapes,
per training step (one selection per matrix), so the device default can be chosen by measurement.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import models
from models.methods import snell as _snell
from models.vit import ARCHS

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


class _OpCounter(TorchDispatchMode):
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
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def bench_train(model, args, device) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4, fused=device.type == "cuda")  # as train.py
    net = _compiled(model, args)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    model.train()

    def step():
        with _autocast(device, args.precision):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    dt = (time.perf_counter() - t0) / args.steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    out = {"img_per_s": args.batch_size / dt, "ms_per_step": dt * 1e3, "peak_mem_gib": peak,
           "params": models.count_parameters(model), "params_no_head": models.count_parameters(model, head=False)}
    if args.compile == "none":  # untimed: one step under an op counter, one forward under saved-tensor hooks
        with _OpCounter() as counter:
            step()
        out["ops_per_step"] = counter.n

        def forward():
            with _autocast(device, args.precision):
                net(x)

        out["saved_mib"] = _saved_bytes(forward) / 2**20
        opt.zero_grad(set_to_none=True)
    return out


def bench_select(args, device) -> dict:
    """ms per training step of each SNELL threshold strategy on the arch's |K| shapes: per block, q/k/v as one
    (3, D·D) batch, proj (1, D·D), fc1 and fc2 (1, D·4D) each, times the depth; |K| of the default init."""
    cfg = ARCHS[args.arch]
    d, h = cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio)
    g = torch.Generator(device="cpu").manual_seed(0)

    def mag(m, n_in, n_out):
        A = (torch.rand(m, 2, n_in, 4, generator=g) * 2 - 1) / (n_in * 4) ** 0.5
        B = (torch.rand(m, 2, n_out, 4, generator=g) * 2 - 1) / (n_out * 4) ** 0.5
        alpha = torch.tensor([0.1, -0.1]).view(2, 1, 1)
        return _snell.kernel(A, B, alpha).abs().flatten(-2).to(device)

    block = [mag(3, d, d), mag(1, d, d), mag(1, d, h), mag(1, h, d)]
    out = {}
    for name in _snell.SELECTORS:
        def run():
            for a in block:
                _snell.quantile_threshold(a, 0.9, select=name)
        for _ in range(max(args.warmup, 1)):
            run()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            run()
        _sync(device)
        out[name] = (time.perf_counter() - t0) / args.steps * cfg.depth * 1e3
    return out


@torch.no_grad()
def bench_infer(model, args, device) -> float:
    model.eval()
    model = _compiled(model, args)
    x = torch.randn(args.eval_batch_size, 3, args.img_size, args.img_size, device=device)
    for _ in range(args.warmup):
        with _autocast(device, args.precision):
            model(x)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        with _autocast(device, args.precision):
            model(x)
    _sync(device)
    return args.eval_batch_size * args.steps / (time.perf_counter() - t0)


def projection(rows: dict, args) -> dict:
    """Projected wall time of the 19-task HTA sweep (100 epochs × 1,000 images, paper-protocol evaluation every
    epoch (ARC/HTA convention) of the test split), from the measured HTA training and evaluation throughputs."""
    hta = rows.get("hta")
    if not hta or "eval_img_per_s" not in hta:
        return {}
    epochs, n_train = 100, 1000
    train_s = 19 * epochs * n_train / hta["img_per_s"]
    evals_per_task = {"every_epoch": epochs, "snell_schedule": 10 + 9}
    out = {"train_s": train_s}
    for name, n in evals_per_task.items():
        eval_s = sum(VTAB_TEST_SIZES.values()) * n / hta["eval_img_per_s"]
        out[f"total_min_eval_{name}"] = (train_s + eval_s) / 60
    return out


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
                        "'snell_nodrop' = SNELL with dropout and drop-path 0")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=20, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per row")
    p.add_argument("--json", help="write all numbers here")
    p.add_argument("--compile", choices=("none", "default", "reduce-overhead", "max-autotune"), default="none",
                   help="torch.compile every row's model (training and inference) in this mode")
    p.add_argument("--project", action="store_true", help="project the 19-task HTA sweep time")
    p.add_argument("--select", action="store_true", help="also time SNELL's threshold strategies on this device")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    special = {"lora_all": ("lora", {"targets": ("q", "k", "v", "proj", "fc1", "fc2")}),
               # SNELL without its branch dropout / drop-path: the one-GEMM (W + Kˢ) path in training too
               "snell_nodrop": ("snell", {"dropout": 0.0, "drop_path": 0.0})}
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in models.METHODS and m not in special:
            print(f"error: --methods: unknown method {m!r}; known: {', '.join(sorted([*models.METHODS, *special]))}",
                  file=sys.stderr)
            return 2
    rows: dict[str, dict] = {}
    plain = None
    for name in ["floor", "full", *methods]:
        method, kw = special.get(name, (name, {}))
        model = build(method, args, device, **kw)
        rows[name] = bench_train(model, args, device)
        if name == "floor":
            plain = model
            rows[name]["eval_img_per_s"] = bench_infer(plain, args, device)
        elif name != "full":
            rows[name]["eval_img_per_s"] = bench_infer(model, args, device)
            if model.method.mergeable:
                rows[name]["merged_img_per_s"] = bench_infer(models.merge(model), args, device)
        if name not in ("floor",):
            del model
        if device.type == "cuda":
            torch.cuda.empty_cache()  # between rows only, so each row's peak memory is its own
        print(f"  measured {name}", file=sys.stderr, flush=True)
    floor, full, plain_inf = rows["floor"]["img_per_s"], rows["full"]["img_per_s"], rows["floor"]["eval_img_per_s"]
    for r in rows.values():
        r["x_floor"], r["x_full"] = r["img_per_s"] / floor, r["img_per_s"] / full
        if "eval_img_per_s" in r:
            r["eval_x_plain"] = r["eval_img_per_s"] / plain_inf
        if "merged_img_per_s" in r:
            r["merged_x_plain"] = r["merged_img_per_s"] / plain_inf
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or
                                                                                 platform.machine())
    print(f"\n{args.arch} {args.img_size}px, batch {args.batch_size} (eval {args.eval_batch_size}), {args.precision}, "
          f"{dev_name}, {args.steps} timed steps after {args.warmup} warm-up")
    print(f"{'row':<13}{'params':>12}{'img/s':>10}{'ms/step':>9}{'peak GiB':>9}{'×floor':>8}{'×full':>7}"
          f"{'eval img/s':>12}{'×plain':>8}{'merged':>9}{'×plain':>8}{'ops/step':>9}{'saved MiB':>10}")
    for name, r in rows.items():
        mem = f"{r['peak_mem_gib']:.2f}" if r["peak_mem_gib"] is not None else "-"
        ev = f"{r['eval_img_per_s']:.0f}" if "eval_img_per_s" in r else "-"
        evx = f"{r['eval_x_plain']:.2f}" if "eval_x_plain" in r else "-"
        mg = f"{r['merged_img_per_s']:.0f}" if "merged_img_per_s" in r else "-"
        mgx = f"{r['merged_x_plain']:.2f}" if "merged_x_plain" in r else "-"
        ops = f"{r['ops_per_step']:,}" if "ops_per_step" in r else "-"
        sv = f"{r['saved_mib']:.1f}" if "saved_mib" in r else "-"
        print(f"{name:<13}{r['params']:>12,}{r['img_per_s']:>10.1f}{r['ms_per_step']:>9.1f}{mem:>9}"
              f"{r['x_floor']:>8.2f}{r['x_full']:>7.2f}{ev:>12}{evx:>8}{mg:>9}{mgx:>8}{ops:>9}{sv:>10}")
    report = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "device": dev_name,
              "torch": torch.__version__, "cuda": torch.version.cuda, "args": vars(args), "rows": rows}
    if args.project:
        report["projection"] = projection(rows, args)
        if report["projection"]:
            pr = report["projection"]
            print(f"\nprojected householder_vtab.sh (19 tasks × 100 epochs): training {pr['train_s'] / 60:.1f} min; "
                  f"total {pr['total_min_eval_every_epoch']:.1f} min evaluating test every epoch, "
                  f"{pr['total_min_eval_snell_schedule']:.1f} min with the 19-evaluation schedule")
    if args.select:
        report["select_ms_per_step"] = sel = bench_select(args, device)
        print(f"\nSNELL threshold selection, ms per training step ({args.arch}): "
              + ", ".join(f"{k} {v:.1f}" for k, v in sel.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
