"""Official ARC and SNELL checkpoints -> state dicts for ``models.create_model`` (docs/methods/arc.md §2,
docs/methods/snell.md §1–2).

    sd = models.convert.from_official_arc(torch.load("arc_cub.pth"), variant="arc_att")
    model = models.create_model(method="arc_att", **models.convert.model_args(sd))
    model.load_state_dict(sd)                                   # strict

    sd = models.convert.from_official_snell(torch.load("snell.pth"), rank=8, sparsity=0.9)
    model = models.create_model(method="snell", sparsity=0.9, **models.convert.model_args(sd))

Both converters check the result against the model they target (built on the meta device: names and shapes) and raise
``ValueError`` naming every unknown, missing or mis-shaped key. Layouts read:

* ``DavidYanAnDe/ARC`` (``Model/ARC_ViT.py``): ``embedding.{cls,position_embedding,projective.*}``,
  ``transformer.{att,mlp}_down_projection`` (D×d, shared), ``transformer.layer.{i}.attention.{query,key,value,
  projective}.*``, ``.mlp.fc{1,2}.*``, ``.{att,fnn}_layer_norm.*``, ``.{att,mlp}_adapter.adapter_rescale`` (1×d) and
  ``.adapter_bias`` (D), ``transformer.layer_norm.*``, ``head_mlp.head.*``.
* ``ssfgunner/SNELL`` (timm style, separate q/k/v): ``blocks.{i}.attn.additional_{q,k,v,proj}.learnable.In_Qs``
  (2, n_in, r/2) / ``Out_Qs`` (2, n_out, r/2), ``blocks.{i}.mlp.additional_fc{1,2}.learnable.*``. The s = 0 module
  (``KLoRA``) uses the same names today; older commits named them ``In_Qs_1`` / ``Out_Qs_1`` (both are read).
  ``shared_coeff_fc`` must be the fixed (+0.1, −0.1) and is dropped (our α is a non-persistent constant).
"""
from __future__ import annotations

import math
import re
from typing import Callable

import torch

__all__ = ["from_official_arc", "from_official_snell", "official_arc_variant", "model_args"]

_Rule = tuple[str, str, "Callable[[torch.Tensor], torch.Tensor] | None"]

_LAYER = r"transformer\.layer\.(\d+)\."
_ARC_RULES: list[_Rule] = [
    (r"embedding\.cls", "cls_token", None),
    (r"embedding\.position_embedding", "pos_embed", None),
    (r"embedding\.projective\.(weight|bias)", r"patch_embed.proj.\1", None),
    (r"transformer\.att_down_projection", "arc.u_att", None),
    (r"transformer\.mlp_down_projection", "arc.u_mlp", None),
    (_LAYER + r"attention\.query\.(weight|bias)", r"blocks.\1.attn.q.\2", None),
    (_LAYER + r"attention\.key\.(weight|bias)", r"blocks.\1.attn.k.\2", None),
    (_LAYER + r"attention\.value\.(weight|bias)", r"blocks.\1.attn.v.\2", None),
    (_LAYER + r"attention\.projective\.(weight|bias)", r"blocks.\1.attn.proj.\2", None),
    (_LAYER + r"mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3", None),
    (_LAYER + r"att_layer_norm\.(weight|bias)", r"blocks.\1.norm1.\2", None),
    (_LAYER + r"fnn_layer_norm\.(weight|bias)", r"blocks.\1.norm2.\2", None),
    (_LAYER + r"att_adapter\.adapter_rescale", r"blocks.\1.attn_in.scale", lambda t: t.reshape(-1)),  # (1, d) -> (d,)
    (_LAYER + r"att_adapter\.adapter_bias", r"blocks.\1.attn_in.bias", None),
    (_LAYER + r"mlp_adapter\.adapter_rescale", r"blocks.\1.mlp_in.scale", lambda t: t.reshape(-1)),
    (_LAYER + r"mlp_adapter\.adapter_bias", r"blocks.\1.mlp_in.bias", None),
    (r"transformer\.layer_norm\.(weight|bias)", r"norm.\1", None),
    (r"head_mlp\.head\.(weight|bias)", r"head.\1", None),
]

