#!/usr/bin/env bash
# SNELL Table 2, VTAB-1k on ViT-B/16 pre-trained with MoCo v3: the rows we can run, one sweep config each
# (reproduce/configs/snell_mocov3_*.yaml), in the table's order through reproduce/table.sh; every row ends in its own
# verification table against its printed row (Table 2 prints group means and mean_groups only).
#   Table 2 row    config                     our method
#   Full           snell_mocov3_full          full (every parameter)
#   Adapter-8      snell_mocov3_adapter8      adapter, dim 8 (NOAH's FFN adapter, docs/methods/baselines.md §5)
#   Adapter-32     snell_mocov3_adapter32     adapter, dim 32
#   VPT-Shallow    snell_mocov3_vpt_shallow   vpt_shallow, 10 prompts (docs/methods/baselines.md §7)
#   VPT-Deep       snell_mocov3_vpt_deep      vpt_deep, 10 prompts per block
#   Linear         snell_mocov3_linear        linear (the head only)
#   Bias           snell_mocov3_bias          bitfit (biases and the head)
#   LoRA-8         snell_mocov3_lora8         lora, rank 8 (NOAH's q/k/v LoRA, docs/methods/baselines.md §4)
#   LoRA-16        snell_mocov3_lora16        lora, rank 16
#   SNELL-8        snell_mocov3_snell8        snell, rank 8, SNELL-32's per-task sparsity
# Not run: Partial-1 (no method tunes the last block alone), SPT-Adapter and SPT-LoRA (SPT is
# not implemented). Every row uses SNELL's VTAB recipe (snell_vtab.yaml; the configs say why), selection `borrowed`.
# Weights: MoCo v3's linear-probe checkpoint, as SNELL uses it; timm has no copy, so download the file first:
#   wget -P weights https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/linear-vit-b-300ep.pth.tar
#   (default WEIGHTS=weights/linear-vit-b-300ep.pth.tar, relative to the repository; the pre-training checkpoint
#   vit-b-300ep.pth.tar loads too: its base encoder). docs/benchmarks.md §5 "MAE and MoCo v3". Use another OUT per
#   backbone.
# Knobs (VTAB_ROOT, WEIGHTS, OUT, TASKS, EPOCHS, ARCH, IMG_SIZE, PRECISION, SEEDS, JOBS, GPUS, LAUNCHER, ...) apply to
# every row: reproduce/sweep.sh, or `snell_vtab_mocov3.sh --help`. `--dry-run` prints the exact commands.
# Example CPU smoke run:
#   TASKS=cifar EPOCHS=1 ARCH=vit_micro_patch8 WEIGHTS=none IMG_SIZE=32 VTAB_ROOT=/tmp/vtab \
#     reproduce/snell_vtab_mocov3.sh
ROWS="snell_mocov3_full snell_mocov3_adapter8 snell_mocov3_adapter32 snell_mocov3_vpt_shallow"
ROWS+=" snell_mocov3_vpt_deep snell_mocov3_linear snell_mocov3_bias snell_mocov3_lora8 snell_mocov3_lora16"
ROWS+=" snell_mocov3_snell8"
DEFAULT_ARCH=vit_base_patch16_224
DEFAULT_WEIGHTS=weights/linear-vit-b-300ep.pth.tar
DESCRIPTION="SNELL Table 2: VTAB-1k, ViT-B/16 MoCo v3 (vit_b16_mocov3)"
source "$(dirname "${BASH_SOURCE[0]}")/table.sh" "$@"
