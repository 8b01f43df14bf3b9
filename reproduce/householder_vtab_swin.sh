#!/usr/bin/env bash
# HTA on VTAB-1k, Swin-B IN-22k (HTA row of App. Table 5; main-text Table 4 prints its means), ending in the
# verification table against the printed row.
# Placement (the paper leaves it open): fused qkv, attention proj and the three patch-merging reductions at rank 1,
# the one that prints 0.23 M (docs/backbones.md §3). Per-task hyper-parameters: reproduce/configs/hta_vtab_swin.yaml.
# The other rows of App. Table 5: ARC is reproduce/arc_vtab_swin.sh; Full and Linear run in
# reproduce/snell_vtab_swin.sh (SNELL Table 3 prints them for the same weights); README "Paper tables" says why
# Bias, VPT, MLP-4, Partial and RLRR stay out.
# Knobs (VTAB_ROOT, WEIGHTS, OUT, TASKS, EPOCHS, ARCH, IMG_SIZE, PRECISION, SEEDS, ...): reproduce/sweep.sh, or
# `householder_vtab_swin.sh --help`. `--dry-run` prints the exact commands. Example CPU smoke run:
#   TASKS=cifar EPOCHS=1 ARCH=swin_micro_patch4_window4 WEIGHTS=none IMG_SIZE=32 VTAB_ROOT=/tmp/vtab reproduce/householder_vtab_swin.sh
CONFIG_NAME=hta_vtab_swin
DEFAULT_ARCH=swin_base_patch4_window7_224
DEFAULT_WEIGHTS=swin_base_patch4_window7_224.ms_in22k
DESCRIPTION="HTA on VTAB-1k, Swin-B IN-22k (HTA App. Table 5)"
source "$(dirname "${BASH_SOURCE[0]}")/sweep.sh" "$@"
