#!/usr/bin/env bash
# One GPU session's performance run (docs/PERFORMANCE.md), prepared to fit a short device lease:
#
#   0. the fast paths against their references ON THE GPU: the CUDA cases of tests/test_methods_{hta,snell}.py
#      (verdicts in fp64); a failure is reported and in the exit status, and the rows are measured all the same;
#   1. eager: every target row side by side (floor, full, ARC, ARC_att, HTA as benchmarked and as configured in
#      configs/hta_vtab.yaml, each with impl lowrank and with per-layer weights, LoRA, LoRA on all linears, SNELL
#      and SNELL without dropout, each with per-layer kernels, SNELL's threshold strategies), train.py's evaluation
#      loop for the configured HTA row, a profile of a few rows and the floor once more (the run's drift); the
#      configured HTA row again at the config's own batch size; then the projection of householder_vtab.sh and the
#      targets (reproduce/project.py);
#   2. CUDA graphs (--compile reduce-overhead), training rows only, under a time limit so step 1 always survives;
#      the projection again at the compiled HTA speed, with each task's compile time.
#
# Usage:  OUT=/some/dir bash reproduce/bench_gpu.sh        (default OUT: ./bench_out, from the calling directory)
#         COMPILE_LIMIT=240 METHODS=... COMPILED_METHODS=... PROFILE=...  to change what runs
#         DEVICE=cpu ARCH=vit_micro_patch8 IMG_SIZE=32 BATCH=8 STEPS=2 WARMUP=1 EVAL_LOOP_IMAGES=16
#                                                                   a seconds-long smoke run (tests)
# Writes: $OUT/checks.txt, $OUT/eager{,_cfg_batch}.json, $OUT/eager.txt, $OUT/eager_project.json,
#         $OUT/compiled{,_cfg_batch}.json, $OUT/compiled.txt, $OUT/compiled_project.json, $OUT/env.txt
set -uo pipefail
OUT=$(realpath -m "${OUT:-bench_out}")  # relative to where the script is called from
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
CONFIG=reproduce/configs/hta_vtab.yaml
CFG=$(python -m reproduce.project --variant-of "$CONFIG") || exit 2    # HTA as the sweep configures it
CFG_BATCH=$(python -m reproduce.taskcfg "$CONFIG" --get batch_size) || exit 2
ALL_LINEARS=lora:targets=q,k,v,proj,fc1,fc2
NODROP=snell:dropout=0:drop_path=0
METHODS=${METHODS:-arc,arc_att,hta,hta:impl=lowrank,hta:batch_weights=false,$CFG,$CFG:impl=lowrank,$CFG:batch_weights=false,lora,$ALL_LINEARS,snell,snell:batch_weights=false,snell:select=sort,snell:select=kthvalue,$NODROP,$NODROP:batch_weights=false}
COMPILED_METHODS=${COMPILED_METHODS:-$CFG,$ALL_LINEARS,snell,snell:batch_weights=false,arc,$CFG:impl=lowrank,lora}
COMPILE_LIMIT=${COMPILE_LIMIT:-240}
# rows profiled for 3 more steps (host vs device time per step, top ops); PROFILE= for none
PROFILE=${PROFILE-floor,arc,$CFG,lora,snell}
in_rows() {  # the rows of list $1 that list $2 measures (bench.py's own parsing of a row list)
  python - "$1" "$2" <<'EOF'
import sys
from engine.variants import split_variants
rows = set(split_variants(sys.argv[2], ("floor", "full")))
print(",".join(r for r in split_variants(sys.argv[1], ("floor", "full")) if r in rows))
EOF
}
# the projection's row (HTA as configured, with train.py's evaluation loop timed) is always measured
[ -n "$(in_rows "$CFG" "$METHODS")" ] || METHODS="$METHODS,$CFG"
[ -n "$(in_rows "$CFG" "$COMPILED_METHODS")" ] || COMPILED_METHODS="$COMPILED_METHODS,$CFG"
keep=$(in_rows "$PROFILE" "floor,full,$METHODS") || exit 2
COMMON=(--device "$DEVICE" --arch "${ARCH:-vit_base_patch16_224}" --img-size "${IMG_SIZE:-224}"
        --eval-batch-size "${EVAL_BATCH:-256}" --precision bf16 --steps "${STEPS:-15}" --warmup "${WARMUP:-5}")
[ -n "${EVAL_LOOP_IMAGES:-}" ] && COMMON+=(--eval-loop-images "$EVAL_LOOP_IMAGES")  # default: mean VTAB test split
BATCH=${BATCH:-64}
mkdir -p "$OUT"
{ date -u; git rev-parse HEAD 2>/dev/null
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  python -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

checks=0
if [ "$DEVICE" = cuda ]; then
  python -m pytest -q -p no:cacheprovider tests/test_methods_hta.py tests/test_methods_snell.py -k cuda \
      2>&1 | tee "$OUT/checks.txt"
  checks=${PIPESTATUS[0]}
else
  echo "device $DEVICE: the fast-path checks ran with the CPU test suite" | tee "$OUT/checks.txt"
fi

python bench.py "${COMMON[@]}" --batch-size "$BATCH" --methods "$METHODS" --eval-loop "$CFG" --profile "$keep" \
    --json "$OUT/eager.json" 2>&1 | tee "$OUT/eager.txt"
eager=${PIPESTATUS[0]}
cfg_json=()
if [ "$CFG_BATCH" != "$BATCH" ]; then  # the config trains at its own batch size: its row at that size too
  python bench.py "${COMMON[@]}" --batch-size "$CFG_BATCH" --methods "$CFG" --train-only --eval-loop none \
      --json "$OUT/eager_cfg_batch.json" 2>&1 | tee -a "$OUT/eager.txt"
  cfg_json=("$OUT/eager_cfg_batch.json")
fi
python -m reproduce.project "$OUT/eager.json" "${cfg_json[@]}" --json "$OUT/eager_project.json" \
    2>&1 | tee -a "$OUT/eager.txt"

export OUT BATCH CFG CFG_BATCH COMPILED_METHODS
timeout "$COMPILE_LIMIT" bash -c '
  set -o pipefail
  python bench.py "$@" --batch-size "$BATCH" --methods "$COMPILED_METHODS" --eval-loop "$CFG" --train-only \
      --compile reduce-overhead --json "$OUT/compiled.json" || exit
  if [ "$CFG_BATCH" != "$BATCH" ]; then
    python bench.py "$@" --batch-size "$CFG_BATCH" --methods "$CFG" --train-only --eval-loop none \
        --compile reduce-overhead --json "$OUT/compiled_cfg_batch.json" || exit
  fi' _ "${COMMON[@]}" 2>&1 | tee "$OUT/compiled.txt"
compiled=${PIPESTATUS[0]}
if [ "$compiled" = 0 ]; then
  extra=(); [ -f "$OUT/compiled_cfg_batch.json" ] && extra=("$OUT/compiled_cfg_batch.json")
  python -m reproduce.project "$OUT/compiled.json" "${extra[@]}" --json "$OUT/compiled_project.json" \
      2>&1 | tee -a "$OUT/compiled.txt"
fi
echo "checks exit $checks, eager exit $eager, compiled exit $compiled (124 = stopped at COMPILE_LIMIT=${COMPILE_LIMIT}s)"
[ "$eager" != 0 ] && exit "$eager"
exit "$checks"
