"""Visual Prompt Tuning (Jia et al., 2022), shallow and deep (docs/methods/baselines.md §7).

p learnable prompt tokens of width D go **after** the cls token and **before** the patch tokens, after the position
embedding (prompts get none). Both variants use the ``block.tokens_in`` hook:

* ``vpt_shallow``: block 0 inserts the prompts, (B, 1 + N, D) -> (B, 1 + p + N, D); later blocks carry the prompt
  outputs along. Count D·p (7,680 at p = 10 for ViT-B/16).
* ``vpt_deep``: block 0 inserts; at the input of every block i = 1…L−1 the previous block's p prompt outputs are
  **replaced** by a fresh set, (B, 1 + p + N, D) -> (B, 1 + p + N, D). Count L·D·p (92,160 at p = 10).

Initialisation as ``KMnP/vpt`` (``src/models/vit_prompt/vit.py``): uniform(−v, v) with
v = √(6 / (C·patch² + D)), C = input channels (3), i.e. 0.0625 for ViT-B/16; computed from the model. Prompt dropout
(``MODEL.PROMPT.DROPOUT``) acts on the prompts as they enter. The head reads token 0, which stays the cls token;
prompt outputs are discarded. Not mergeable: ``models.merge`` raises ``ValueError``.

On Swin (no cls token, windowed tokens: the ``window_prompts`` capability of models/swin.py) the prompts follow VPT's
Swin variant (docs/backbones.md §4): ``model.prompt_in`` makes the first set (width of stage 0); ``vpt_deep`` gives
every later block its own set (``block.prompts_in``, the block's width), so the prompts a patch merging carries into a
stage are replaced at once. Counts: shallow C₀·p, deep p·Σ block widths (128·p and 12,032·p for Swin-B). v uses the
first stage's width, as VPT's Swin code does for every stage.

``vpt_pad`` is VPT's prompt for ConvNets (``src/models/resnet.py``, used by its ConvNeXt): no tokens but a frame of
p learnable pixels around the image, (B, 3, S, S) -> (B, 3, S + 2p, S + 2p), at ``model.pixel_in`` (the
``pixel_prompts`` capability of models/convnext.py). Count 12·p·(S + p).
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch
from torch import nn

from .base import Method, check_int, check_rate, dropout_layer, register, require

__all__ = ["VPTShallow", "VPTDeep", "VPTPad", "PromptInsert", "PromptReplace", "PromptSet", "PadPrompts",
           "prompt_init_bound"]
# VPT normalises its pixel prompts as it normalises images (torchvision's ImageNet mean / std)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def prompt_init_bound(model: nn.Module) -> float:
    """VPT's uniform bound v = √(6 / (C·patch² + D)) for ``model`` (0.0625 for ViT-B/16; D = the patch embedding's
    width, 128 for Swin-B: 0.1846)."""
    proj = model.patch_embed.proj  # Conv2d(C, D, patch, patch)
    fan = proj.in_channels * math.prod(proj.kernel_size)
    return math.sqrt(6.0 / (fan + proj.out_channels))


class _Prompts(nn.Module):
    """Owns one set of p prompts (1, p, D) and its dropout."""

    def __init__(self, dim: int, tokens: int, bound: float, dropout: float = 0.0, device=None):
        super().__init__()
        self.tokens = tokens
        self.prompt = nn.Parameter(torch.empty(1, tokens, dim, device=device))
        self.drop = dropout_layer(dropout)
        self.bound = bound
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.uniform_(self.prompt, -self.bound, self.bound)

    def _expanded(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.prompt.to(x.dtype).expand(x.shape[0], -1, -1))  # (B, p, D)

    def extra_repr(self) -> str:
        return f"tokens={self.tokens}, dim={self.prompt.shape[-1]}"


class PromptInsert(_Prompts):
    """(B, 1 + N, D) -> (B, 1 + p + N, D): [cls, prompts, patches]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :1], self._expanded(x), x[:, 1:]], dim=1)


class PromptReplace(_Prompts):
    """(B, 1 + p + N, D) -> (B, 1 + p + N, D): the previous block's prompt outputs are dropped for fresh prompts."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :1], self._expanded(x), x[:, 1 + self.tokens:]], dim=1)


class PromptSet(_Prompts):
    """A (B, p, D) set of prompts for a batch like ``x`` (whatever came before is dropped): Swin's ``prompt_in`` and
    ``block.prompts_in``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._expanded(x)


