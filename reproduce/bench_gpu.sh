#!/usr/bin/env bash
# One GPU session's performance run (docs/PERFORMANCE.md), prepared to fit a short device lease:
#
#   1. eager: the fast-path checks on the GPU first (--check, TF32 off, verdicts in fp64; exit 1 if one fails,
#      the rows are measured all the same), then every target row side by side (floor, full, ARC, ARC_att, HTA as
#      benchmarked and as configured, each with impl merged and lowrank and with per-layer weights, LoRA, LoRA on
#      all linears, SNELL and SNELL without dropout, each with batched and per-layer kernels), the projection of
#      householder_vtab.sh, train.py's evaluation loop timed on a cached split of the mean VTAB test-split size,
#      SNELL's threshold strategies (--select), a profile of a few rows (--profile: host vs device time per step)
#      and the floor once more (the run's drift);
#   2. CUDA graphs (--compile reduce-overhead), training rows only, under a time limit so step 1 always survives;
#      the projection again at the compiled HTA speed, with each task's compile time (the warm-up's extra time)
#      and train.py's evaluation loop (eager, as train.py evaluates).
#
# Usage:  OUT=/some/dir bash reproduce/bench_gpu.sh        (default OUT: ./bench_out, from the calling directory)
#         COMPILE_LIMIT=240 METHODS=... COMPILED_METHODS=... PROFILE=...  to change what runs
#         DEVICE=cpu ARCH=vit_micro_patch8 IMG_SIZE=32 BATCH=8 STEPS=2 WARMUP=1 EVAL_LOOP_IMAGES=16
#                                                                   a seconds-long smoke run (tests)
# Writes: $OUT/eager.{json,txt}, $OUT/compiled.{json,txt}, $OUT/env.txt
set -uo pipefail
OUT=$(realpath -m "${OUT:-bench_out}")  # relative to where the script is called from
cd "$(dirname "$0")/.."
METHODS=${METHODS:-arc,arc_att,hta,hta_lowrank,hta_layer_weights,hta_cfg,hta_cfg_lowrank,hta_cfg_layer_weights,lora,lora_all,snell,snell_layer_weights,snell_nodrop,snell_nodrop_layer_weights}
COMPILED_METHODS=${COMPILED_METHODS:-hta_cfg,lora_all,snell,snell_layer_weights,arc,hta_cfg_lowrank,lora}
COMPILE_LIMIT=${COMPILE_LIMIT:-240}
# rows profiled for 3 more steps (host vs device time per step, top ops); PROFILE= for none
PROFILE=${PROFILE-floor,arc,hta_cfg,lora,snell}
keep=(); IFS=, read -ra want <<< "$PROFILE"
for r in "${want[@]}"; do [[ ",floor,full,$METHODS," == *",$r,"* ]] && keep+=("$r"); done
PROFILE=$(IFS=,; echo "${keep[*]:-}")  # only rows this run measures
COMMON=(--device "${DEVICE:-cuda}" --arch "${ARCH:-vit_base_patch16_224}" --img-size "${IMG_SIZE:-224}"
        --batch-size "${BATCH:-64}" --eval-batch-size "${EVAL_BATCH:-256}" --precision bf16
        --steps "${STEPS:-15}" --warmup "${WARMUP:-5}")
[ -n "${EVAL_LOOP_IMAGES:-}" ] && COMMON+=(--eval-loop-images "$EVAL_LOOP_IMAGES")  # default: mean VTAB test split
mkdir -p "$OUT"
{ date -u; git rev-parse HEAD 2>/dev/null
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  python -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

python bench.py "${COMMON[@]}" --methods "$METHODS" --project --select --check --profile "$PROFILE" \
    --json "$OUT/eager.json" \
    2>&1 | tee "$OUT/eager.txt"
eager=${PIPESTATUS[0]}

timeout "$COMPILE_LIMIT" python bench.py "${COMMON[@]}" --methods "$COMPILED_METHODS" --train-only --project \
    --compile reduce-overhead --json "$OUT/compiled.json" 2>&1 | tee "$OUT/compiled.txt"
compiled=${PIPESTATUS[0]}
echo "eager exit $eager, compiled exit $compiled (124 = stopped at COMPILE_LIMIT=${COMPILE_LIMIT}s)"
exit "$eager"
