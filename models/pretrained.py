"""Pre-trained backbone weights into our ViT (docs/benchmarks.md §5 "Pretrained weights").

    info = load_pretrained(model, "vit_base_patch16_224.orig_in21k", arch="vit_base_patch16_224")
    info = load_pretrained(model, "weights/ViT-B_16.npz", arch="vit_base_patch16_224")
    info = load_pretrained(model, "ckpt.safetensors", arch="vit_base_patch16_224")   # or .pth / .pt / .bin
    info = load_pretrained(model, "vit_base_patch16_224.mae", arch="vit_base_patch16_224")      # MAE (timm's copy)
    info = load_pretrained(model, "weights/linear-vit-b-300ep.pth.tar", arch="vit_base_patch16_224")  # MoCo v3

``source`` is one of

* a **timm name** (``arch.tag``): loaded through timm's own hub machinery at the checkpoint's native resolution. A
  bare ``*_in21k`` name without ``orig``/``augreg`` is rejected as ambiguous (§5: under timm <= 0.6
  ``vit_base_patch16_224_in21k`` meant the AugReg file, not ``ViT-B_16.npz``);
* a Google **.npz** (``ViT-B_16.npz``, AugReg ``B_16-i21k-300ep-...npz``): read by timm's ``_load_weights`` into a
  timm ViT of the dimensions found in the file (no download). Its pre-logits layer and 21,843-way head are dropped;
* a **state dict** file (``.safetensors``, ``.pth``/``.pt``/``.bin``/``.pth.tar``), with timm keys (fused
  ``attn.qkv``) or ours (separate ``attn.q/k/v``), optionally wrapped in ``{'model': ...}`` / ``{'state_dict': ...}``
  and prefixed ``module.`` (DistributedDataParallel). The self-supervised checkpoints of SNELL Table 2
  (docs/benchmarks.md §5 "MAE and MoCo v3") are such files: MAE's ``mae_pretrain_vit_base.pth`` (``{'model': ...}``,
  no head; its decoder, if a file carries one, is dropped) and MoCo v3's ``linear-vit-b-300ep.pth.tar``
  (``{'state_dict': {'module.<timm key>': ...}}`` with a linear-probe head, dropped) or its pre-training checkpoint
  ``vit-b-300ep.pth.tar`` (``module.base_encoder.*`` is kept; ``momentum_encoder``, ``predictor`` and the
  projection MLP ``base_encoder.head`` are dropped), see ``ssl_backbone``.

Every path ends in the same place, ``load_state_dict_into``: timm's fused qkv is split into q, k, v (§5 "Split timm's
fused qkv"), head-like keys are dropped (``create_model`` puts a fresh head on afterwards), the position embedding is
resampled (bicubic, antialiased: timm's ``resample_abs_pos_embed``, as timm's own ``checkpoint_filter_fn``) when the
model's image size differs from the checkpoint's, and every other backbone tensor must be present with the right
shape. So the npz and the hub name of the same weights give identical tensors.

The returned info dict (logged with every run, §5 "Log the SHA-256 of the weight file and the resolved name")::

    source              resolved source: the full timm name ``arch.tag`` or the absolute file path
    requested           the string as given
    kind                'timm' | 'npz' | 'safetensors' | 'pth'
    path                the local weight file (for timm names: timm's cached hub file if found, else None)
    sha256              SHA-256 of that file (streamed), or None
    checkpoint_arch     e.g. 'ViT-B/16'
    qkv_fused           whether the checkpoint stored timm's fused qkv (split on load); False for Google's npz
    ignored_keys        checkpoint keys dropped on purpose (head, pre-logits; MoCo v3's momentum encoder and
                        predictor, MAE's decoder: one entry per group, ``ssl_backbone``)
    pos_embed_resampled None, or 'HxW -> hxw' (patch grids)
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch

from util.files import sha256_file

from .vit import VIT_ARCHS, VisionTransformer

__all__ = ["load_pretrained", "WeightsUnavailable",
           "resolve_timm_name", "timm_to_ours", "load_state_dict_into", "check_backbone_tensors", "read_npz",
           "read_state_dict", "ssl_backbone", "timm_differences", "sha256_tensors", "describe_arch"]

_NPZ = (".npz",)
_SAFETENSORS = (".safetensors",)
_TORCH = (".pth", ".pt", ".bin", ".pth.tar")  # .pth.tar: torch.save files named as MoCo v3 names them
_HEAD_PREFIXES = ("head.", "pre_logits.")  # the pre-trained classifier (and ViT-B_16.npz's pre-logits): always dropped

# Google's files (docs/benchmarks.md §5) -> (download URL, equivalent timm name), for the missing-file message.
_GOOGLE_FILES = {
    "vit-b_16.npz": ("https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz",
                     "vit_base_patch16_224.orig_in21k"),
    "vit-l_16.npz": ("https://storage.googleapis.com/vit_models/imagenet21k/ViT-L_16.npz",
                     "vit_large_patch16_224.orig_in21k"),
    "vit-h_14.npz": ("https://storage.googleapis.com/vit_models/imagenet21k/ViT-H_14.npz",
                     "vit_huge_patch14_224.orig_in21k"),
    "b_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz": (
        ("https://storage.googleapis.com/vit_models/augreg/"
         "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz"),
        "vit_base_patch16_224.augreg_in21k"),
}
# The self-supervised ViT-B/16 files of SNELL Table 2 (docs/benchmarks.md §5) -> (download URL, timm name or None).
_SSL_FILES = {
    "mae_pretrain_vit_base.pth": ("https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth",
                                  "vit_base_patch16_224.mae"),
    "linear-vit-b-300ep.pth.tar": ("https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/linear-vit-b-300ep.pth.tar",
                                   None),
    "vit-b-300ep.pth.tar": ("https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar", None),
}
# The IN-22k Swin-B and ConvNeXt-B releases SNELL loads (docs/backbones.md §5) -> (download URL, timm name).
_HIERARCHICAL_FILES = {
    "swin_base_patch4_window7_224_22k.pth": (
        "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_base_patch4_window7_224_22k.pth",
        "swin_base_patch4_window7_224.ms_in22k"),
    "convnext_base_22k_224.pth": ("https://dl.fbaipublicfiles.com/convnext/convnext_base_22k_224.pth",
                                  "convnext_base.fb_in22k"),
}
_KNOWN_FILES = {**_GOOGLE_FILES, **_SSL_FILES, **_HIERARCHICAL_FILES}
# The paper backbone of each arch (docs/benchmarks.md §5), suggested when a file is missing.
_DEFAULT_TIMM_NAME = {
    "vit_tiny_patch16_224": "vit_tiny_patch16_224.augreg_in21k",
    "vit_small_patch16_224": "vit_small_patch16_224.augreg_in21k",
    "vit_base_patch16_224": "vit_base_patch16_224.orig_in21k",
    "vit_large_patch16_224": "vit_large_patch16_224.orig_in21k",
    "vit_huge_patch14_224": "vit_huge_patch14_224.orig_in21k",
    "swin_base_patch4_window7_224": "swin_base_patch4_window7_224.ms_in22k",  # docs/backbones.md §5
    "convnext_base": "convnext_base.fb_in22k",
}
_SIZE_LETTER = {(192, 12): "Ti", (384, 12): "S", (768, 12): "B", (1024, 24): "L", (1280, 32): "H"}


# ----------------------------------------------------------------------------------------------------------- helpers
def describe_arch(width: int, depth: int, patch: int, heads: int | None = None) -> str:
    """'ViT-B/16' for the published sizes, else the raw dimensions."""
    letter = _SIZE_LETTER.get((width, depth))
    if letter is not None:
        return f"ViT-{letter}/{patch}"
    h = f", {heads} heads" if heads is not None else ""
    return f"ViT(width {width}, depth {depth}{h}, patch {patch})"


def _model_dims(model: VisionTransformer) -> tuple[int, int, int, int]:
    """(width, depth, heads, patch) of our ViT."""
    return model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads, model.patch_embed.patch_size


def _check_arch(arch: str, model: VisionTransformer, width: int, depth: int, patch: int, heads: int | None) -> None:
    """Raise ``ValueError("weights are ViT-L/16 but --arch is vit_base_patch16_224")`` on any dimension mismatch."""
    w, d, h, p = _model_dims(model)
    if (width, depth, patch) != (w, d, p) or (heads is not None and heads != h):
        raise ValueError(f"weights are {describe_arch(width, depth, patch, heads)} but --arch is {arch} "
                         f"({describe_arch(w, d, p, h)}): pick the matching --arch or other weights")


# ------------------------------------------------------------------------------------------------ timm names (hub)
def resolve_timm_name(name: str) -> str:
    """Validate a timm pretrained name and return it in full (``arch.tag``; a bare arch gets timm's default tag).

    Raises ``ValueError`` for a bare ``*_in21k`` name (docs/benchmarks.md §5: ambiguous between Google's original
    IN-21k file and AugReg), an unknown architecture or an unknown pretrained tag.
    """
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    arch_name, tag = split_model_name_tag(name)
    legacy = arch_name.endswith("_in21k")  # timm <= 0.6 style, e.g. vit_base_patch16_224_in21k
    base = arch_name[: -len("_in21k")] if legacy else arch_name
    explicit = [f"{base}.orig_in21k", f"{base}.augreg_in21k"]
    if legacy or (tag == "in21k" and any(n in timm.list_pretrained(f"{base}.*") for n in explicit)):
        known = [n for n in timm.list_pretrained(f"{base}.*") if n in explicit or n.endswith(".in21k")]
        choices = " or ".join(known or explicit)
        raise ValueError(
            f"pretrained name {name!r} is ambiguous: '*_in21k' without 'orig' or 'augreg' has meant different weights "
            f"across timm versions (timm <= 0.6 resolved vit_base_patch16_224_in21k to the AugReg file, not Google's "
            f"ViT-B_16.npz). Name the weights explicitly: {choices} (docs/benchmarks.md §5)")
    if not timm.is_model(arch_name):
        import difflib

        close = difflib.get_close_matches(arch_name, timm.list_models(pretrained=True), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"{name!r} is neither an existing weight file nor a timm model name.{hint} Pass a path to a "
                         f".npz/.safetensors/.pth file or a timm name such as vit_base_patch16_224.orig_in21k")
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:  # timm: "Invalid pretrained tag"
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        tags = ", ".join(timm.list_pretrained(f"{arch_name}.*")) or "(none)"
        raise ValueError(f"timm has no pretrained weights {name!r}; for {arch_name} it has: {tags}")
    return f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture


def _timm_cached_file(cfg: dict) -> str | None:
    """The local file timm loaded ``cfg``'s weights from, if it can be found in the hub / torch caches."""
    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    if cfg.get("file"):
        return cfg["file"] if os.path.isfile(cfg["file"]) else None
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        repo, _, revision = hub_id.partition("@")
        fn = cfg.get("hf_hub_filename")
        names = ([fn] if fn else []) + ["model.safetensors", "pytorch_model.safetensors", "open_clip_model.safetensors",
                                        "pytorch_model.bin"]
        for n in names:
            p = try_to_load_from_cache(repo, n, revision=revision or None)
            if isinstance(p, str) and os.path.isfile(p):
                return p
    if url:
        p = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url.split("?")[0]))
        if os.path.isfile(p):
            return p
    return None