@register
@dataclasses.dataclass
class VPTShallow(Method):
    """VPT-Shallow. Keyword arguments:

    * ``tokens`` — prompt length p ≥ 1 (10; VPT picks it per task from {1, 5, 10, 50, 100, 200}: take the value
      from the task config).
    * ``dropout`` — prompt dropout (0).

    Head: trunc-normal (std .02).
    """

    name: ClassVar[str] = "vpt_shallow"
    mergeable: ClassVar[bool] = False
    deep: ClassVar[bool] = False

    tokens: int = 10
    dropout: float = 0.0

    def __post_init__(self):
        check_int(self.name, "tokens", self.tokens)
        self.dropout = check_rate(self.name, "dropout", self.dropout)

    def install(self, model: nn.Module) -> None:
        if "window_prompts" in model.capabilities:
            return self._install_windowed(model)
        require(model, self.name, "cls_token", "tokens_in")
        bound = prompt_init_bound(model)
        blocks = model.blocks if self.deep else model.blocks[:1]
        for i, blk in enumerate(blocks):
            if not isinstance(blk.tokens_in, nn.Identity):
                raise ValueError(f"{self.name}: block.tokens_in is already in use; install one method only")
            cls = PromptInsert if i == 0 else PromptReplace
            blk.tokens_in = cls(model.embed_dim, self.tokens, bound, self.dropout, device=blk.norm1.weight.device)

    def _install_windowed(self, model: nn.Module) -> None:
        """Swin: the first prompts at ``model.prompt_in``, and for ``vpt_deep`` fresh ones at every later block."""
        if model.prompt_in is not None or any(blk.prompts_in is not None for blk in model.blocks):
            raise ValueError(f"{self.name}: the prompt hooks are already in use; install one method only")
        bound, dev = prompt_init_bound(model), model.head.weight.device
        blocks = model.blocks
        model.prompt_in = PromptSet(blocks[0].dim, self.tokens, bound, self.dropout, device=dev)
        for blk in blocks[1:] if self.deep else ():
            blk.prompts_in = PromptSet(blk.dim, self.tokens, bound, self.dropout, device=dev)


@register
@dataclasses.dataclass
class VPTDeep(VPTShallow):
    """VPT-Deep: fresh prompts at the input of every block (``tokens``, ``dropout`` as ``vpt_shallow``)."""

    name: ClassVar[str] = "vpt_deep"
    deep: ClassVar[bool] = True


class PadPrompts(nn.Module):
    """VPT's prompt-pad: (B, 3, S, S) -> (B, 3, S + 2p, S + 2p), the image framed by learnable pixels: p columns on
    each side from ``lr`` (3, S, 2p), then p rows above and below from ``tb`` (3, 2p, S + 2p). Both uniform(0, 1),
    normalised with ImageNet's mean and std as VPT's ``prompt_norm`` does."""

    def __init__(self, size: int, width: int, device=None):
        super().__init__()
        self.width = width
        self.tb = nn.Parameter(torch.empty(1, 3, 2 * width, size + 2 * width, device=device).uniform_(0.0, 1.0))
        self.lr = nn.Parameter(torch.empty(1, 3, size, 2 * width, device=device).uniform_(0.0, 1.0))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, p = x.shape[0], self.width
        lr = ((self.lr - self.mean) / self.std).to(x.dtype).expand(B, -1, -1, -1)
        tb = ((self.tb - self.mean) / self.std).to(x.dtype).expand(B, -1, -1, -1)
        x = torch.cat([lr[..., :p], x, lr[..., p:]], dim=-1)
        return torch.cat([tb[:, :, :p], x, tb[:, :, p:]], dim=-2)

    def extra_repr(self) -> str:
        return f"width={self.width}"


@register
@dataclasses.dataclass
class VPTPad(Method):
    """VPT's prompt-pad for ConvNets (ConvNeXt here): ``tokens`` = p, the frame width in pixels (10). No dropout.
    Head: trunc-normal (std .02)."""

    name: ClassVar[str] = "vpt_pad"
    needs: ClassVar[tuple[str, ...]] = ("pixel_prompts",)
    mergeable: ClassVar[bool] = False

    tokens: int = 10

    def __post_init__(self):
        check_int(self.name, "tokens", self.tokens, note=" (the frame width in pixels)")

    def install(self, model: nn.Module) -> None:
        if model.pixel_in is not None:
            raise ValueError(f"{self.name}: model.pixel_in is already in use; install one method only")
        model.pixel_in = PadPrompts(model.img_size, self.tokens, device=model.head.weight.device)
