# Shared body of reproduce/<paper>_<benchmark>.sh — sourced, not run. The calling script sets CONFIG_NAME,
# DEFAULT_ARCH, DEFAULT_WEIGHTS and DESCRIPTION, then sources this file with its own arguments.
#
# One sweep of single-GPU runs: for every task (and seed) write the task's flat config from
# reproduce/configs/$CONFIG_NAME.yaml into the run folder, run train.py there, skip runs whose results.json exists
# (resumable; an interrupted run is continued with train.py --resume), and finish with reproduce/verify.py's table.
# The runs go one after another (default), JOBS at once on this machine (bash jobs, GPUS pins each to a device), or
# as one submitit job array (LAUNCHER=slurm | local; reproduce/launch.py).
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
#              (docs/benchmarks.md §6.2 steps 2-3) when CONFIG holds values selected on val200 (search.py:
#              selection: val)
#              | clean: the selection runs of §6.2 step 1 (train800 -> val200, FGVC train -> val): val top-1 at the
#              last epoch (acc_val_last; test read at the last epoch only); no epoch is selected, no test number
#              of these runs is the clean report
#   CONFIG     another sweep config (default reproduce/configs/$CONFIG_NAME.yaml, e.g. one written by search.py:
#              search.py, then this sweep with PROTOCOL=paper = the clean protocol's retrain and report)
#   TOLERANCE  verify.py tolerance in points (default 1.0); STRICT=1 makes out-of-tolerance rows fail the sweep
#   MARKDOWN   also write verify.py's table as Markdown to this file
#   FAIL_FAST=1  stop at the first failed run (default: go on, list failures at the end, exit 1); with JOBS: start
#              no further run, let the running ones finish
#   JOBS       runs at once on this machine (default 1, or one per GPUS entry); each run's output goes to its
#              train.log, a failed run does not stop the others; needs bash >= 5.1. Ctrl-C stops the running ones
#              (run the same command again to resume them)
#   GPUS       devices for the runs, e.g. 0,1,2,3: each run gets one (CUDA_VISIBLE_DEVICES, the next free slot);
#              indices of the devices this shell sees; JOBS=8 GPUS=0,1,2,3 puts two runs on each
#   LAUNCHER   slurm: submit the runs as ONE SLURM job array through submitit (one task per run, JOBS = tasks
#              running at once; scheduler logs in $OUT/$CONFIG_NAME/submitit/; submit from a login node, then run
#              the same command again once the array is done: finished runs are skipped and the table printed)
#              | local: the same array through submitit's LocalExecutor, every run at once on this machine, waited
#              for (tests the submission path without SLURM) | unset (default): this machine, JOBS/GPUS
#   SLURM_PARTITION, SLURM_ACCOUNT, SLURM_TIME (per run: minutes or H:MM:SS, default 24:00:00),
#   SLURM_GPUS_PER_TASK (default 1), SLURM_CPUS_PER_TASK, SLURM_MEM (e.g. 64G)
#              sbatch settings of each array task, only with LAUNCHER=slurm (set without it: an error, except
#              inside a SLURM job, where SLURM sets some of these names itself)
#   PYTHON     interpreter (default python)
# Arguments: --dry-run prints the exact commands (LAUNCHER: the array submission too), runs nothing; --help this.

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
# how the runs are started (JOBS, GPUS, LAUNCHER, SLURM_*; and no SLURM array of this sweep still queued): one line,
# before any run; launch.py prints the launcher, the runs at once and each GPUS entry's CUDA_VISIBLE_DEVICES ("-": none)
check=("$PYTHON" -m reproduce.launch check --folder "$SWEEP/submitit")
[ "$DRY_RUN" = 1 ] && check+=(--dry-run)
PARALLEL="$("${check[@]}")"
read -r LAUNCHER JOBS DEVICES <<< "$PARALLEL"
GPU_LIST=()
if [ "$DEVICES" != - ]; then IFS=, read -r -a GPU_LIST <<< "$DEVICES"; fi
if [ "$LAUNCHER" != none ]; then WAY=array; elif [ "$JOBS" -gt 1 ]; then WAY=jobs; else WAY=serial; fi
if [ "$WAY" = jobs ] && (( BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 501 )); then
    echo "error: JOBS=$JOBS needs bash >= 5.1 (wait -n -p), this is bash $BASH_VERSION; run the script with a newer" \
         "bash or unset JOBS" >&2
    exit 2
