#!/usr/bin/env bash
# SNELL Table 3, VTAB-1k on Swin-B pre-trained on ImageNet-22k: the rows we can run, one sweep config each
# (reproduce/configs/snell_swin_*.yaml), in the table's order through reproduce/table.sh; every row ends in its own
# verification table against its printed row (Table 3 prints group means and mean_groups only).
#   Table 3 row    config                   our method
#   Full           snell_swin_full          full (every parameter)
#   VPT-Deep       snell_swin_vpt_deep      vpt_deep, 10 prompts per block, VPT's Swin variant (docs/backbones.md §4)
#   Adapter-8      snell_swin_adapter8      adapter, dim 8 (NOAH's FFN adapter, docs/methods/baselines.md §5)
#   Linear         snell_swin_linear        linear (the head only)
#   LoRA-8         snell_swin_lora8         lora, rank 8 (NOAH's q/k/v LoRA, docs/methods/baselines.md §4)
#   SNELL-8        snell_swin_snell8        snell, rank 8 on q, k, v, proj, fc1, fc2, SNELL-32's per-task sparsity
# Not run: MLP-3 and Partial-1 (no method tunes the last blocks alone), SPT-Adapter and SPT-LoRA (SPT is not
# implemented).
# Every row uses SNELL's VTAB recipe (snell_vtab.yaml; the configs say why), selection `borrowed`.
# Weights: swin_base_patch4_window7_224.ms_in22k, timm's copy of the swin_base_patch4_window7_224_22k.pth
#   SNELL loads (the file itself also loads: WEIGHTS=/path/to/it; docs/backbones.md §5). Use another OUT per backbone.
# Knobs (VTAB_ROOT, WEIGHTS, OUT, TASKS, EPOCHS, ARCH, IMG_SIZE, PRECISION, SEEDS, JOBS, GPUS, LAUNCHER, ...) apply to
# every row: reproduce/sweep.sh, or `snell_vtab_swin.sh --help`. `--dry-run` prints the exact commands.
# Example CPU smoke run:
#   TASKS=cifar EPOCHS=1 ARCH=swin_micro_patch4_window4 WEIGHTS=none IMG_SIZE=32 VTAB_ROOT=/tmp/vtab reproduce/snell_vtab_swin.sh
ROWS="snell_swin_full snell_swin_vpt_deep snell_swin_adapter8 snell_swin_linear snell_swin_lora8 snell_swin_snell8"
DEFAULT_ARCH=swin_base_patch4_window7_224
DEFAULT_WEIGHTS=swin_base_patch4_window7_224.ms_in22k
DESCRIPTION="SNELL Table 3: VTAB-1k, Swin-B IN-22k (swin_b_in21k)"
source "$(dirname "${BASH_SOURCE[0]}")/table.sh" "$@"
