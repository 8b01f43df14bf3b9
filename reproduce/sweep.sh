# Shared body of reproduce/<paper>_<benchmark>.sh — sourced, not run. The calling script sets CONFIG_NAME,
# DEFAULT_ARCH, DEFAULT_WEIGHTS and DESCRIPTION, then sources this file with its own arguments.
#
# One single-GPU sweep: for every task (and seed) write the task's flat config from reproduce/configs/$CONFIG_NAME.yaml
# into the run folder, run train.py there, skip runs whose results.json exists (resumable; an interrupted run is
# continued with train.py --resume), and finish with reproduce/verify.py's table.
#
# Knobs (environment variables):
#   VTAB_ROOT / FGVC_ROOT  data root (default data/vtab-1k / data/fgvc); VTAB_ROOT/<task>/{train800val200,test}.txt
#   WEIGHTS    backbone weights: timm name, .npz/.safetensors/.pth path, or none (random init, smoke runs only);
#              vit_base_patch16_224.augreg_in21k gives the papers' `*` (AugReg) rows
#   OUT        output root (default runs/reproduce); runs go to $OUT/$CONFIG_NAME/<task>/seed<k>/ (PROTOCOL=clean:
#              seed<k>-clean/); use another OUT for other weights (one backbone per sweep folder)
#   TASKS      subset of the config's tasks, space- or comma-separated (default: all)
#   EPOCHS     override the epochs of every task (warm-up scaled in proportion) — smoke/debug runs
#   ARCH       architecture (default per script); IMG_SIZE (default 224); PRECISION fp32|bf16 (default fp32)
#   COMPILE    none (default) | default | reduce-overhead | max-autotune: train.py --compile, the training forward
#              under torch.compile; reduce-overhead (CUDA graphs) trained HTA as configured 3.3x faster at batch 32
#              on an H200 (docs/PERFORMANCE.md); each run compiles once per batch shape (tens of seconds, less
#              once torch's compile cache is warm)
#   SEEDS      number of seeds (default 1, as the papers): seeds = config seed, +1, ...; 3 gives mean ± std
#   SEED_LIST  explicit seeds instead, e.g. "42 43 44"
#   PROTOCOL   paper (default): train800val200 (FGVC: train), test every eval epoch; verify.py prints the
#              test-selected max and the last-epoch test top-1, which is the clean protocol's reported number
#              (docs/benchmarks.md §6.2 steps 2-3) when CONFIG holds values selected on val200 (search.py: selection: val)
#              | clean: the selection runs of §6.2 step 1 (train800 -> val200, FGVC train -> val): val top-1 at the
#              last epoch (acc_val_last; test read at the last epoch only); no epoch is selected, no test number
#              of these runs is the clean report
#   CONFIG     another sweep config (default reproduce/configs/$CONFIG_NAME.yaml, e.g. one written by search.py:
#              search.py, then this sweep with PROTOCOL=paper = the clean protocol's retrain and report)
#   TOLERANCE  verify.py tolerance in points (default 1.0); STRICT=1 makes out-of-tolerance rows fail the sweep
#   MARKDOWN   also write verify.py's table as Markdown to this file
#   FAIL_FAST=1  stop at the first failed run (default: go on, list failures at the end, exit 1)
#   PYTHON     interpreter (default python)
# Arguments: --dry-run prints the exact commands and runs nothing; --help prints this text.

set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

_usage() {
    echo "${DESCRIPTION:-$CONFIG_NAME sweep}"
    echo "usage: [KNOB=value ...] $0 [--dry-run]"
    sed -n '/^# Knobs/,/^# Arguments/p' "$REPO_ROOT/reproduce/sweep.sh" | sed 's/^# \{0,1\}//'
}

DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --dry-run|-n) DRY_RUN=1 ;;
        -h|--help) _usage; exit 0 ;;
        *) echo "error: unknown argument '$arg' (only --dry-run and --help; settings are environment variables)" >&2
           exit 2 ;;
    esac
done

PYTHON="${PYTHON:-python}"
CONFIG="${CONFIG:-reproduce/configs/$CONFIG_NAME.yaml}"
OUT="${OUT:-runs/reproduce}"
ARCH="${ARCH:-$DEFAULT_ARCH}"
WEIGHTS="${WEIGHTS:-$DEFAULT_WEIGHTS}"
IMG_SIZE="${IMG_SIZE:-224}"
PRECISION="${PRECISION:-fp32}"
PROTOCOL="${PROTOCOL:-paper}"
COMPILE="${COMPILE:-none}"
SWEEP="$OUT/$CONFIG_NAME"
RUN_SUFFIX=""; [ "$PROTOCOL" = clean ] && RUN_SUFFIX="-clean"   # the two protocols never share a run folder

BENCHMARK="$("$PYTHON" -m reproduce.taskcfg "$CONFIG" --get benchmark)"
# an option or knob value train.py would reject in every run: one line, before any run
"$PYTHON" -m reproduce.taskcfg "$CONFIG" --check-options --knob "PRECISION=$PRECISION" --knob "COMPILE=$COMPILE" \
    --knob "PROTOCOL=$PROTOCOL"
