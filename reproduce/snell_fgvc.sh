#!/usr/bin/env bash
# SNELL-32 on FGVC, ViT-B/16 IN-21k (SNELL Table 1)
# Per-task hyper-parameters: reproduce/configs/snell_fgvc.yaml (each value commented with its source).
# Knobs (VTAB_ROOT/FGVC_ROOT, WEIGHTS, OUT, TASKS, EPOCHS, ARCH, IMG_SIZE, PRECISION, SEEDS, ...): reproduce/sweep.sh,
# or `snell_fgvc.sh --help`. `--dry-run` prints the exact commands. Example CPU smoke run:
#   TASKS="cub oxford_flowers" EPOCHS=1 ARCH=vit_tiny_patch16_224 WEIGHTS=none IMG_SIZE=32 FGVC_ROOT=/tmp/fgvc reproduce/snell_fgvc.sh
CONFIG_NAME=snell_fgvc
DEFAULT_ARCH=vit_base_patch16_224
DEFAULT_WEIGHTS=vit_base_patch16_224.orig_in21k
DESCRIPTION="SNELL-32 on FGVC, ViT-B/16 IN-21k (SNELL Table 1)"
source "$(dirname "${BASH_SOURCE[0]}")/sweep.sh" "$@"
