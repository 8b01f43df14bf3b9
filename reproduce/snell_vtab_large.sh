#!/usr/bin/env bash
# SNELL Table 4 on VTAB-1k: LoRA-8 and SNELL-8 on ViT-L/16 and ViT-H/14 IN-21k (group means and mean of the group
# means), one sweep config per row with the row's own backbone, run in turn through reproduce/table.sh; every row
# ends in its own verification table against its paper row (docs/methods/snell.md §12).
#   LoRA-8, ViT-L/16    snell_large_lora8_vitl    3,538,944 trainable without the head
#   LoRA-8, ViT-H/14    snell_large_lora8_vith    5,898,240 (batch 8)
#   SNELL-8, ViT-L/16   snell_large_snell8_vitl   3,538,944 factors + 1024 cls_token; s per task from {0, 0.9}
#   SNELL-8, ViT-H/14   snell_large_snell8_vith   5,898,240 factors + 1280 cls_token; batch 8 (the paper's)
# SNELL's s: the paper searched {0, 0.9} per task; the configs commit a documented default and hold that grid as
# their `search:` block (python reproduce/search.py --config reproduce/configs/snell_large_snell8_vitl.yaml selects
# it on val200, on the row's backbone). ARCH / WEIGHTS set in the environment replace every row's backbone.
# Knobs (VTAB_ROOT, WEIGHTS, OUT, TASKS, EPOCHS, ARCH, IMG_SIZE, SEEDS, JOBS, GPUS, ...) apply to every row:
# reproduce/sweep.sh, or `snell_vtab_large.sh --help`. `--dry-run` prints the exact commands.
# Example CPU smoke run:
#   TASKS=cifar EPOCHS=1 ARCH=vit_micro_patch8 WEIGHTS=none IMG_SIZE=32 VTAB_ROOT=/tmp/vtab \
#     reproduce/snell_vtab_large.sh
VITL=vit_large_patch16_224:vit_large_patch16_224.orig_in21k
VITH=vit_huge_patch14_224:vit_huge_patch14_224.orig_in21k
ROWS="snell_large_lora8_vitl:$VITL snell_large_lora8_vith:$VITH snell_large_snell8_vitl:$VITL
      snell_large_snell8_vith:$VITH"
DEFAULT_ARCH=vit_large_patch16_224
DEFAULT_WEIGHTS=vit_large_patch16_224.orig_in21k
DESCRIPTION="SNELL-8 and LoRA-8 on VTAB-1k, ViT-L/16 and ViT-H/14 IN-21k (SNELL Table 4)"
source "$(dirname "${BASH_SOURCE[0]}")/table.sh" "$@"
