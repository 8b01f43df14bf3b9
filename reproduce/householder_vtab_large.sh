#!/usr/bin/env bash
# HTA on VTAB-1k, ViT-L/16 IN-21k (HTA App. Table 4 / Table 3)
# Per-task hyper-parameters: reproduce/configs/hta_vtab_large.yaml (each value commented with its source).
# Knobs (VTAB_ROOT/FGVC_ROOT, WEIGHTS, OUT, TASKS, EPOCHS, ARCH, IMG_SIZE, PRECISION, SEEDS, ...): reproduce/sweep.sh,
# or `householder_vtab_large.sh --help`. `--dry-run` prints the exact commands. Example CPU smoke run:
#   TASKS="cifar dtd" EPOCHS=1 ARCH=vit_tiny_patch16_224 WEIGHTS=none IMG_SIZE=32 VTAB_ROOT=/tmp/vtab reproduce/householder_vtab_large.sh
CONFIG_NAME=hta_vtab_large
DEFAULT_ARCH=vit_large_patch16_224
DEFAULT_WEIGHTS=vit_large_patch16_224.orig_in21k
DESCRIPTION="HTA on VTAB-1k, ViT-L/16 IN-21k (HTA App. Table 4 / Table 3)"
source "$(dirname "${BASH_SOURCE[0]}")/sweep.sh" "$@"
