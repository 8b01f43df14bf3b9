"""What every backbone offers the methods: named linears, hook points, a head (docs/backbones.md §1).

A backbone (the ViT of ``models/vit.py``, ``models/swin.py``, ``models/convnext.py``) is a ``Backbone``:

* ``blocks`` — its residual blocks in forward order (a flat sequence, also when they live in stages). Every block has
  ``dim`` (its width), ``stage`` (its stage index; 0 throughout a ViT) and ``LINEARS``, the names of the linears a
  method may adapt, mapped to (owner attribute, linear attribute): ``q``, ``k``, ``v``, ``qkv``, ``proj``, ``fc1``,
  ``fc2`` where the block has them. ``qkv`` is the fused query/key/value projection: asking for it fuses the
  block's ``q``/``k``/``v`` into one ``Linear(D, 3D)`` (``Attention.fuse_qkv``), with the same function.
* ``linear_sites()`` — every adaptable linear of the model as ``(block index, name, owner, attribute)``, including
  linears outside the blocks (Swin's patch-merging ``reduction``). Methods find layers by these names only, never by
  the backbone's type (``models.methods.base.iter_linears``).
* ``capabilities`` — the hook points beyond the shared ones that a method may need (``METHOD_NEEDS`` in
  ``methods/base.py`` names them; ``create_model`` refuses a method whose needs a backbone lacks, with one message).
* ``head`` (``nn.Linear(num_features, num_classes)``), ``reset_head``, ``prelude`` and ``norm_hook``; the forward is
  ``head(pool(forward_features(x)))`` where ``pool`` is the backbone's (cls token for the ViT, mean over positions for
  Swin and ConvNeXt).
"""
from __future__ import annotations

from typing import ClassVar, Iterator

import torch
from torch import nn
from timm.layers import trunc_normal_

__all__ = ["Backbone", "CAPABILITIES"]

# Hook points a method may need beyond the shared ones (blocks' attn_in/attn_out/mlp_in/mlp_out, prelude, norm_hook):
CAPABILITIES = {
    "cls_token": "a class token (model.cls_token) that the head reads",
    "tokens_in": "a token sequence each block's input may extend (block.tokens_in): prompt tokens",
    "embed_hook": "a hook on the patch tokens before the blocks (model.embed_hook)",
    "uniform_width": "one width shared by every block and linear",
    "attention": "an attention in every block (block.attn with q/k/v)",
    "mlp_parallel": "a branch parallel to each block's MLP (block.mlp_parallel)",
    "mlp_stream": "a hook on the residual stream before each block's MLP (block.mlp_stream)",
    "fc2_out": "block.mlp_out seeing fc2's output unscaled (so a linear map there folds into fc2)",
    "window_prompts": "prompt tokens beside a windowed token map (model.prompt_in, block.prompts_in: VPT on Swin)",
    "pixel_prompts": "a hook on the input image before the stem (model.pixel_in: VPT's prompt-pad on ConvNeXt)",
}


class Backbone(nn.Module):
    """Base of our backbones; subclasses build ``blocks`` (or a ``blocks`` property), ``norm``, ``head`` and set
    ``num_features``, ``arch``-independent facts only."""

    capabilities: ClassVar[frozenset[str]] = frozenset()

    def extra_linear_sites(self) -> Iterator[tuple[int, str, nn.Module, str]]:
        """Adaptable linears outside the blocks, as ``(index, name, owner, attribute)``; none by default."""
        return iter(())

    def linear_sites(self) -> list[tuple[int, str, nn.Module, str]]:
        """Every adaptable linear as ``(block index, name, owner module, attribute name)``, in forward order of the
        blocks, then the extra sites (docstring of this module)."""
        sites = [(i, name, getattr(blk, owner), attr)
                 for i, blk in enumerate(self.blocks) for name, (owner, attr) in blk.LINEARS.items()]
        return sites + list(self.extra_linear_sites())

    def linear_names(self) -> tuple[str, ...]:
        """The names ``linear_sites`` offers, each once, in first-seen order."""
        return tuple(dict.fromkeys(name for _, name, _, _ in self.linear_sites()))

    def reset_head(self, num_classes: int, init: str = "trunc_normal") -> None:
        """Replace the classifier by a fresh ``Linear(num_features, num_classes)``; ``init`` is 'zeros' or
        'trunc_normal' (std .02)."""
        old = self.head
        head = nn.Linear(self.num_features, num_classes, device=old.weight.device, dtype=old.weight.dtype)
        if init == "zeros":
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        elif init == "trunc_normal":
            trunc_normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)
        else:
            raise ValueError(f"unknown head init {init!r}: use 'zeros' or 'trunc_normal'")
        self.head = head
        self.num_classes = num_classes

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.forward_features(x)))
