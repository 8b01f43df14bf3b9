#!/usr/bin/env bash
# SNELL sparsification ablation on VTAB-1k, ViT-B/16 IN-21k (SNELL Table 5(a)): SNELL's sparsification at s = 0.9
# applied to three update matrices, one sweep config per row (`snell` with its `delta` argument,
# docs/methods/snell.md §12), run in turn through reproduce/table.sh; every row ends in its own verification table.
#   Full-rank dW + sparsify (s=0.9)    snell_ablation_matrix_dense    delta: dense   84,934,656 (+ 768 cls_token)
#   LoRA-8 merged + sparsify (s=0.9)   snell_ablation_matrix_lora8    delta: lora    1,327,104 (+ 768)
#   KLoRA-8 merged + sparsify (s=0.9)  snell_ablation_matrix_klora8   delta: kernel  1,327,104 (+ 768): SNELL-8
# Knobs (VTAB_ROOT, WEIGHTS, OUT, TASKS, EPOCHS, ARCH, IMG_SIZE, SEEDS, JOBS, GPUS, ...) apply to every row:
# reproduce/sweep.sh, or `snell_ablation_matrix.sh --help`. `--dry-run` prints the exact commands.
# Example CPU smoke run:
#   TASKS=cifar EPOCHS=1 ARCH=vit_micro_patch8 WEIGHTS=none IMG_SIZE=32 VTAB_ROOT=/tmp/vtab \
#     reproduce/snell_ablation_matrix.sh
ROWS="snell_ablation_matrix_dense snell_ablation_matrix_lora8 snell_ablation_matrix_klora8"
DEFAULT_ARCH=vit_base_patch16_224
DEFAULT_WEIGHTS=vit_base_patch16_224.orig_in21k
DESCRIPTION="SNELL sparsification of different update matrices, VTAB-1k, ViT-B/16 IN-21k (SNELL Table 5(a))"
source "$(dirname "${BASH_SOURCE[0]}")/table.sh" "$@"