fi
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
        echo "   WARNING: that run used other settings ($run/command.txt); delete the folder or use another OUT" \
             "to rerun"
    fi
    if [ -f "$run/config.yaml" ] && [ "$(grep -v '^#' "$run/config.yaml")" != \
            "$("$PYTHON" -m reproduce.taskcfg "$CONFIG" "$task" ${EPOCHS:+--epochs "$EPOCHS"})" ]; then
        echo "   WARNING: that run used other hyper-parameters ($run/config.yaml differs from what $CONFIG gives" \
             "$task now); delete the folder or use another OUT to rerun"
    fi
}
# The command of one run in the parallel ways (JOBS, LAUNCHER), one line of bash: a time stamp, then train.py in
# place of the shell (exec: the pid the sweep holds is train.py's), both appended to $run/train.log.
_body() {
    printf '%s' 'echo "== $(date "+%F %T") start on $HOSTNAME, CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}"'
    printf ' >> %q && exec %s >> %q 2>&1' "$run/train.log" "$(_show "${train[@]}")" "$run/train.log"
}
_fail() {  # $1 the run (task/seed<k>), $2 its folder, $3 the exit status
    echo "!! $1 failed (exit $3); log: $2/train.log" >&2
    failed+=("$1: $2/train.log")
}

echo "== $CONFIG_NAME: ${DESCRIPTION:-}"
echo "   config $CONFIG, tasks: $TASK_LIST"
echo "   arch $ARCH, weights $WEIGHTS, img $IMG_SIZE, $PRECISION, compile $COMPILE, protocol $PROTOCOL," \
     "seeds $SEED_VALUES${EPOCHS:+, EPOCHS override $EPOCHS}"
