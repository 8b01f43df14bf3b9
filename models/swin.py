"""Swin Transformer (Liu et al., ICCV 2021) with the hook interface of our ViT (models/backbone.py,
docs/backbones.md §1).

Function and tensor names as timm's ``SwinTransformer`` (so its weights load; ``models/pretrained.py``), with the
ViT's two differences: ``q``/``k``/``v`` are separate linears (timm's fused ``qkv`` is split on load; a method that
wants the fused projection asks for ``qkv``), and every block has the ViT's hook points. Tokens stay in a
(B, H, W, C) map; each stage but the first starts with a patch merging (2x2 neighbours -> LayerNorm -> ``reduction``
Linear(4C, 2C), no bias). The head averages the final tokens (no cls token).

Optional prompt tokens (B, P, C) travel beside the map, as VPT's Swin variant has them (docs/backbones.md §4):
``model.prompt_in`` makes them from the patch map, a block's ``prompts_in`` replaces them (deep prompts); every
window's attention sees them first (zero relative bias, never masked) and each image's prompt outputs are the mean
over its windows; LayerNorms, residuals and MLPs treat them as tokens, a patch merging concatenates each prompt four
times, and the final average includes them. Without prompts nothing of this runs.

Hook points of a block (B, H, W, C)::

    block.attn_in        LN1 output, before the window partition              (ARC attention adapter)
    block.attn.qkv_branch  (B·windows, N, C) -> (dq, dk, dv)                   (SNELL, LoRA)
    block.attn_out       attention output after drop-path, before the residual add
    block.mlp_stream     residual stream before the MLP sub-block              (ARC's Swin MLP adapter)
    block.mlp_in         LN2 output feeding fc1
    block.mlp_out        MLP output after drop-path, before the residual add    (Houlsby/NOAH adapter)
    block.mlp_parallel   optional branch from the stream, added to the MLP output
    block.prompts_in     optional: the block's own prompt tokens, replacing the incoming ones (VPT-Deep)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import DropPath, trunc_normal_

from . import vit
from .backbone import Backbone
from .vit import Attention, Block, Mlp

__all__ = ["SWIN_ARCHS", "SwinConfig", "SwinTransformer", "build_swin"]


@dataclass(frozen=True)
class SwinConfig:
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    patch_size: int = 4
    mlp_ratio: float = 4.0


SWIN_ARCHS: dict[str, SwinConfig] = {
    "swin_base_patch4_window7_224": SwinConfig(128, (2, 2, 18, 2), (4, 8, 16, 32), 7),
    # Not a published model: two stages of 16 and 32 channels for unit tests (32 px -> 8x8 tokens, windows of 4, so
    # the first stage's second block uses shifted windows).
    "swin_micro_patch4_window4": SwinConfig(16, (2, 2), (2, 4), 4),
}


def _windows(x: torch.Tensor, w: int) -> torch.Tensor:
    """(B, H, W, C) -> (B·H/w·W/w, w·w, C), windows in row-major order per image."""
    B, H, W, C = x.shape
    x = x.view(B, H // w, w, W // w, w, C).transpose(2, 3)
    return x.reshape(-1, w * w, C)


def _unwindows(x: torch.Tensor, w: int, H: int, W: int) -> torch.Tensor:
    """Inverse of ``_windows``: (B·H/w·W/w, w·w, C) -> (B, H, W, C)."""
    C = x.shape[-1]
    x = x.view(-1, H // w, W // w, w, w, C).transpose(2, 3)
    return x.reshape(-1, H, W, C)


def _relative_position_index(w: int) -> torch.Tensor:
    """(w², w²): for query i and key j in a window, the row of the bias table for their offset (dy, dx)."""
    ys, xs = torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")
    pos = torch.stack([ys.flatten(), xs.flatten()])  # (2, w²)
    rel = pos[:, :, None] - pos[:, None, :] + (w - 1)  # (2, w², w²), offsets shifted to 0 .. 2w-2
    return rel[0] * (2 * w - 1) + rel[1]


def _shift_mask(H: int, W: int, w: int, s: int) -> torch.Tensor:
    """(windows, w², w²) additive mask for shifted windows: -100 between tokens that came from different regions of
    the rolled map (the value of the original Swin code), 0 elsewhere."""
    region = torch.zeros(1, H, W, 1)
    bands = (slice(0, -w), slice(-w, -s), slice(-s, None))
    for i, hs in enumerate(bands):
        for j, ws in enumerate(bands):
            region[:, hs, ws, :] = 3 * i + j
    r = _windows(region, w).squeeze(-1)  # (windows, w²)
    return (r[:, None, :] != r[:, :, None]).float() * -100.0


class WindowAttention(Attention):
    """Self-attention inside w×w windows with a learned relative position bias per head; q/k/v as our ViT's."""

    def __init__(self, dim: int, num_heads: int, window: int, attn_drop: float = 0.0):
        super().__init__(dim, num_heads, attn_drop)
        self.window = window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", _relative_position_index(window), persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, prompts: int = 0) -> torch.Tensor:
        B_, N, C = x.shape  # B_ = batch · windows, N = prompts + w²
        q, k, v = (t.reshape(B_, N, self.num_heads, self.head_dim).transpose(1, 2) for t in self.project(x))
        area = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(area, area, -1)
        bias = bias.permute(2, 0, 1).unsqueeze(0).to(q.dtype)  # (1, heads, w², w²)
        if prompts:  # prompt rows and columns: no position bias, never masked
            bias = F.pad(bias, (prompts, 0, prompts, 0))
            mask = None if mask is None else F.pad(mask, (prompts, 0, prompts, 0))
        if mask is not None:  # (windows, N, N): window i of every image gets mask i
            nw = mask.shape[0]
            bias = (bias + mask.to(q.dtype).unsqueeze(1)).repeat(B_ // nw, 1, 1, 1)  # (B_, heads, N, N)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj(o.transpose(1, 2).reshape(B_, N, C))


class SwinBlock(nn.Module):
    LINEARS = Block.LINEARS  # q, k, v, qkv, proj, fc1, fc2 (models/backbone.py)

    def __init__(self, dim: int, num_heads: int, resolution: int, window: int, shift: bool, mlp_ratio: float,
                 drop_path: float, drop: float, stage: int):
        super().__init__()
        if resolution <= window:  # the whole map is one window: nothing to shift (as the Swin paper's code)
            window, shift = resolution, False
        if resolution % window:
            raise ValueError(f"Swin: a {resolution}x{resolution} token map does not tile into {window}x{window} "
                             "windows; pick an image size whose stage maps are multiples of the window")
        self.dim, self.stage, self.window = dim, stage, window
        self.shift = window // 2 if shift else 0
        self.norm1 = nn.LayerNorm(dim)
        self.attn_in = nn.Identity()
        self.attn = WindowAttention(dim, num_heads, window)
        self.attn_out = nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mlp_stream = nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp_in = nn.Identity()
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mlp_out = nn.Identity()
        self.mlp_parallel: nn.Module | None = None
        self.prompts_in: nn.Module | None = None
        mask = _shift_mask(resolution, resolution, window, self.shift) if self.shift else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def _window_attention(self, x: torch.Tensor, p: torch.Tensor | None = None):
        """(B, H, W, C) map and optional (B, P, C) prompts -> attention outputs of both (prompts: None or the mean of
        each image's per-window outputs)."""
        B, H, W, C = x.shape
        s, w = self.shift, self.window
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        win = _windows(x, w)  # (B·windows, w², C), image-major
        P = 0 if p is None else p.shape[1]
        if P:
            nw = win.shape[0] // B
            win = torch.cat([p.unsqueeze(1).expand(B, nw, P, C).reshape(B * nw, P, C), win], dim=1)
        out = self.attn(win, self.attn_mask, prompts=P)
        if P:
            p, out = out[:, :P].reshape(B, nw, P, C).mean(1), out[:, P:]
        x = _unwindows(out, w, H, W)
        return (torch.roll(x, shifts=(s, s), dims=(1, 2)) if s else x), p

    def _residuals(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The stream after the attention output ``a`` and the MLP sub-block, for tokens of any layout."""
        x = self.mlp_stream(x + self.attn_out(self.drop_path1(a)))
        h = self.mlp_out(self.drop_path2(self.mlp(self.mlp_in(self.norm2(x)))))
        if self.mlp_parallel is not None:
            h = h + self.mlp_parallel(x)
        return x + h

    def forward(self, x: torch.Tensor, p: torch.Tensor | None = None):
        """(B, H, W, C) map, optional (B, P, C) prompts -> both after the block."""
        if self.prompts_in is not None:
            p = self.prompts_in(x)
        a, ap = self._window_attention(self.attn_in(self.norm1(x)), None if p is None else self.norm1(p))
        if p is None:
            return self._residuals(x, a), None
        B, H, W, C = x.shape  # prompts and map as one sequence, so drop-path draws once per image
        seq = self._residuals(torch.cat([p, x.flatten(1, 2)], 1), torch.cat([ap, a.flatten(1, 2)], 1))
        return seq[:, p.shape[1]:].reshape(B, H, W, C), seq[:, :p.shape[1]]


class PatchMerging(nn.Module):
    """(B, H, W, C) -> (B, H/2, W/2, 2C): the four tokens of each 2x2 cell concatenated (top-left, bottom-left,
    top-right, bottom-right, the original Swin order), LayerNorm(4C), then ``reduction`` Linear(4C, 2C) without
    bias."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))

    def merge_prompts(self, p: torch.Tensor) -> torch.Tensor:
        """(B, P, C) -> (B, P, 2C): each prompt in all four slots of a cell (VPT's Swin)."""
        return self.reduction(self.norm(torch.cat([p, p, p, p], dim=-1)))


class SwinStage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: list[SwinBlock]):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, p: torch.Tensor | None = None):
        x = self.downsample(x)
        if p is not None and isinstance(self.downsample, PatchMerging):
            p = self.downsample.merge_prompts(p)
        for blk in self.blocks:
            x, p = blk(x, p)
        return x, p


