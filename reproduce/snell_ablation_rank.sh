#!/usr/bin/env bash
# SNELL rank ablation on VTAB-1k, ViT-B/16 IN-21k (SNELL Table 5(b): 19-task mean): KLoRA-r (s = 0) and SNELL-r at
# r = 8, 16, 32, one sweep config per row, run in turn through reproduce/table.sh; every row ends in its own
# verification table against its paper row (docs/methods/snell.md §12).
#   KLoRA-8 / 16 / 32 (s=0)  snell_ablation_rank_klora{8,16,32}  s = 0 on every task; also Table A11's KLoRA-r rows
#   SNELL-8 / 16             snell_ablation_rank_snell{8,16}     SNELL-32's per-task s; also Table 1 (and A7) rows
#   SNELL-32                 snell_vtab                          the released SNELL-32 recipe (reproduce/snell_vtab.sh)
# Trainable without the head: 165,888·r factors (+ 768 cls_token): 1,327,104 / 2,654,208 / 5,308,416.
# Rows whose runs exist are not trained again: the SNELL-32 row shares its folder ($OUT/snell_vtab) with
# reproduce/snell_vtab.sh, the KLoRA rows theirs with reproduce/snell_lora_vs_klora.sh.
# Knobs (VTAB_ROOT, WEIGHTS, OUT, TASKS, EPOCHS, ARCH, IMG_SIZE, SEEDS, JOBS, GPUS, ...) apply to every row:
# reproduce/sweep.sh, or `snell_ablation_rank.sh --help`. `--dry-run` prints the exact commands.
# Example CPU smoke run:
#   TASKS=cifar EPOCHS=1 ARCH=vit_micro_patch8 WEIGHTS=none IMG_SIZE=32 VTAB_ROOT=/tmp/vtab \
#     reproduce/snell_ablation_rank.sh
ROWS="snell_ablation_rank_klora8 snell_ablation_rank_klora16 snell_ablation_rank_klora32 snell_ablation_rank_snell8
      snell_ablation_rank_snell16 snell_vtab"
DEFAULT_ARCH=vit_base_patch16_224
DEFAULT_WEIGHTS=vit_base_patch16_224.orig_in21k
DESCRIPTION="SNELL rank ablation, KLoRA-r vs SNELL-r, on VTAB-1k, ViT-B/16 IN-21k (SNELL Table 5(b))"
source "$(dirname "${BASH_SOURCE[0]}")/table.sh" "$@"
