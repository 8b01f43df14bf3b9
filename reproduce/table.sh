# Shared body of a paper table with several rows, one sweep config each — sourced, not run. The calling script sets
# ROWS (space-separated CONFIG_NAME[:ARCH[:WEIGHTS]] entries, in the table's order), DEFAULT_ARCH, DEFAULT_WEIGHTS and
# DESCRIPTION, then sources this file with its own arguments.
#
# Every row is one sweep (reproduce/sweep.sh, so all its knobs apply to every row: VTAB_ROOT, TASKS, EPOCHS, JOBS,
# GPUS, LAUNCHER, --dry-run ...), run in a subshell one after another, each ending in its own verification table
# against its paper row. A row's ARCH and WEIGHTS (e.g. ViT-L and ViT-H rows of one table) replace the defaults, and
# an ARCH or WEIGHTS set in the environment replaces them all. The exit status is the first failing row's.
set -euo pipefail
TABLE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case " $* " in
    *" -h "*|*" --help "*)
        echo "$DESCRIPTION"
        echo "rows (sweep configs in reproduce/configs/, run in turn): $ROWS"
        echo "every row takes the knobs of reproduce/sweep.sh:"
        ( CONFIG_NAME=${ROWS%% *}; CONFIG_NAME=${CONFIG_NAME%%:*}; source "$TABLE_ROOT/reproduce/sweep.sh" --help )
        exit 0 ;;
esac
_rc=0
for _row in $ROWS; do
    IFS=: read -r _config _arch _weights <<< "$_row"
    (
        CONFIG_NAME=$_config
        DEFAULT_ARCH=${_arch:-$DEFAULT_ARCH}
        DEFAULT_WEIGHTS=${_weights:-$DEFAULT_WEIGHTS}
        echo "== $DESCRIPTION: row $CONFIG_NAME"
        source "$TABLE_ROOT/reproduce/sweep.sh" "$@"
    ) || { _status=$?; [ "$_rc" = 0 ] && _rc=$_status; }
done
exit "$_rc"
