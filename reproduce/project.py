"""What bench.py's numbers mean for a sweep: the projected wall time of a sweep config, and the performance targets
(docs/PERFORMANCE.md, "Targets") judged from one bench run.

    python -m reproduce.project bench64.json bench32.json      # projection of configs/hta_vtab.yaml + targets
    python -m reproduce.project --variant-of reproduce/configs/hta_vtab.yaml   # the bench row of a config's method

The projection resolves every task of the config as the sweep does (epochs, batch size, evaluation schedule) and
uses the bench row of the config's method as configured (``--variant-of`` prints its name, to pass to
``bench.py --methods``) at each task's own batch size: an eager step is bound by launching kernels, so halving
the batch nearly halves img/s, and a batch size no bench run measured is refused rather than guessed. Evaluation
runs at that row's measured train.py evaluation loop (``bench.py --eval-loop``), else its merged or unmerged
inference speed. Under ``--compile`` each task compiles its training step once per batch shape.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reproduce import taskcfg  # noqa: E402
from util.cli import ArgumentParser  # noqa: E402
from util.files import write_text_atomic  # noqa: E402

__all__ = ["TRAIN_IMAGES", "config_variant", "projection", "target_verdicts", "main"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "reproduce" / "configs" / "hta_vtab.yaml"
TRAIN_IMAGES = {"vtab": 1000}  # train800val200; FGVC's training sets differ per dataset (data/tasks.py)
LORA_ALL = "lora:targets=q,k,v,proj,fc1,fc2"  # SNELL's memory reference: LoRA on the linears SNELL adapts


def config_variant(spec: dict) -> str:
    """The bench row of a sweep config's method as its defaults configure it, e.g. ``hta:rank=1:dropout=0.1``."""
    from engine.variants import variant_name

    d = spec["defaults"]
    return variant_name(d["method"], d.get("method_args") or {})


def projection(spec: dict, rows_by_batch: dict[int, dict], compile_mode: str = "none") -> dict:
    """Projected wall time of a VTAB sweep config from the bench rows of its method, one per batch size
    (``rows_by_batch``: batch size -> bench row, each with ``img_per_s``; the rows' evaluation speed is read from
    the first that has one). ValueError names a batch size no row measured."""
    from data.tasks import VTAB_TEST_SIZES
    from engine import config as C
    from engine.loop import eval_epochs

    if spec["benchmark"] != "vtab":
        raise ValueError("projection: only VTAB sweeps (every task trains on 1,000 images) are projected")
    merged = C.RunConfig().eval_merged
    keys = ("eval_loop_img_per_s", "merged_img_per_s" if merged else None, "eval_img_per_s")
    found = [(k, r[k]) for r in rows_by_batch.values() for k in keys if k and k in r]
    if not found:
        raise ValueError("projection: no evaluation speed in the rows; run bench.py with --eval-loop on this row")
    eval_key, eval_speed = min(found, key=lambda kv: keys.index(kv[0]))
    train_s = compile_s = 0.0
    eval_imgs = eval_imgs_19 = 0
    for task in spec["tasks"]:
        cfg = C.from_mapping(taskcfg.resolve(spec, task))
        row = rows_by_batch.get(cfg.batch_size)
        if row is None:
            raise ValueError(f"projection: {task} trains at batch {cfg.batch_size}, and no bench run measured that "
                             f"batch size (measured: {sorted(rows_by_batch)}); run bench.py --batch-size "
                             f"{cfg.batch_size} on this row too")
        n = TRAIN_IMAGES["vtab"]
        train_s += cfg.epochs * n / row["img_per_s"]
        # each task (its own train.py run) compiles its step once per batch shape (the epoch's last, smaller batch
        # is a second one); the bench's warm-up holds one such compilation (an upper bound: later tasks may hit
        # the compile cache; train.py evaluates eagerly)
        if compile_mode != "none":
            compile_s += (1 if n % cfg.batch_size == 0 else 2) * row["warmup_extra_s"]
        eval_imgs += len(eval_epochs(cfg)) * VTAB_TEST_SIZES[task]
        eval_imgs_19 += len(eval_epochs(C.from_mapping({**taskcfg.resolve(spec, task), "eval_every": 10,
                                                        "eval_last": 10}))) * VTAB_TEST_SIZES[task]
    return {"eval_throughput": eval_key, "train_s": train_s,
            "train_img_per_s_by_batch": {bs: r["img_per_s"] for bs, r in sorted(rows_by_batch.items())},
            "compile": compile_mode, "compile_s": compile_s, "eval_images": eval_imgs,
            "total_min": (train_s + compile_s + eval_imgs / eval_speed) / 60,
            "total_min_19_evals": (train_s + compile_s + eval_imgs_19 / eval_speed) / 60}