echo "   data $DATA_ROOT -> runs in $SWEEP"
case "$WAY" in
    array) echo "   launcher $LAUNCHER: one submitit job array, one task per run (reproduce/launch.py)" ;;
    jobs) echo "   $JOBS runs at once${GPU_LIST[0]+, on GPUs $DEVICES (CUDA_VISIBLE_DEVICES per run)};" \
               "each run's output in its train.log" ;;
    serial) if [ ${#GPU_LIST[@]} -gt 0 ]; then echo "   on GPU ${GPU_LIST[0]} (CUDA_VISIBLE_DEVICES)"; fi ;;
esac

# Missing data or weights: say how to get them (a dry run only warns).
if ! "$PYTHON" -m reproduce.preflight --benchmark "$BENCHMARK" --root "$DATA_ROOT" --weights "$WEIGHTS" \
        --protocol "$PROTOCOL" --tasks $TASK_LIST; then
    if [ "$DRY_RUN" = 1 ]; then echo "(dry run: continuing despite the problems above)"; else exit 3; fi
fi

failed=()   # "<task>/seed<k>: <its train.log>" of every failed run
tasks=()    # LAUNCHER: "<task>/seed<k> TAB <its train.log> TAB <its command>" of every run, for launch.py
stop=0      # FAIL_FAST=1 under JOBS: start no further run
if [ "$WAY" = jobs ]; then  # JOBS runs at once: plain bash jobs in JOBS slots, slot i on GPUS entry i mod #GPUS
    declare -A run_of=() name_of=() slot_of=()  # the runs in progress, by pid
    free_slots=()
    for ((i = 0; i < JOBS; i++)); do free_slots+=("$i"); done
    _start() {  # the run in the first free slot, in the background
        local slot="${free_slots[0]}" gpu=""
        free_slots=("${free_slots[@]:1}")
        if [ ${#GPU_LIST[@]} -gt 0 ]; then gpu="${GPU_LIST[$((slot % ${#GPU_LIST[@]}))]}"; fi
        if [ -n "$gpu" ]; then CUDA_VISIBLE_DEVICES="$gpu" bash -c "$(_body)" & else bash -c "$(_body)" & fi
        run_of[$!]="$run"; name_of[$!]="$name"; slot_of[$!]="$slot"
        echo "-- $name: started $(date '+%T')${gpu:+ on GPU $gpu}; log: $run/train.log"
    }
    _reap() {  # wait for one run to end: free its slot, say how it ended
        local pid="" status=0
        wait -n -p pid || status=$?
        free_slots+=("${slot_of[$pid]}")
        if [ "$status" = 0 ]; then
            echo "-- ${name_of[$pid]}: finished $(date '+%T') (${run_of[$pid]}/results.json)"
        else
            _fail "${name_of[$pid]}" "${run_of[$pid]}" "$status"
            if [ "${FAIL_FAST:-0}" = 1 ]; then stop=1; fi
        fi
        unset "run_of[$pid]" "name_of[$pid]" "slot_of[$pid]"
    }
    _interrupt() {  # Ctrl-C (which background jobs ignore) or TERM: end the runs this sweep started, by their pids
        trap - INT TERM
        local pid
        for pid in "${!run_of[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
        wait || true
        echo "interrupted: ${#run_of[@]} running run(s) stopped; run the same command again to resume them" >&2
        exit 130
    }
    trap _interrupt INT TERM
fi

for task in $TASK_LIST; do
    for seed in $SEED_VALUES; do
        run="$SWEEP/$task/seed$seed$RUN_SUFFIX"
        name="$task/seed$seed$RUN_SUFFIX"
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
            if [ "$WAY" = array ]; then tasks+=("$name"$'\t'"$run/train.log"$'\t'"$(_body)"); fi
            continue
        fi
        if [ "$WAY" = jobs ]; then
            while [ ${#free_slots[@]} -eq 0 ]; do _reap; done
            if [ "$stop" = 1 ]; then echo "-- $name: not started (FAIL_FAST=1 and a run failed)"; break 2; fi
        fi
        status=0
        if [ ${#gen[@]} -gt 0 ]; then
            "${gen[@]}" || status=$?
            [ "$status" = 0 ] && _show "${train[@]}" > "$run/command.txt"
        fi
        if [ "$status" = 0 ]; then
            case "$WAY" in
                array) tasks+=("$name"$'\t'"$run/train.log"$'\t'"$(_body)"); continue ;;
                jobs) _start; continue ;;
            esac
            # one after another: the output on the console and in train.log
            if [ ${#GPU_LIST[@]} -gt 0 ]; then
                CUDA_VISIBLE_DEVICES="${GPU_LIST[0]}" "${train[@]}" 2>&1 | tee -a "$run/train.log" || status=$?
            else
                "${train[@]}" 2>&1 | tee -a "$run/train.log" || status=$?
            fi
        fi
        if [ "$status" != 0 ]; then
            _fail "$name" "$run" "$status"
            [ "${FAIL_FAST:-0}" = 1 ] && break 2
        fi
    done
done
if [ "$WAY" = jobs ]; then
    while [ ${#run_of[@]} -gt 0 ]; do _reap; done
    trap - INT TERM
fi

submitted=0
if [ "$WAY" = array ] && [ ${#tasks[@]} -gt 0 ]; then
    launch=("$PYTHON" -m reproduce.launch submit --folder "$SWEEP/submitit" --name "$CONFIG_NAME")
    [ "$DRY_RUN" = 1 ] && launch+=(--dry-run)
    lrc=0
    printf '%s\n' "${tasks[@]}" | "${launch[@]}" || lrc=$?
    if [ "$lrc" = 2 ] || [ "$lrc" = 130 ]; then exit "$lrc"; fi  # the submission failed (launch.py said why) or Ctrl-C
    if [ "$DRY_RUN" != 1 ] && [ "$LAUNCHER" = slurm ]; then submitted=1; fi
    if [ "$DRY_RUN" != 1 ] && [ "$LAUNCHER" = local ]; then  # every task has ended: a run without results failed
        for line in "${tasks[@]}"; do
            IFS=$'\t' read -r name log _ <<< "$line"
            if [ ! -f "$(dirname "$log")/results.json" ]; then failed+=("$name: $log"); fi
        done
    fi
fi

verify=("$PYTHON" reproduce/verify.py "$SWEEP" --config "$CONFIG" --tasks $TASK_LIST
        --tolerance "${TOLERANCE:-1.0}" ${MARKDOWN:+--markdown "$MARKDOWN"})
[ "${STRICT:-0}" = 1 ] && verify+=(--strict)
echo
if [ "$DRY_RUN" = 1 ]; then
    _show "${verify[@]}"
    exit 0
fi
rc=0
if [ "$submitted" = 1 ]; then
    echo "The runs are queued. Once the array has finished (squeue), run the same command again: finished runs are" \
         "skipped, unfinished ones resubmitted (resumed), and the table is printed."
else
    "${verify[@]}" || rc=$?
fi
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed runs (${#failed[@]}), each with its log:" >&2
    printf '  %s\n' "${failed[@]}" >&2
    exit 1
fi
exit "$rc"