def timm_differences(shell) -> list[str]:
    """What a timm model computes that our ViT does not (empty: its backbone is ours, tensor for tensor and function
    for function). timm's plain cls-token ViTs are ours, among them ``vit_base_patch16_224.mae``: MAE's encoder
    with the final LayerNorm and cls-token pooling, as SNELL fine-tunes it (docs/benchmarks.md §5 "MAE and MoCo v3").
    Works on a meta-device model, so it runs before anything is downloaded."""
    from torch import nn

    if type(shell).__name__ != "VisionTransformer" or getattr(shell, "cls_token", None) is None or \
            getattr(shell, "pos_embed", None) is None or not hasattr(shell, "blocks"):
        return ["not a cls-token ViT with a learned position embedding"]
    b = shell.blocks[0]
    act = getattr(getattr(b, "mlp", None), "act", None)
    ident = lambda m: m is None or isinstance(m, nn.Identity)  # noqa: E731
    found = {
        "register tokens": getattr(shell, "num_reg_tokens", 0) > 0,
        "no position embedding on the class token": bool(getattr(shell, "no_embed_class", False)),
        "a LayerNorm before the blocks (norm_pre)": not ident(getattr(shell, "norm_pre", None)),
        "pooling through fc_norm instead of a final LayerNorm": ident(getattr(shell, "norm", None))
        or not ident(getattr(shell, "fc_norm", None)),
        "layer scale": not ident(getattr(b, "ls1", None)),
        "q/k normalisation": not ident(getattr(b.attn, "q_norm", None)),
        "a norm inside attention": not ident(getattr(b.attn, "norm", None)),
        f"LayerNorm eps {getattr(b.norm1, 'eps', None)} (ours: 1e-6)": getattr(b.norm1, "eps", None) != 1e-6,
        "an MLP activation other than exact GELU": type(act) is not nn.GELU or act.approximate != "none",
        "no fused qkv with bias": getattr(getattr(b.attn, "qkv", None), "bias", None) is None,
        f"{type(b).__name__} blocks (ours: timm's pre-LN Block)": type(b).__name__ != "Block",
    }
    return [what for what, differs in found.items() if differs]


