#!/usr/bin/env bash
# SNELL Table A11 on VTAB-1k, ViT-B/16 IN-21k: LoRA-r vs KLoRA-r on all six block linears at r = 8, 16, 32 (group
# means and mean of the group means), one sweep config per row, run in turn through reproduce/table.sh; every row
# ends in its own verification table against its paper row (docs/methods/snell.md §12).
#   LoRA-r (all linears)   snell_lora_vs_klora_lora{8,16,32}   `lora` on q, k, v, proj, fc1, fc2, own A and B each
#   KLoRA-r (all linears)  snell_ablation_rank_klora{8,16,32}  `snell` with s = 0 (also Table 5(b)'s KLoRA-r rows)
# Trainable without the head, either method: 165,888·r (1,327,104 / 2,654,208 / 5,308,416; KLoRA also trains the
# cls_token, + 768). The KLoRA rows share their folders with reproduce/snell_ablation_rank.sh: runs of either script
# are not trained again by the other.
# Knobs (VTAB_ROOT, WEIGHTS, OUT, TASKS, EPOCHS, ARCH, IMG_SIZE, SEEDS, JOBS, GPUS, ...) apply to every row:
# reproduce/sweep.sh, or `snell_lora_vs_klora.sh --help`. `--dry-run` prints the exact commands.
# Example CPU smoke run:
#   TASKS=cifar EPOCHS=1 ARCH=vit_micro_patch8 WEIGHTS=none IMG_SIZE=32 VTAB_ROOT=/tmp/vtab \
#     reproduce/snell_lora_vs_klora.sh
ROWS="snell_lora_vs_klora_lora8 snell_ablation_rank_klora8 snell_lora_vs_klora_lora16 snell_ablation_rank_klora16
      snell_lora_vs_klora_lora32 snell_ablation_rank_klora32"
DEFAULT_ARCH=vit_base_patch16_224
DEFAULT_WEIGHTS=vit_base_patch16_224.orig_in21k
DESCRIPTION="SNELL LoRA-r vs KLoRA-r on all linears, VTAB-1k, ViT-B/16 IN-21k (SNELL Table A11)"
source "$(dirname "${BASH_SOURCE[0]}")/table.sh" "$@"