class PatchEmbed(vit.PatchEmbed):
    """(B, 3, H, W) -> (B, H/p, W/p, C): the ViT's patch convolution, kept as a map, then LayerNorm."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__(img_size, patch_size, in_chans, embed_dim)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.grid(x).permute(0, 2, 3, 1))


class SwinTransformer(Backbone):
    capabilities = frozenset({"attention", "mlp_parallel", "mlp_stream", "fc2_out", "window_prompts"})

    def __init__(self, cfg: SwinConfig, img_size: int = 224, num_classes: int = 1000, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, in_chans: int = 3):
        super().__init__()
        self.num_classes, self.img_size, self.cfg = num_classes, img_size, cfg
        self.patch_embed = PatchEmbed(img_size, cfg.patch_size, in_chans, cfg.embed_dim)
        self.prelude: nn.Module | None = None
        self.prompt_in: nn.Module | None = None  # optional: patch map -> (B, P, C) prompt tokens (VPT)
        depth = sum(cfg.depths)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear over all blocks
        stages, dim, res, n = [], cfg.embed_dim, img_size // cfg.patch_size, 0
        for s, (d, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
            down = nn.Identity()
            if s > 0:
                down, dim, res = PatchMerging(dim), 2 * dim, res // 2
            blocks = [SwinBlock(dim, heads, res, cfg.window_size, shift=j % 2 == 1, mlp_ratio=cfg.mlp_ratio,
                                drop_path=dpr[n + j], drop=drop_rate, stage=s) for j in range(d)]
            stages.append(SwinStage(down, blocks))
            n += d
        self.layers = nn.ModuleList(stages)
        self.num_features = dim
        self.norm = nn.LayerNorm(dim)
        self.norm_hook = nn.Identity()
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, WindowAttention):
                trunc_normal_(m.relative_position_bias_table, std=0.02)

    @property
    def blocks(self) -> list[SwinBlock]:
        return [blk for stage in self.layers for blk in stage.blocks]

    def extra_linear_sites(self):
        first = 0  # index of the stage's first block: a reduction counts as part of the stage it opens
        for stage in self.layers:
            if isinstance(stage.downsample, PatchMerging):
                yield first, "reduction", stage.downsample, "reduction"
            first += len(stage.blocks)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, P + H/32·W/32, C) tokens (prompts first, if any) after the final LayerNorm."""
        if self.prelude is not None:
            self.prelude()
        x = self.patch_embed(x)
        p = None if self.prompt_in is None else self.prompt_in(x)
        for stage in self.layers:
            x, p = stage(x, p)
        x = x.flatten(1, 2) if p is None else torch.cat([p, x.flatten(1, 2)], dim=1)
        return self.norm_hook(self.norm(x))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)

    def timm_equivalent(self) -> nn.Module:
        """timm's ``SwinTransformer`` of the same dimensions, headless (whose tensors ours load)."""
        from timm.models.swin_transformer import SwinTransformer as TimmSwin

        c = self.cfg
        return TimmSwin(img_size=self.img_size, patch_size=c.patch_size, embed_dim=c.embed_dim, depths=c.depths,
                        num_heads=c.num_heads, window_size=c.window_size, mlp_ratio=c.mlp_ratio, num_classes=0)


def build_swin(arch: str, num_classes: int = 1000, img_size: int = 224, **kwargs) -> SwinTransformer:
    """A randomly initialised Swin of a named architecture (``SWIN_ARCHS``); kwargs: drop_rate, drop_path_rate."""
    return SwinTransformer(SWIN_ARCHS[arch], img_size=img_size, num_classes=num_classes, **kwargs)