class WeightsUnavailable(RuntimeError):
    """timm could not fetch or read hub weights (network, cache): the message names the weights and the way out."""


def _load_timm(model: VisionTransformer, name: str, arch: str) -> dict:
    import timm

    full = resolve_timm_name(name)
    with torch.device("meta"):  # dimensions only: checks --arch before anything is downloaded
        shell = timm.create_model(full, pretrained=False, num_classes=0)
    differences = timm_differences(shell)
    if differences:
        raise ValueError(f"timm model {full!r} differs from our ViT ({'; '.join(differences)}), so it cannot load "
                         f"into {arch}: pick plain cls-token ViT weights (*.orig_in21k, *.augreg_in21k, *.mae; "
                         "docs/benchmarks.md §5)")
    _check_arch(arch, model, shell.embed_dim, len(shell.blocks), shell.patch_embed.patch_size[0],
                shell.blocks[0].attn.num_heads)
    try:  # native resolution: the pos-embed is resampled in one place, load_state_dict_into
        ref = timm.create_model(full, pretrained=True, num_classes=0)
    except Exception as e:  # hub / network / cache failures
        alt = next((f" or download {u} and pass its path" for u, n in _KNOWN_FILES.values() if n == full), "")
        raise WeightsUnavailable(f"timm could not load the pretrained weights {full!r} ({type(e).__name__}: {e}). "
                                 f"Check the network or the Hugging Face cache (HF_HOME){alt}") from e
    sd = ref.state_dict()
    path = _timm_cached_file(dict(ref.pretrained_cfg))
    del ref
    info = load_state_dict_into(model, sd, arch, heads=shell.blocks[0].attn.num_heads)
    return {"source": full, "requested": name, "kind": "timm", "path": path,
            "sha256": sha256_file(path) if path else None, **info}


