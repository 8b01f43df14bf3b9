#!/usr/bin/env bash
# ARC on VTAB-1k, ViT-B/16 IN-21k (ARC row of HTA Table 1; WEIGHTS=vit_base_patch16_224.augreg_in21k for ARC*)
# Per-task hyper-parameters: reproduce/configs/arc_vtab.yaml (each value commented with its source).
# Knobs (VTAB_ROOT/FGVC_ROOT, WEIGHTS, OUT, TASKS, EPOCHS, ARCH, IMG_SIZE, PRECISION, SEEDS, ...): reproduce/sweep.sh,
# or `arc_vtab.sh --help`. `--dry-run` prints the exact commands. Example CPU smoke run:
#   TASKS="cifar dtd" EPOCHS=1 ARCH=vit_tiny_patch16_224 WEIGHTS=none IMG_SIZE=32 VTAB_ROOT=/tmp/vtab reproduce/arc_vtab.sh
CONFIG_NAME=arc_vtab
DEFAULT_ARCH=vit_base_patch16_224
DEFAULT_WEIGHTS=vit_base_patch16_224.orig_in21k
DESCRIPTION="ARC on VTAB-1k, ViT-B/16 IN-21k (ARC row of HTA Table 1; WEIGHTS=vit_base_patch16_224.augreg_in21k for ARC*)"
source "$(dirname "${BASH_SOURCE[0]}")/sweep.sh" "$@"
