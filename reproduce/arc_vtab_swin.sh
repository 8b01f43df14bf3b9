#!/usr/bin/env bash
# ARC on VTAB-1k, Swin-B IN-22k (ARC row of HTA App. Table 5), ending in the verification table against it.
# The official Swin variant: per-stage shared U, the MLP adapter on the residual stream (not mergeable: evaluated
# unmerged), dropout 0.5, drop-path 0.1 (docs/backbones.md §3). Per-task lr / wd of train_ARC_swin.py:
# reproduce/configs/arc_vtab_swin.yaml.
# Knobs (VTAB_ROOT, WEIGHTS, OUT, TASKS, EPOCHS, ARCH, IMG_SIZE, PRECISION, SEEDS, ...): reproduce/sweep.sh, or
# `arc_vtab_swin.sh --help`. `--dry-run` prints the exact commands. Example CPU smoke run:
#   TASKS=cifar EPOCHS=1 ARCH=swin_micro_patch4_window4 WEIGHTS=none IMG_SIZE=32 VTAB_ROOT=/tmp/vtab reproduce/arc_vtab_swin.sh
CONFIG_NAME=arc_vtab_swin
DEFAULT_ARCH=swin_base_patch4_window7_224
DEFAULT_WEIGHTS=swin_base_patch4_window7_224.ms_in22k
DESCRIPTION="ARC on VTAB-1k, Swin-B IN-22k (ARC row of HTA App. Table 5)"
source "$(dirname "${BASH_SOURCE[0]}")/sweep.sh" "$@"
