#!/usr/bin/env bash
# HTA placement ablation on VTAB-1k, ViT-B/16 IN-21k (HTA Table 5 / App. Table 6): five rows, one sweep config each
# (reproduce/configs/hta_ablation_placement_*.yaml, what each row is in our methods: docs/methods/hta.md §9), run in
# the table's order through reproduce/table.sh; every row ends in its own verification table against its paper row
# (per task, group means, mean_19 and the parameter count, printed without the head).
#   LoRA (Wq+Wv)            lora_qv, r 8                   294,912    printed 0.29
#   HTA (Wq+Wv)             hta, targets q v, rank 1        92,160    printed 0.09
#   HTA (Wq+Wv+WFC1+WFC2)   hta, targets q v fc1 fc2       294,912    printed 0.28 (a known inconsistency)
#   Adapter (WFC1+WFC2)     adapter (NOAH, dim 8)          156,768    printed 0.16
#   HTA (WFC1+WFC2)         hta, placement ffn_adapter      46,080    printed 0.05
# Knobs (VTAB_ROOT, WEIGHTS, OUT, TASKS, EPOCHS, ARCH, IMG_SIZE, PRECISION, SEEDS, JOBS, GPUS, LAUNCHER, ...) apply to
# every row: reproduce/sweep.sh, or `householder_ablation_placement.sh --help`. `--dry-run` prints the exact commands.
# Example CPU smoke run:
#   TASKS=cifar EPOCHS=1 ARCH=vit_micro_patch8 WEIGHTS=none IMG_SIZE=32 VTAB_ROOT=/tmp/vtab \
#     reproduce/householder_ablation_placement.sh
ROWS="hta_ablation_placement_lora_qv hta_ablation_placement_hta_qv hta_ablation_placement_hta_qv_fc"
ROWS+=" hta_ablation_placement_adapter_ffn hta_ablation_placement_hta_ffn_adapter"
DEFAULT_ARCH=vit_base_patch16_224
DEFAULT_WEIGHTS=vit_base_patch16_224.orig_in21k
DESCRIPTION="HTA placement ablation on VTAB-1k, ViT-B/16 IN-21k (HTA Table 5 / App. Table 6)"
source "$(dirname "${BASH_SOURCE[0]}")/table.sh" "$@"