_SNELL_FACTOR = r"blocks\.(\d+)\.(attn|mlp)\.additional_(q|k|v|proj|fc1|fc2)\.learnable\."
_SNELL_RULES: list[_Rule] = [
    (r"(cls_token|pos_embed)", r"\1", None),
    (r"patch_embed\.proj\.(weight|bias)", r"patch_embed.proj.\1", None),
    (r"blocks\.(\d+)\.(norm1|norm2)\.(weight|bias)", r"blocks.\1.\2.\3", None),
    (r"blocks\.(\d+)\.attn\.(q|k|v|proj)\.(weight|bias)", r"blocks.\1.attn.\2.base.\3", None),
    (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.base.\3", None),
    (_SNELL_FACTOR + r"(In_Qs|In_Qs_1)", r"blocks.\1.\2.\3.A", None),
    (_SNELL_FACTOR + r"(Out_Qs|Out_Qs_1)", r"blocks.\1.\2.\3.B", None),
    (r"norm\.(weight|bias)", r"norm.\1", None),
    (r"head\.(weight|bias)", r"head.\1", None),
]


def _unwrap(state_dict: dict) -> dict:
    """Accept a bare state dict or a training checkpoint holding one under 'model' or 'state_dict', with or without
    DistributedDataParallel's ``module.`` prefix."""
    for key in ("model", "state_dict"):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def _rename(state_dict: dict, rules: list[_Rule], skip: Callable[[str], bool], source: str) -> dict:
    out, unknown = {}, []
    for key, value in state_dict.items():
        if skip(key):
            continue
        for pattern, template, fn in rules:
            m = re.fullmatch(pattern, key)
            if m:
                out[m.expand(template)] = fn(value) if fn is not None else value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{len(unknown)} key(s) are not part of a {source} checkpoint: {', '.join(unknown[:8])}"
                         + (" ..." if len(unknown) > 8 else ""))
    return out


