"""ConvNeXt (Liu et al., CVPR 2022) with the hook interface of our ViT (models/backbone.py, docs/backbones.md §1).

Function and tensor names as timm's ``ConvNeXt`` (so its weights load; ``models/pretrained.py``), except that the
final LayerNorm, which timm keeps in its head (``head.norm``), is ours ``norm``, and ``head`` is the classifier
alone. A block is a 7×7 depth-wise convolution, LayerNorm, the MLP ``fc1`` (C -> 4C), GELU, ``fc2`` (4C -> C) on
channels-last tokens, a learned per-channel scale ``gamma`` (layer scale) and the residual add. The only adaptable
linears are ``fc1`` and ``fc2``; there is no attention and no token sequence.

Hook points of a block (B, H, W, C)::

    block.mlp_in         LN output feeding fc1
    block.mlp_out        branch output (after gamma and drop-path), before the residual add   (Houlsby/NOAH adapter)

and of the model: ``model.pixel_in`` (optional) maps the (B, 3, S, S) image to a larger one before the stem (VPT's
prompt-pad, docs/backbones.md §4); the convolutions take any size from there on.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import DropPath, trunc_normal_

from .backbone import Backbone
from .vit import Mlp

__all__ = ["CONVNEXT_ARCHS", "ConvNeXtConfig", "ConvNeXt", "build_convnext"]


@dataclass(frozen=True)
class ConvNeXtConfig:
    dims: tuple[int, ...]
    depths: tuple[int, ...]
    ls_init: float = 1e-6


CONVNEXT_ARCHS: dict[str, ConvNeXtConfig] = {
    "convnext_base": ConvNeXtConfig((128, 256, 512, 1024), (3, 3, 27, 3)),
    # Not a published model: four narrow stages for unit tests (32 px -> 8x8, 4x4, 2x2, 1x1 maps).
    "convnext_micro": ConvNeXtConfig((8, 16, 32, 64), (2, 1, 2, 1)),
}


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    LINEARS = {"fc1": ("mlp", "fc1"), "fc2": ("mlp", "fc2")}

    def __init__(self, dim: int, drop_path: float, ls_init: float, stage: int):
        super().__init__()
        self.dim, self.stage = dim, stage
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_in = nn.Identity()
        self.mlp = Mlp(dim, 4 * dim)
        self.gamma = nn.Parameter(torch.full((dim,), ls_init))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mlp_out = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        h = self.conv_dw(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        h = self.mlp_out(self.drop_path(self.mlp(self.mlp_in(self.norm(h))) * self.gamma))
        return x + h.permute(0, 3, 1, 2)


class ConvNeXtStage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: list[ConvNeXtBlock]):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        for blk in self.blocks:
            x = blk(x)
        return x


class ConvNeXt(Backbone):
    capabilities = frozenset({"pixel_prompts"})

    def __init__(self, cfg: ConvNeXtConfig, img_size: int = 224, num_classes: int = 1000, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, in_chans: int = 3):
        super().__init__()
        if img_size % (4 * 2 ** (len(cfg.dims) - 1)):
            raise ValueError(f"ConvNeXt: img_size {img_size} must be a multiple of {4 * 2 ** (len(cfg.dims) - 1)}")
        if drop_rate:
            raise ValueError("ConvNeXt has no dropout inside its blocks: use drop_path_rate")
        self.num_classes, self.img_size, self.cfg = num_classes, img_size, cfg
        self.prelude: nn.Module | None = None
        self.pixel_in: nn.Module | None = None  # optional: image -> padded image (VPT's prompt-pad)
        self.stem = nn.Sequential(nn.Conv2d(in_chans, cfg.dims[0], kernel_size=4, stride=4),
                                  LayerNorm2d(cfg.dims[0], eps=1e-6))
        depth = sum(cfg.depths)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        stages, n = [], 0
        for s, (dim, d) in enumerate(zip(cfg.dims, cfg.depths)):
            down = nn.Identity() if s == 0 else nn.Sequential(LayerNorm2d(cfg.dims[s - 1], eps=1e-6),
                                                              nn.Conv2d(cfg.dims[s - 1], dim, kernel_size=2, stride=2))
            stages.append(ConvNeXtStage(down, [ConvNeXtBlock(dim, dpr[n + j], cfg.ls_init, s) for j in range(d)]))
            n += d
        self.stages = nn.ModuleList(stages)
        self.num_features = cfg.dims[-1]
        self.norm = nn.LayerNorm(self.num_features, eps=1e-6)
        self.norm_hook = nn.Identity()
        self.head = nn.Linear(self.num_features, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @property
    def blocks(self) -> list[ConvNeXtBlock]:
        return [blk for stage in self.stages for blk in stage.blocks]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H/32, W/32), the last stage's map (the final LayerNorm acts after pooling)."""
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"input is {tuple(x.shape[-2:])} px but the model was built for {self.img_size} px")
        if self.prelude is not None:
            self.prelude()
        if self.pixel_in is not None:
            x = self.pixel_in(x)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_hook(self.norm(x.mean(dim=(2, 3))))

    def timm_equivalent(self) -> nn.Module:
        """timm's ``ConvNeXt`` of the same dimensions, headless (whose tensors ours load)."""
        from timm.models.convnext import ConvNeXt as TimmConvNeXt

        return TimmConvNeXt(depths=self.cfg.depths, dims=self.cfg.dims, ls_init_value=self.cfg.ls_init, num_classes=0)


def build_convnext(arch: str, num_classes: int = 1000, img_size: int = 224, **kwargs) -> ConvNeXt:
    """A randomly initialised ConvNeXt of a named architecture (``CONVNEXT_ARCHS``); kwargs: drop_path_rate."""
    return ConvNeXt(CONVNEXT_ARCHS[arch], img_size=img_size, num_classes=num_classes, **kwargs)