# ------------------------------------------------------------------------------------------------------ Google npz
def read_npz(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], int, list[str]]:
    """A Google ViT ``.npz`` as a timm-keyed state dict (no head), its number of heads, and the npz keys dropped on
    purpose (``pre_logits/*``, ``head/*``: the pre-logits layer and the 21,843-way classifier, docs/benchmarks.md §5).

    The timm ViT is sized from the file (width, depth, heads, MLP width, patch, position grid) and filled by timm's
    ``_load_weights``; it is built on the meta device and filled with NaN first, so a tensor the file did not cover
    is an error rather than a silent random init.
    """
    import numpy as np
    from timm.models.vision_transformer import VisionTransformer as TimmViT, _load_weights

    try:
        w = np.load(path)
    except (ValueError, OSError, EOFError):  # not a zip of arrays (np.load refuses pickles)
        raise ValueError(f"{path} is not a readable .npz (a zip archive of arrays); pass a Google ViT .npz such as "
                         "ViT-B_16.npz, or a .safetensors/.pth state dict") from None
    with w:
        keys = set(w.files)
        prefix = next((p for p in ("", "opt/target/", "params/", "params/img/") if f"{p}embedding/kernel" in keys),
                      None)
        if prefix is None:
            raise ValueError(f"{path} is not a Google ViT checkpoint: it has no 'embedding/kernel' "
                             f"(first keys: {sorted(keys)[:5]})")
        if f"{prefix}cls" not in keys:
            raise ValueError(f"{path} has no class token ('{prefix}cls'): only cls-token ViTs load into this model")
        kh, kw, _, width = w[f"{prefix}embedding/kernel"].shape  # HWIO
        if kh != kw:
            raise ValueError(f"{path}: non-square patches {kh}x{kw} are not supported")
        stacked = f"{prefix}Transformer/encoderblock/LayerNorm_0/scale" in keys  # big_vision scan layout
        big_vision = prefix.startswith("params/") or f"{prefix}pos_embedding" in keys or stacked
        mha = "MultiHeadDotProductAttention_0" if big_vision else "MultiHeadDotProductAttention_1"
        mlp = "MlpBlock_0" if big_vision else "MlpBlock_3"
        if stacked:
            blk0 = f"{prefix}Transformer/encoderblock/"
            depth = w[f"{blk0}LayerNorm_0/scale"].shape[0]
        else:
            blk0 = f"{prefix}Transformer/encoderblock_0/"
            pat = re.compile(re.escape(prefix) + r"Transformer/encoderblock_(\d+)/LayerNorm_0/scale$")
            depth = len({m.group(1) for k in keys if (m := pat.match(k))})
        heads = w[f"{blk0}{mha}/query/kernel"].shape[-2]  # (D, heads, head_dim), stacked: (depth, D, heads, hd)
        hidden = w[f"{blk0}{mlp}/Dense_0/kernel"].shape[-1]
        pos_key = f"{prefix}pos_embedding" if big_vision else f"{prefix}Transformer/posembed_input/pos_embedding"
        n_pos = w[pos_key].shape[-2]  # cls + grid²
        dropped = sorted(k for k in keys if k.startswith((f"{prefix}head/", f"{prefix}pre_logits/")))
    grid = round((n_pos - 1) ** 0.5)
    if grid * grid != n_pos - 1:
        raise ValueError(f"{path}: {n_pos} position embeddings are not 1 (cls) + a square grid")
    with torch.device("meta"):
        ref = TimmViT(img_size=grid * kh, patch_size=kh, embed_dim=width, depth=depth, num_heads=heads,
                      mlp_ratio=hidden / width, num_classes=0, qkv_bias=True)
    ref.to_empty(device="cpu")
    with torch.no_grad():
        for t in ref.state_dict().values():
            t.fill_(float("nan"))
    _load_weights(ref, str(path))
    sd = ref.state_dict()
    unfilled = [k for k, v in sd.items() if v.is_floating_point() and torch.isnan(v).all()]
    if unfilled:
        raise ValueError(f"{path}: timm's npz reader left {unfilled[:5]} unset: not a plain Google ViT checkpoint")
    return sd, heads, dropped