def _check_against_model(sd: dict, method: str, **method_kwargs) -> None:
    """Compare names and shapes with ``create_model(method=method, **model_args(sd))`` built on the meta device."""
    from . import create_model

    with torch.device("meta"):
        expected = create_model(method=method, **{**model_args(sd), **method_kwargs}).state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = [f"{k}: {tuple(sd[k].shape)} vs {tuple(expected[k].shape)}" for k in sorted(set(sd) & set(expected))
              if tuple(sd[k].shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        problems.append(f"not used by {method!r}: {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else ""))
    if shapes:
        problems.append(f"wrong shape (checkpoint vs model) {'; '.join(shapes[:8])}")
    if problems:
        raise ValueError(f"checkpoint does not match a {method!r} model: " + " | ".join(problems))


def model_args(state_dict: dict) -> dict:
    """``create_model`` keyword arguments implied by a converted (our layout) state dict: ``arch``, ``num_classes``,
    ``img_size``, and ``dim`` (ARC bottleneck) or ``rank`` (SNELL) where present. Raises ``ValueError`` when the
    shapes match no architecture in ``models.ARCHS``."""
    from .vit import VIT_ARCHS as ARCHS

    def need(key: str) -> torch.Tensor:
        if key not in state_dict:
            raise ValueError(f"state dict has no {key!r}; cannot infer the architecture")
        return state_dict[key]

    pos = need("pos_embed")  # (1, 1 + g², D)
    width, patch = pos.shape[-1], need("patch_embed.proj.weight").shape[-1]
    depth = len({k.split(".")[1] for k in state_dict if k.startswith("blocks.")})
    fc1 = state_dict.get("blocks.0.mlp.fc1.weight", state_dict.get("blocks.0.mlp.fc1.base.weight"))
    if fc1 is None:
        raise ValueError("state dict has no blocks.0.mlp.fc1 weight; cannot infer the architecture")
    hidden = fc1.shape[0]
    arch = [name for name, a in ARCHS.items()
            if (a.embed_dim, a.depth, a.patch_size, int(a.embed_dim * a.mlp_ratio)) == (width, depth, patch, hidden)]
    if not arch:
        raise ValueError(f"no known architecture has width {width}, depth {depth}, patch {patch} and MLP width "
                         f"{hidden}; known: {', '.join(ARCHS)}")
    grid = math.isqrt(pos.shape[1] - 1)
    if grid * grid != pos.shape[1] - 1:
        raise ValueError(f"pos_embed has {pos.shape[1]} tokens: not 1 + a square number of patches")
    out = dict(arch=arch[0], num_classes=need("head.weight").shape[0], img_size=grid * patch)
    if "arc.u_att" in state_dict:
        out["dim"] = state_dict["arc.u_att"].shape[1]
    factors = [v for k, v in state_dict.items() if k.endswith(".A")]
    if factors:
        out["rank"] = 2 * factors[0].shape[-1]
    return out


def from_official_arc(state_dict: dict, variant: str = "arc") -> dict:
    """Convert a ``DavidYanAnDe/ARC`` (``ARC_ViT``) state dict for ``create_model(arch, variant, ...)``.

    ``variant`` is ``"arc"`` (adapters before MHA and FFN) or ``"arc_att"`` (before MHA only). λ (1×d) becomes our
    (d,) vector; everything else keeps its shape (both codes use the ``nn.Linear`` layout). Load the result into
    ``create_model(method=variant, **model_args(result))`` (which includes ``dim`` = d).
    """
    if variant not in ("arc", "arc_att"):
        raise ValueError(f"variant must be 'arc' or 'arc_att', got {variant!r}")
    sd = _rename(_unwrap(state_dict), _ARC_RULES, skip=lambda k: False, source="DavidYanAnDe/ARC")
    found = _arc_variant(sd)
    if variant != found:
        what = ("MLP-side adapters (mlp_down_projection / mlp_adapter)" if found == "arc" else
                "no MLP-side adapters (mlp_down_projection / mlp_adapter; FGVC_ARC_train.py saves ARC_att by default)")
        raise ValueError(f"checkpoint holds {what}: it is an {found!r} checkpoint, convert it with "
                         f"variant={found!r} (eval.py: --variant {found}, or leave --variant out)")
    _check_against_model(sd, variant)
    return sd


def _arc_variant(sd: dict) -> str:
    """'arc' when a converted ARC state dict holds the MLP-side adapters, else 'arc_att'."""
    return "arc" if any(k == "arc.u_mlp" or ".mlp_in." in k for k in sd) else "arc_att"


def official_arc_variant(state_dict: dict) -> str:
    """Which ARC variant an official ``DavidYanAnDe/ARC`` state dict holds: 'arc' (adapters before MHA and FFN) or
    'arc_att' (before MHA only)."""
    return _arc_variant(_rename(_unwrap(state_dict), _ARC_RULES, skip=lambda k: False, source="DavidYanAnDe/ARC"))


def from_official_snell(state_dict: dict, rank: int | None = None, sparsity: float = 0.9) -> dict:
    """Convert a ``ssfgunner/SNELL`` (``VisionTransformerSNELL``) state dict for
    ``create_model(arch, "snell", rank=rank, sparsity=sparsity, ...)``.

    ``rank``, when given, must equal the checkpoint's (2 × the last factor dimension); None reads it from the
    checkpoint. ``sparsity`` (the official ``init_thres``) is not stored: the threshold is recomputed from the factors
    at every forward, and the s = 0 module (``KLoRA``) names its factors ``In_Qs``/``Out_Qs`` like ``SNELL`` (s > 0),
    so it comes from the caller. Only the older ``KLoRA`` naming ``In_Qs_1``/``Out_Qs_1`` implies s = 0 and is checked.
    """
    sd_in = _unwrap(state_dict)
    for key, value in sd_in.items():
        if key.endswith(".learnable.shared_coeff_fc"):
            expected = torch.tensor([0.1, -0.1], dtype=torch.float64)
            if value.numel() != 2 or not torch.allclose(value.detach().double().flatten().cpu(), expected):
                raise ValueError(f"{key} is {value.flatten().tolist()}, expected the fixed (+0.1, -0.1) of "
                                 "SNELL-D0; this converter does not support other segment coefficients")
    old_klora = [k for k in sd_in if k.endswith(("In_Qs_1", "Out_Qs_1"))]  # KLoRA (s = 0) of older commits
    current = [k for k in sd_in if k.endswith(("In_Qs", "Out_Qs"))]  # SNELL (s > 0) and today's KLoRA (s = 0)
    if old_klora and current:
        raise ValueError("checkpoint mixes the older KLoRA names (In_Qs_1) with In_Qs: save it from one model again")
    if old_klora and sparsity != 0:
        raise ValueError(f"checkpoint holds older KLoRA factors (In_Qs_1/Out_Qs_1), which the official code builds "
                         f"only for s = 0, but sparsity={sparsity}: pass sparsity=0 (eval.py: --sparsity 0)")
    sd = _rename(sd_in, _SNELL_RULES, skip=lambda k: k.endswith(".learnable.shared_coeff_fc"),
                 source="ssfgunner/SNELL")
    found = model_args(sd).get("rank")
    if found is not None and rank is not None and found != rank:
        raise ValueError(f"checkpoint factors have rank {found} (last dim {found // 2} = r/2), but rank={rank}")
    _check_against_model(sd, "snell", rank=rank if rank is not None else found, sparsity=sparsity)
    return sd
