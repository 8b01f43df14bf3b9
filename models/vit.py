"""The one Vision Transformer every method plugs into.

Architecture as timm's ``VisionTransformer`` (pre-LN blocks, cls token, learned position embedding added after the cls
token is prepended, final LayerNorm, linear head on the cls token, exact-GELU MLP, LayerNorm eps 1e-6, qkv bias, no
pre-logits), with two deliberate differences:

* ``q``, ``k``, ``v`` and ``proj`` are **separate** ``nn.Linear`` layers, so per-projection adapters (HTA, SNELL, LoRA
  on q/v) are ordinary module replacements (docs/methods/README.md "Conventions", docs/methods/arc.md §1,
  docs/methods/snell.md §1);
* explicit **hook points** that methods fill in. Every hook is ``nn.Identity`` (or ``None`` for optional additive
  branches) until a method installs something, so an unadapted model computes exactly the timm ViT.

Hook points (B = batch, N = tokens incl. cls, D = width)::

    model.prelude           optional: called with no input at the start of every forward, for per-step
                            work shared by many layers (methods/base.py: preludes)            (HTA, SNELL)
    model.embed_hook        (B, N-1, D) patch tokens after the patch projection, before cls/pos     (SSF)
    block.tokens_in         (B, N, D) block input tokens; may change N                               (VPT)
    block.attn_in           (B, N, D) LN1 output feeding q/k/v                                       (ARC, SSF)
    block.attn.qkv_branch   optional: x -> (dq, dk, dv) added to the q/k/v outputs (shared input)    (SNELL, LoRA)
    block.attn_out          (B, N, D) attention output after drop-path, before the residual add    (Houlsby adapter)
    block.mlp_stream        (B, N, D) residual stream before the MLP sub-block (its output is the stream) (ARC stream)
    block.mlp_in            (B, N, D) LN2 output feeding fc1                                         (ARC, SSF)
    block.mlp_out           (B, N, D) MLP output after drop-path, before the residual add          (NOAH adapter)
    block.mlp_parallel      optional: residual stream x -> addend to the MLP output                 (AdaptFormer)
    model.norm_hook         (B, N, D) after the final LayerNorm                                      (SSF)

The head always reads token 0 (the cls token); methods that add tokens keep the cls token first. The interface
shared with the other backbones (named linears, ``blocks``, capabilities, head) is ``models/backbone.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import DropPath, trunc_normal_

from .backbone import Backbone

__all__ = ["VIT_ARCHS", "ArchConfig", "VisionTransformer", "Attention", "Mlp", "Block", "PatchEmbed", "build_vit"]


@dataclass(frozen=True)
class ArchConfig:
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    mlp_ratio: float = 4.0


VIT_ARCHS: dict[str, ArchConfig] = {
    "vit_tiny_patch16_224": ArchConfig(192, 12, 3, 16),
    "vit_small_patch16_224": ArchConfig(384, 12, 6, 16),
    "vit_base_patch16_224": ArchConfig(768, 12, 12, 16),
    "vit_large_patch16_224": ArchConfig(1024, 24, 16, 16),
    "vit_huge_patch14_224": ArchConfig(1280, 32, 16, 14),
    # Not a published model: a 2-block, 64-wide ViT for unit tests and CPU demos (32 px -> 16 patches of 8 px).
    "vit_micro_patch8": ArchConfig(64, 2, 2, 8),
}


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens. (B, 3, H, W) -> (B, H/p * W/p, D)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of the patch size {patch_size}")
        self.img_size, self.patch_size = img_size, patch_size
        self.grid_size = img_size // patch_size
        self.num_patches = self.grid_size ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def grid(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D, H/p, W/p), the patch convolution's map, for an image of the built size."""
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"input is {tuple(x.shape[-2:])} px but the model was built for {self.img_size} px")
        return self.proj(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.grid(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v/proj linears and fused SDPA.

    ``fuse_qkv()`` replaces q, k, v by one ``qkv`` linear (D -> 3D, same function) for methods that adapt the fused
    projection (HTA on Swin, docs/backbones.md §3); ``project`` serves both forms.
    """

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        # Optional module x -> (dq, dk, dv) (entries may be None) for methods whose q/k/v branches share one input
        # transformation (SNELL's single dropout draw, LoRA's shared down-projection).
        self.qkv_branch: nn.Module | None = None
        self.qkv: nn.Module | None = None  # the fused form, once fuse_qkv() ran (q, k, v are then None)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v, each (..., D), branch included."""
        if self.qkv is not None:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        if self.qkv_branch is not None:
            dq, dk, dv = self.qkv_branch(x)
            q = q if dq is None else q + dq
            k = k if dk is None else k + dk
            v = v if dv is None else v + dv
        return q, k, v

    @torch.no_grad()
    def fuse_qkv(self) -> None:
        """Replace the plain q, k, v linears by one ``qkv = Linear(D, 3D)`` whose output is their concatenation."""
        if self.qkv is not None:
            return
        parts = [self.q, self.k, self.v]
        if any(type(p) is not nn.Linear for p in parts):
            raise ValueError("cannot fuse q, k, v: one of them is already adapted "
                             f"({', '.join(type(p).__name__ for p in parts)}); install one method only")
        q = parts[0]
        fused = nn.Linear(q.in_features, 3 * q.out_features, bias=q.bias is not None, device=q.weight.device,
                          dtype=q.weight.dtype)
        fused.weight.copy_(torch.cat([p.weight for p in parts]))
        if q.bias is not None:
            fused.bias.copy_(torch.cat([p.bias for p in parts]))
        fused.requires_grad_(q.weight.requires_grad)
        self.qkv, self.q, self.k, self.v = fused, None, None, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.project(x)
        # (B, N, C) -> (B, heads, N, head_dim)
        q, k, v = (t.view(B, N, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj(o.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    # name -> (owner attribute, linear attribute): what methods may adapt (models/backbone.py)
    LINEARS = {"q": ("attn", "q"), "k": ("attn", "k"), "v": ("attn", "v"), "qkv": ("attn", "qkv"),
               "proj": ("attn", "proj"), "fc1": ("mlp", "fc1"), "fc2": ("mlp", "fc2")}

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float = 0.0, drop: float = 0.0):
        super().__init__()
        self.dim, self.stage = dim, 0
        self.tokens_in = nn.Identity()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn_in = nn.Identity()
        self.attn = Attention(dim, num_heads)
        self.attn_out = nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mlp_stream = nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_in = nn.Identity()
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.mlp_out = nn.Identity()
        self.mlp_parallel: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokens_in(x)
        x = self.mlp_stream(x + self.attn_out(self.drop_path1(self.attn(self.attn_in(self.norm1(x))))))
        h = self.mlp_out(self.drop_path2(self.mlp(self.mlp_in(self.norm2(x)))))
        if self.mlp_parallel is not None:
            h = h + self.mlp_parallel(x)
        return x + h


class VisionTransformer(Backbone):
    capabilities = frozenset({"cls_token", "tokens_in", "embed_hook", "uniform_width", "attention", "mlp_parallel",
                              "mlp_stream", "fc2_out"})

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        in_chans: int = 3,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.img_size = img_size
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.prelude: nn.Module | None = None
        self.embed_hook = nn.Identity()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # stochastic depth grows linearly with depth
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, dpr[i], drop_rate) for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.norm_hook = nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.prelude is not None:
            self.prelude()
        x = self.embed_hook(self.patch_embed(x))  # (B, N-1, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.pos_drop(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm_hook(self.norm(x))

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]  # the cls token


def build_vit(arch: str, num_classes: int = 1000, img_size: int = 224, **kwargs) -> VisionTransformer:
    """A randomly initialised ViT of a named architecture (``VIT_ARCHS``); kwargs: drop_rate, drop_path_rate."""
    if arch not in VIT_ARCHS:
        import difflib

        close = difflib.get_close_matches(arch, VIT_ARCHS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown arch {arch!r}.{hint} Known: {', '.join(VIT_ARCHS)}")
    a = VIT_ARCHS[arch]
    return VisionTransformer(
        img_size=img_size,
        patch_size=a.patch_size,
        num_classes=num_classes,
        embed_dim=a.embed_dim,
        depth=a.depth,
        num_heads=a.num_heads,
        mlp_ratio=a.mlp_ratio,
        **kwargs,
    )
