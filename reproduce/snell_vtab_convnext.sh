#!/usr/bin/env bash
# SNELL Table 3, VTAB-1k on ConvNeXt-B pre-trained on ImageNet-22k: the rows we can run, one sweep config each
# (reproduce/configs/snell_convnext_*.yaml), in the table's order through reproduce/table.sh; every row ends in its own
# verification table against its printed row (Table 3 prints group means and mean_groups only).
#   Table 3 row    config                   our method
#   Full           snell_convnext_full      full (every parameter)
#   VPT-Deep       snell_convnext_vpt_deep  vpt_pad, VPT's prompt-pad: 10 learnable pixels framing the image, the only
#                                           VPT of VPT's ConvNeXt code (docs/backbones.md §4)
#   Adapter-8      snell_convnext_adapter8  adapter, dim 8 (NOAH's FFN adapter, docs/methods/baselines.md §5)
#   Linear         snell_convnext_linear    linear (the head only)
#   LoRA-8         snell_convnext_lora8     lora, rank 8, on fc1 and fc2 (docs/backbones.md §3)
#   SNELL-8        snell_convnext_snell8    snell, rank 8 on fc1, fc2 (no attention), SNELL-32's per-task sparsity
# Not run: MLP-3 and Partial-1 (no method tunes the last blocks alone), SPT-Adapter and SPT-LoRA (SPT is not
# implemented).
# Every row uses SNELL's VTAB recipe (snell_vtab.yaml; the configs say why), selection `borrowed`.
# Weights: convnext_base.fb_in22k, timm's copy of the convnext_base_22k_224.pth
#   SNELL loads (the file itself also loads: WEIGHTS=/path/to/it; docs/backbones.md §5). Use another OUT per backbone.
# Knobs (VTAB_ROOT, WEIGHTS, OUT, TASKS, EPOCHS, ARCH, IMG_SIZE, PRECISION, SEEDS, JOBS, GPUS, LAUNCHER, ...) apply to
# every row: reproduce/sweep.sh, or `snell_vtab_convnext.sh --help`. `--dry-run` prints the exact commands.
# Example CPU smoke run:
#   TASKS=cifar EPOCHS=1 ARCH=convnext_micro WEIGHTS=none IMG_SIZE=32 VTAB_ROOT=/tmp/vtab reproduce/snell_vtab_convnext.sh
ROWS="snell_convnext_full snell_convnext_vpt_deep snell_convnext_adapter8 snell_convnext_linear snell_convnext_lora8 snell_convnext_snell8"
DEFAULT_ARCH=convnext_base
DEFAULT_WEIGHTS=convnext_base.fb_in22k
DESCRIPTION="SNELL Table 3: VTAB-1k, ConvNeXt-B IN-22k (convnext_b_in21k)"
source "$(dirname "${BASH_SOURCE[0]}")/table.sh" "$@"
