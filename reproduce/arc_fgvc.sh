#!/usr/bin/env bash
# ARC on FGVC, ViT-B/16 IN-21k (ARC row of HTA Table 2; WEIGHTS=vit_base_patch16_224.augreg_in21k for ARC*)
# Per-task hyper-parameters: reproduce/configs/arc_fgvc.yaml (each value commented with its source).
# Knobs (VTAB_ROOT/FGVC_ROOT, WEIGHTS, OUT, TASKS, EPOCHS, ARCH, IMG_SIZE, PRECISION, SEEDS, ...): reproduce/sweep.sh,
# or `arc_fgvc.sh --help`. `--dry-run` prints the exact commands. Example CPU smoke run:
#   TASKS="cub oxford_flowers" EPOCHS=1 ARCH=vit_tiny_patch16_224 WEIGHTS=none IMG_SIZE=32 FGVC_ROOT=/tmp/fgvc reproduce/arc_fgvc.sh
CONFIG_NAME=arc_fgvc
DEFAULT_ARCH=vit_base_patch16_224
DEFAULT_WEIGHTS=vit_base_patch16_224.orig_in21k
DESCRIPTION="ARC on FGVC, ViT-B/16 IN-21k (ARC row of HTA Table 2; WEIGHTS=vit_base_patch16_224.augreg_in21k for ARC*)"
source "$(dirname "${BASH_SOURCE[0]}")/sweep.sh" "$@"
