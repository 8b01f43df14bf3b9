#!/usr/bin/env bash
# HTA on FGVC, ViT-B/16 IN-21k (HTA Table 2; WEIGHTS=vit_base_patch16_224.augreg_in21k for the HTA* row)
# Per-task hyper-parameters: reproduce/configs/hta_fgvc.yaml (each value commented with its source).
# Knobs (VTAB_ROOT/FGVC_ROOT, WEIGHTS, OUT, TASKS, EPOCHS, ARCH, IMG_SIZE, PRECISION, SEEDS, ...): reproduce/sweep.sh,
# or `householder_fgvc.sh --help`. `--dry-run` prints the exact commands. Example CPU smoke run:
#   TASKS="cub oxford_flowers" EPOCHS=1 ARCH=vit_tiny_patch16_224 WEIGHTS=none IMG_SIZE=32 FGVC_ROOT=/tmp/fgvc reproduce/householder_fgvc.sh
CONFIG_NAME=hta_fgvc
DEFAULT_ARCH=vit_base_patch16_224
DEFAULT_WEIGHTS=vit_base_patch16_224.orig_in21k
DESCRIPTION="HTA on FGVC, ViT-B/16 IN-21k (HTA Table 2; WEIGHTS=vit_base_patch16_224.augreg_in21k for the HTA* row)"
source "$(dirname "${BASH_SOURCE[0]}")/sweep.sh" "$@"