def target_verdicts(rows: dict, config_row: str | None = None, proj: dict | None = None) -> list[dict]:
    """The performance targets checked against one bench run's rows: one entry per target and row measured,
    {"target", "row", "value", "limit", "met"}; targets whose rows were not measured are left out. Ratios are the
    run's own, side by side."""
    out = []

    def add(target, row, value, limit, at_least=True):
        if value is not None:
            out.append({"target": target, "row": row, "value": value, "limit": limit,
                        "met": value >= limit if at_least else value <= limit})

    for name in dict.fromkeys(("arc", "arc_att", "hta", config_row, "lora")):
        if name in rows:
            add("training >= 0.85 x floor", name, rows[name]["x_floor"], 0.85)
    if "snell" in rows:
        add("SNELL training >= 0.9 x full", "snell", rows["snell"]["x_full"], 0.9)
        peak, ref = rows["snell"].get("peak_mem_gib"), rows.get(LORA_ALL, {}).get("peak_mem_gib")
        if peak is not None and ref is not None:
            add("SNELL peak memory <= LoRA on all linears (GiB)", "snell", peak, ref, at_least=False)
    for name, r in rows.items():
        add("merged inference >= 0.97 x plain", name, r.get("merged_x_plain"), 0.97)
        add("evaluation loop >= 0.9 x plain", name, r.get("eval_loop_x_plain"), 0.9)
    if proj:
        add("sweep projected <= 30 min", config_row, proj["total_min"], 30.0, at_least=False)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(description="Project a sweep's wall time and judge the targets from bench.py runs.")
    ap.add_argument("bench", nargs="*", help="bench.py --json files of one device: the first is judged against the "
                                             "targets; all provide the config row's speed by batch size")
    ap.add_argument("--config", default=str(DEFAULT_CONFIG), help="the sweep config projected (default %(default)s)")
    ap.add_argument("--variant-of", metavar="CONFIG", help="print the bench row name of CONFIG's method and exit")
    ap.add_argument("--json", help="write the projection and the verdicts here")
    args = ap.parse_args(argv)
    try:
        if args.variant_of:
            print(config_variant(taskcfg.load(args.variant_of)))
            return 0
        if not args.bench:
            ap.error("give one or more bench.py --json files (or --variant-of CONFIG)")
        spec = taskcfg.load(args.config)
        row = config_variant(spec)
        reports = []
        for path in args.bench:
            try:
                report = json.loads(Path(path).read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"{path}: cannot read it as JSON ({e})") from None
            if not isinstance(report, dict) or not {"rows", "args", "device"} <= set(report) or report.get("partial"):
                raise ValueError(f"{path}: not the report of a finished bench.py --json run")
            reports.append(report)
        first = reports[0]
        by_batch = {r["args"]["batch_size"]: r["rows"][row] for r in reports if row in r["rows"]}
        proj = None
        if by_batch:
            proj = {"config": args.config, "row": row, **projection(spec, by_batch, first["args"]["compile"])}
            print(f"projected {Path(args.config).name} ({row}, {first['args']['precision']}, {first['device']}): "
                  "training " + f"{proj['train_s'] / 60:.1f} min ("
                  + ", ".join(f"{v:.0f} img/s at batch {b}" for b, v in proj["train_img_per_s_by_batch"].items())
                  + f"), {proj['eval_images']:,} test images evaluated ({proj['eval_throughput']})"
                  + (f", compiling {proj['compile_s'] / 60:.1f} min" if proj["compile"] != "none" else "")
                  + f"; total {proj['total_min']:.1f} min; {proj['total_min_19_evals']:.1f} min with 19 evaluations "
                  "per task")
        else:
            print(f"no projection: no bench run measured the row {row} (bench.py --methods {row})")
        verdicts = target_verdicts(first["rows"], row, proj)
        print(f"targets on {first['device']} ({first['args']['precision']}, batch {first['args']['batch_size']}):")
        for v in verdicts:
            print(f"  {'met   ' if v['met'] else 'MISSED'} {v['target']:<46} {v['row']:<34} {v['value']:>8.2f} "
                  f"(limit {v['limit']:.2f})")
        if args.json:
            write_text_atomic(args.json, json.dumps({"projection": proj, "targets": verdicts}, indent=2) + "\n")
    except (ValueError, taskcfg.ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