if [ "$BENCHMARK" = vtab ]; then DATA_ROOT="${VTAB_ROOT:-data/vtab-1k}"; else DATA_ROOT="${FGVC_ROOT:-data/fgvc}"; fi
TASK_LIST="$("$PYTHON" -m reproduce.taskcfg "$CONFIG" --list-tasks ${TASKS:+--select "$TASKS"})"
if [ -n "${SEED_LIST:-}" ]; then
    SEED_VALUES="${SEED_LIST//,/ }"
else
    base="$("$PYTHON" -m reproduce.taskcfg "$CONFIG" --get seed)"
    SEED_VALUES="$(seq "$base" $((base + ${SEEDS:-1} - 1)) | tr '\n' ' ')"
fi

_show() { printf '%q' "$1"; shift; printf ' %q' "$@"; printf '\n'; }
# A run folder is reused (skipped or resumed) as it is: warn when it was started with another command, or with other
# hyper-parameters -- the command names $run/config.yaml, not its content, so a config edited since (e.g. by
# search.py) is caught only by comparing that file with what $CONFIG gives the task now (header comments aside).
_check_reuse() {
    if [ -f "$run/command.txt" ] && [ "$(cat "$run/command.txt")" != "$(_show "${train[@]}")" ]; then
        echo "   WARNING: that run used other settings ($run/command.txt); delete the folder or use another OUT to rerun"
    fi
    if [ -f "$run/config.yaml" ] && [ "$(grep -v '^#' "$run/config.yaml")" != \
            "$("$PYTHON" -m reproduce.taskcfg "$CONFIG" "$task" ${EPOCHS:+--epochs "$EPOCHS"})" ]; then
        echo "   WARNING: that run used other hyper-parameters ($run/config.yaml differs from what $CONFIG gives" \
             "$task now); delete the folder or use another OUT to rerun"
    fi
}

echo "== $CONFIG_NAME: ${DESCRIPTION:-}"
echo "   config $CONFIG, tasks: $TASK_LIST"
echo "   arch $ARCH, weights $WEIGHTS, img $IMG_SIZE, $PRECISION, compile $COMPILE, protocol $PROTOCOL, seeds $SEED_VALUES" \
     "${EPOCHS:+, EPOCHS override $EPOCHS}"
echo "   data $DATA_ROOT -> runs in $SWEEP"

# Missing data or weights: say how to get them (a dry run only warns).
if ! "$PYTHON" -m reproduce.preflight --benchmark "$BENCHMARK" --root "$DATA_ROOT" --weights "$WEIGHTS" \
        --protocol "$PROTOCOL" --tasks $TASK_LIST; then
    if [ "$DRY_RUN" = 1 ]; then echo "(dry run: continuing despite the problems above)"; else exit 3; fi
fi

failed=()
for task in $TASK_LIST; do
    for seed in $SEED_VALUES; do
        run="$SWEEP/$task/seed$seed$RUN_SUFFIX"
        gen=("$PYTHON" -m reproduce.taskcfg "$CONFIG" "$task" --out "$run/config.yaml" ${EPOCHS:+--epochs "$EPOCHS"})
        train=("$PYTHON" train.py --config "$run/config.yaml" --dataset "$task" --data-root "$DATA_ROOT"
               --arch "$ARCH" --pretrained "$WEIGHTS" --img-size "$IMG_SIZE" --precision "$PRECISION"
               --protocol "$PROTOCOL" --seed "$seed" --out "$run")
        if [ "$COMPILE" != none ]; then train+=(--compile "$COMPILE"); fi  # absent by default: command.txt unchanged
        if [ -f "$run/results.json" ]; then
            echo "-- $task seed $seed: done ($run/results.json), skipped"
            _check_reuse
            continue
        fi
        if [ -f "$run/train_state.pt" ]; then
            echo "-- $task seed $seed: resuming the unfinished run in $run"
            _check_reuse
            train=("$PYTHON" train.py --resume "$run")
            gen=()
        else
            echo "-- $task seed $seed"
        fi
        if [ "$DRY_RUN" = 1 ]; then
            [ ${#gen[@]} -gt 0 ] && _show "${gen[@]}"
            _show "${train[@]}"
            continue
        fi
        status=0
        if [ ${#gen[@]} -gt 0 ]; then
            "${gen[@]}" || status=$?
            [ "$status" = 0 ] && _show "${train[@]}" > "$run/command.txt"
        fi
        if [ "$status" = 0 ]; then
            "${train[@]}" 2>&1 | tee -a "$run/train.log" || status=$?
        fi
        if [ "$status" != 0 ]; then
            echo "!! $task seed $seed failed (exit $status); log: $run/train.log" >&2
            failed+=("$task/seed$seed")
            [ "${FAIL_FAST:-0}" = 1 ] && break 2
        fi
    done
done

verify=("$PYTHON" reproduce/verify.py "$SWEEP" --config "$CONFIG" --tasks $TASK_LIST
        --tolerance "${TOLERANCE:-1.0}" ${MARKDOWN:+--markdown "$MARKDOWN"})
[ "${STRICT:-0}" = 1 ] && verify+=(--strict)
echo
if [ "$DRY_RUN" = 1 ]; then
    _show "${verify[@]}"
    exit 0
fi
rc=0
"${verify[@]}" || rc=$?
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed runs (${#failed[@]}): ${failed[*]}" >&2
    exit 1
fi
exit "$rc"
