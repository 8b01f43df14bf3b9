#!/usr/bin/env bash
# HTA on VTAB-1k, ViT-B/16 IN-21k (HTA Table 1; WEIGHTS=vit_base_patch16_224.augreg_in21k for the HTA* row)
# Per-task hyper-parameters: reproduce/configs/hta_vtab.yaml (each value commented with its source).
# Knobs (VTAB_ROOT/FGVC_ROOT, WEIGHTS, OUT, TASKS, EPOCHS, ARCH, IMG_SIZE, PRECISION, SEEDS, ...): reproduce/sweep.sh,
# or `householder_vtab.sh --help`. `--dry-run` prints the exact commands. Example CPU smoke run:
#   TASKS="cifar dtd" EPOCHS=1 ARCH=vit_tiny_patch16_224 WEIGHTS=none IMG_SIZE=32 VTAB_ROOT=/tmp/vtab reproduce/householder_vtab.sh
CONFIG_NAME=hta_vtab
DEFAULT_ARCH=vit_base_patch16_224
DEFAULT_WEIGHTS=vit_base_patch16_224.orig_in21k
DESCRIPTION="HTA on VTAB-1k, ViT-B/16 IN-21k (HTA Table 1; WEIGHTS=vit_base_patch16_224.augreg_in21k for the HTA* row)"
source "$(dirname "${BASH_SOURCE[0]}")/sweep.sh" "$@"
