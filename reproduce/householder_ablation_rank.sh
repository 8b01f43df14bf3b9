#!/usr/bin/env bash
# HTA rank ablation on VTAB-1k, ViT-B/16 IN-21k (HTA Fig. 2 / App. Table 7): HTA at its default placement (q, k, v, o)
# with rank 0, 1, 2 and 4 of the additive low-rank term, one sweep config per row
# (reproduce/configs/hta_ablation_rank_r*.yaml; docs/methods/hta.md §9), run in turn through reproduce/table.sh; every
# row ends in its own verification table against its paper row (params printed with the mean head).
#   HTA (rank 0)   110,592 without the head   printed 0.15 with it
#   HTA (rank 1)   184,320                    printed 0.22 (the row of Table 1: the recipe of hta_vtab.yaml)
#   HTA (rank 2)   258,048                    printed 0.30
#   HTA (rank 4)   405,504                    printed 0.44
# Finished householder_vtab.sh runs are already the rank-1 row (the same recipe, in another folder); to compare them
# with it instead of training again: python reproduce/verify.py runs/reproduce/hta_vtab --config
# reproduce/configs/hta_ablation_rank_r1.yaml
# Knobs (VTAB_ROOT, WEIGHTS, OUT, TASKS, EPOCHS, ARCH, IMG_SIZE, PRECISION, SEEDS, JOBS, GPUS, LAUNCHER, ...) apply to
# every row: reproduce/sweep.sh, or `householder_ablation_rank.sh --help`. `--dry-run` prints the exact commands.
# Example CPU smoke run:
#   TASKS=cifar EPOCHS=1 ARCH=vit_micro_patch8 WEIGHTS=none IMG_SIZE=32 VTAB_ROOT=/tmp/vtab \
#     reproduce/householder_ablation_rank.sh
ROWS="hta_ablation_rank_r0 hta_ablation_rank_r1 hta_ablation_rank_r2 hta_ablation_rank_r4"
DEFAULT_ARCH=vit_base_patch16_224
DEFAULT_WEIGHTS=vit_base_patch16_224.orig_in21k
DESCRIPTION="HTA rank ablation on VTAB-1k, ViT-B/16 IN-21k (HTA Fig. 2 / App. Table 7)"
source "$(dirname "${BASH_SOURCE[0]}")/table.sh" "$@"
