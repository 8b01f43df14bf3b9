#!/usr/bin/env bash
# SNELL-32 on VTAB-1k, ViT-B/16 IN-21k (SNELL Tables 1, 5(b), A7)
# Per-task hyper-parameters: reproduce/configs/snell_vtab.yaml (each value commented with its source).
# Knobs (VTAB_ROOT/FGVC_ROOT, WEIGHTS, OUT, TASKS, EPOCHS, ARCH, IMG_SIZE, PRECISION, SEEDS, ...): reproduce/sweep.sh,
# or `snell_vtab.sh --help`. `--dry-run` prints the exact commands. Example CPU smoke run:
#   TASKS="cifar dtd" EPOCHS=1 ARCH=vit_tiny_patch16_224 WEIGHTS=none IMG_SIZE=32 VTAB_ROOT=/tmp/vtab reproduce/snell_vtab.sh
CONFIG_NAME=snell_vtab
DEFAULT_ARCH=vit_base_patch16_224
DEFAULT_WEIGHTS=vit_base_patch16_224.orig_in21k
DESCRIPTION="SNELL-32 on VTAB-1k, ViT-B/16 IN-21k (SNELL Tables 1, 5(b), A7)"
source "$(dirname "${BASH_SOURCE[0]}")/sweep.sh" "$@"