# ------------------------------------------------------------------------------------------------- state-dict files
def _first_line(e: Exception) -> str:
    """An exception's message on one line: its first line, or for torch's several-line ``weights_only`` text the
    unpickler's own reason."""
    text = str(e)
    reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if reason:
        return f"weights-only unpickler: {reason.group(1).strip()}"
    return " ".join(text.strip().splitlines()[:1]).rstrip(". ") or type(e).__name__


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` / ``.pth`` file, unwrapped from a top-level ``{'model'|'state_dict': ...}``."""
    if str(path).lower().endswith(_SAFETENSORS):
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path), device="cpu")
        except Exception as e:  # safetensors' own error type (a header too small, too large, not JSON ...)
            raise ValueError(f"{path} is not a readable .safetensors file ({_first_line(e)}); the file is damaged "
                             "or not safetensors: download or save it again") from None
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path} could not be read as a PyTorch state dict of tensors ({type(e).__name__}: "
                             f"{_first_line(e)}); if the file is complete, save just the tensors "
                             "(torch.save(model.state_dict(), ...) or safetensors)") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
            break
    if not isinstance(sd, dict) or not any(isinstance(v, torch.Tensor) for v in sd.values()):
        top = sorted(sd)[:5] if isinstance(sd, dict) else type(sd).__name__
        raise ValueError(f"{path} holds no state dict (top level: {top}); expected tensors, or a "
                         f"{{'model': ...}} / {{'state_dict': ...}} wrapper")
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def ssl_backbone(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The ViT backbone inside a self-supervised pre-training checkpoint (``module.`` already stripped), and what was
    dropped on purpose, one entry per group (docs/benchmarks.md §5 "MAE and MoCo v3"):

    * MoCo v3's pre-training checkpoint (moco-v3 ``main_moco.py``: ``base_encoder``, ``momentum_encoder``,
      ``predictor``): ``base_encoder.*`` is kept without its prefix, as moco-v3's ``main_lincls.py`` and
      ``convert_to_deit.py`` keep it; its projection MLP ``base_encoder.head.*`` then goes with the other head keys
      (``timm_to_ours``). Anything else beside the two encoders and the predictor is refused;
    * MAE's decoder (``decoder_*``, ``mask_token``), present in MAE's full pre-training checkpoints (the released
      ``mae_pretrain_vit_base.pth`` holds the encoder only).

    Every other state dict (MoCo v3's ``linear-vit-b-300ep.pth.tar`` included: plain timm keys after ``module.``)
    passes through unchanged.
    """
    dropped = []
    if any(k.startswith("base_encoder.") for k in state_dict):
        kept, groups = {}, {}
        for k, v in state_dict.items():
            if k.startswith("base_encoder."):
                kept[k[len("base_encoder."):]] = v
            else:
                groups[k.split(".", 1)[0]] = groups.get(k.split(".", 1)[0], 0) + 1
        unknown = sorted(set(groups) - {"momentum_encoder", "predictor"})
        if unknown:
            raise ValueError(f"the checkpoint holds base_encoder.* (MoCo v3) but also {unknown}, which MoCo v3's "
                             "layout (base_encoder, momentum_encoder, predictor) does not have; save the backbone "
                             "alone ({'model': base encoder state dict}) and pass that file")
        state_dict = kept
        dropped += [f"{g}.* ({n} tensors, MoCo v3 pre-training only)" for g, n in sorted(groups.items())]
    decoder = [k for k in state_dict if k.startswith("decoder_") or k == "mask_token"]
    if decoder:
        state_dict = {k: v for k, v in state_dict.items() if not (k.startswith("decoder_") or k == "mask_token")}
        dropped.append(f"decoder_*, mask_token ({len(decoder)} tensors, the MAE decoder)")
    return state_dict, dropped


# --------------------------------------------------------------------------------------------------- conversion
def timm_to_ours(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """timm ViT keys -> ours: ``blocks.i.attn.qkv.{weight,bias}`` (3D, ...) is split into ``attn.q/k/v`` (timm's
    order is q, k, v along dim 0); head / pre-logits keys are dropped. Keys already in our layout pass through.

    Returns ``(state_dict, ignored_keys)``.
    """
    out, ignored = {}, []
    for k, v in state_dict.items():
        if k.startswith(_HEAD_PREFIXES):
            ignored.append(k)
        elif ".attn.qkv." in k:
            if v.shape[0] % 3:
                raise ValueError(f"{k}: fused qkv of shape {tuple(v.shape)} is not 3 equal parts along dim 0")
            for part, t in zip("qkv", v.chunk(3, dim=0)):  # (3D, D) -> 3 x (D, D); (3D,) -> 3 x (D,)
                out[k.replace(".attn.qkv.", f".attn.{part}.")] = t
        else:
            out[k] = v
    return out, ignored


def load_state_dict_into(model: VisionTransformer, state_dict: dict[str, torch.Tensor], arch: str,
                         heads: int | None = None) -> dict:
    """Convert (``timm_to_ours``), check and copy a backbone state dict into ``model``; the head is left alone.

    ``heads`` (when the source knows it) is checked too; a state dict alone does not record the head count.
    Raises ``ValueError`` on another architecture, a missing or unexpected backbone tensor, or a shape mismatch.
    """
    from timm.layers import resample_abs_pos_embed

    if any(p.is_meta for p in model.parameters()):
        raise ValueError("cannot load pretrained weights into a model on the meta device; build it on a real device")
    qkv_fused = any(".attn.qkv." in k for k in state_dict)
    sd, ignored = timm_to_ours(state_dict)
    proj = sd.get("patch_embed.proj.weight")
    if proj is None:
        raise ValueError(f"the checkpoint has no 'patch_embed.proj.weight': not a ViT backbone state dict "
                         f"(first keys: {sorted(sd)[:5]}); pass the weights of a ViT with a patch-embedding "
                         "convolution (timm or our keys)")
    block_ids = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    ckpt_arch = (proj.shape[0], max(block_ids, default=-1) + 1, proj.shape[-1])  # (width, depth, patch)
    _check_arch(arch, model, *ckpt_arch, heads)

    own = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    resampled = None
    pos = sd.get("pos_embed")
    if pos is not None and pos.shape != own["pos_embed"].shape and pos.ndim == 3 and \
            pos.shape[-1] == own["pos_embed"].shape[-1]:
        old = round((pos.shape[1] - 1) ** 0.5)
        new = model.patch_embed.grid_size
        if old * old != pos.shape[1] - 1:
            raise ValueError(f"pos_embed: {pos.shape[1]} tokens are not 1 (cls) + a square grid; cannot resample to "
                             f"{new}x{new} for {arch}")
        sd["pos_embed"] = resample_abs_pos_embed(pos.float(), new_size=[new, new], num_prefix_tokens=1)  # bicubic, AA
        resampled = f"{old}x{old} -> {new}x{new}"

    check_backbone_tensors(model, sd, arch)
    result = model.load_state_dict(sd, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= {"head.weight", "head.bias"}, result
    return {"checkpoint_arch": describe_arch(*ckpt_arch, heads), "qkv_fused": qkv_fused, "ignored_keys": ignored,
            "pos_embed_resampled": resampled, "backbone_sha256": sha256_tensors(own.keys(), model.state_dict())}


def check_backbone_tensors(model, sd: dict[str, torch.Tensor], arch: str) -> None:
    """ValueError unless ``sd`` (our keys) holds every backbone tensor of ``model`` (the head aside) with its shape,
    and nothing else: the one check of every loading path, ViT, Swin and ConvNeXt."""
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if unexpected:
        raise ValueError(f"the checkpoint has tensors {arch} does not: {unexpected[:5]}"
                         f"{' …' if len(unexpected) > 5 else ''} (a method checkpoint? load the backbone weights, or "
                         f"models.merge() the model before saving)")
    if missing:
        raise ValueError(f"the checkpoint lacks backbone tensors of {arch}: {missing[:5]}"
                         f"{' …' if len(missing) > 5 else ''}")
    for k, v in own.items():
        if sd[k].shape != v.shape:
            raise ValueError(f"shape mismatch for {k}: checkpoint {tuple(sd[k].shape)}, model {tuple(v.shape)} "
                             f"(--arch {arch}, img_size {model.img_size})")


def sha256_tensors(names, state_dict: dict[str, torch.Tensor]) -> str:
    """Hex SHA-256 of the named tensors as loaded (names, dtypes, shapes and bytes, in sorted name order): the
    backbone's identity whatever file it came from, also when timm leaves no weight file to hash
    (docs/benchmarks.md §5)."""
    h = hashlib.sha256()
    for k in sorted(names):
        t = state_dict[k].detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------ Swin and ConvNeXt (timm keys)
# What our Swin / ConvNeXt name differently from timm (docs/backbones.md §5): ConvNeXt's final LayerNorm sits in
# timm's head (head.norm); ours is ``norm``, and ``head`` is the classifier only.
_TIMM_RENAMES = (("head.norm.", "norm."),)
# Buffers that official (non-timm) checkpoints store and timm recomputes: dropped on the way in.
_RECOMPUTED = ("relative_position_index", "attn_mask")


def _official_to_timm(model, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The released Swin / ConvNeXt files (``swin_base_patch4_window7_224_22k.pth``, ``convnext_base_22k_224.pth``,
    as SNELL loads them) in timm's keys, through timm's own ``checkpoint_filter_fn`` for a timm model of ``model``'s
    dimensions; timm-keyed state dicts pass through."""
    import importlib

    official = "layers.0.downsample.reduction.weight" in sd or any(k.startswith("downsample_layers.") for k in sd)
    if not official:
        return sd
    with torch.device("meta"):
        shell = model.timm_equivalent()
    return importlib.import_module(type(shell).__module__).checkpoint_filter_fn(sd, shell)


def _timm_to_backbone(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """timm-keyed Swin / ConvNeXt tensors in our names (renamed, q/k/v split, head and buffers dropped)."""
    renamed = {}
    for k, v in sd.items():
        if any(b in k for b in _RECOMPUTED):
            continue
        for old, new in _TIMM_RENAMES:
            k = new + k[len(old):] if k.startswith(old) else k
        renamed[k] = v
    return timm_to_ours(renamed)


def _load_backbone_tensors(model, sd: dict[str, torch.Tensor], arch: str) -> dict:
    """timm-keyed Swin / ConvNeXt tensors -> ``model`` (head left alone), checked by ``check_backbone_tensors``."""
    if any(p.is_meta for p in model.parameters()):
        raise ValueError("cannot load pretrained weights into a model on the meta device; build it on a real device")
    ours, ignored = _timm_to_backbone(sd)
    check_backbone_tensors(model, ours, arch)
    model.load_state_dict(ours, strict=False)
    own = [k for k in model.state_dict() if not k.startswith("head.")]
    return {"checkpoint_arch": arch, "qkv_fused": any(".attn.qkv." in k for k in sd), "ignored_keys": ignored,
            "pos_embed_resampled": None, "backbone_sha256": sha256_tensors(own, model.state_dict())}


def _load_hierarchical(model, source: str, arch: str) -> dict:
    """``load_pretrained`` for Swin and ConvNeXt: a timm name (``swin_base_patch4_window7_224.ms_in22k``,
    ``convnext_base.fb_in22k``) or a state-dict file in timm's or the official release's keys."""
    lower = source.lower()
    if not (lower.endswith(_SAFETENSORS + _TORCH) or os.sep in source or os.path.exists(source)):
        import timm

        full = resolve_timm_name(source)
        with torch.device("meta"):  # shapes only: checks --arch before anything is downloaded
            shell = timm.create_model(full, pretrained=False, num_classes=0)
        try:
            check_backbone_tensors(model, _timm_to_backbone(shell.state_dict())[0], arch)
        except ValueError as e:
            raise ValueError(f"timm weights {full!r}: {e} (for {arch} pass e.g. "
                             f"{_DEFAULT_TIMM_NAME.get(arch, arch + '.<tag>')})") from None
        try:
            ref = timm.create_model(full, pretrained=True, num_classes=0)
        except Exception as e:  # hub / network / cache failures
            raise WeightsUnavailable(f"timm could not load the pretrained weights {full!r} ({type(e).__name__}: "
                                     f"{e}). Check the network or the Hugging Face cache (HF_HOME)") from e
        path = _timm_cached_file(dict(ref.pretrained_cfg))
        info = _load_backbone_tensors(model, ref.state_dict(), arch)
        return {"source": full, "requested": source, "kind": "timm", "path": path,
                "sha256": sha256_file(path) if path else None, **info}
    path = Path(source).expanduser()
    if not path.is_file():
        raise ValueError(_missing_file_message(source, arch))
    path = path.resolve()
    try:
        info = _load_backbone_tensors(model, _official_to_timm(model, read_state_dict(path)), arch)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return {"source": str(path), "requested": source, "kind": "safetensors" if lower.endswith(_SAFETENSORS) else "pth",
            "path": str(path), "sha256": sha256_file(path), **info}


# --------------------------------------------------------------------------------------------------------- entry
def _missing_file_message(path: str, arch: str) -> str:
    name = os.path.basename(path)
    known = _KNOWN_FILES.get(name.lower())
    if known is not None:
        url, timm_name = known
        fix = f"download it (wget -O {path} {url})" + (f" or pass the timm name {timm_name}" if timm_name else "")
    elif arch in _DEFAULT_TIMM_NAME:
        fix = f"check the path, or pass a timm name such as {_DEFAULT_TIMM_NAME[arch]}"
    else:
        fix = "check the path"
    return f"pretrained weight file {path} does not exist: {fix} (docs/benchmarks.md §5)"


def load_pretrained(model: VisionTransformer, source: str, arch: str) -> dict:
    """Load ``source`` (timm name, Google ``.npz``, ``.safetensors`` or ``.pth``/``.pt``/``.bin``/``.pth.tar``) into
    ``model``'s backbone and return the info dict described in the module docstring. The pre-trained head is never
    loaded. A file that does not fit is one ``ValueError`` line that starts with the file's path.
    """
    if not isinstance(model, VisionTransformer):
        return _load_hierarchical(model, str(source), arch)
    if arch not in VIT_ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(VIT_ARCHS)}")
    source = str(source)
    lower = source.lower()
    looks_like_file = lower.endswith(_NPZ + _SAFETENSORS + _TORCH) or os.sep in source or os.path.exists(source)
    if not looks_like_file:
        return _load_timm(model, source, arch)
    path = Path(source).expanduser()
    if path.is_dir():
        raise ValueError(f"pretrained weights {source} is a folder; give a weight file in it (.npz, .safetensors or "
                         f".pth) or a timm name (docs/benchmarks.md §5)")
    if not path.is_file():
        raise ValueError(_missing_file_message(source, arch))
    path = path.resolve()
    if lower.endswith(_NPZ):
        kind = "npz"
        sd, heads, dropped = read_npz(path)
    elif lower.endswith(_SAFETENSORS + _TORCH):
        kind = "safetensors" if lower.endswith(_SAFETENSORS) else "pth"
        sd, heads, dropped = read_state_dict(path), None, []
    else:
        raise ValueError(f"{source}: unknown weight format; use .npz (Google), .safetensors or "
                         ".pth/.pt/.bin/.pth.tar")
    try:
        sd, ssl_dropped = ssl_backbone(sd)
        info = load_state_dict_into(model, sd, arch, heads=heads)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    info["ignored_keys"] = dropped + ssl_dropped + info["ignored_keys"]
    if kind == "npz":
        info["qkv_fused"] = False  # the file has separate query/key/value kernels (timm's reader fused them)
    return {"source": str(path), "requested": source, "kind": kind, "path": str(path), "sha256": sha256_file(path),
            **info}
