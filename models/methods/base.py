"""What every method shares: the ``Method`` interface, the registry, and small helpers to find and replace linears.

A method is a dataclass whose fields are its keyword arguments (with the paper's defaults), so
``METHODS["hta"](rank=1, dropout=0.1)`` validates names and ``dataclasses.asdict`` records them in ``results.json``.
``create_model`` freezes the whole backbone, creates the head (trainable), then calls ``install``: a method adds its
modules to the hook points of ``models.vit`` and marks exactly its own extra trainable tensors.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import ClassVar, Iterator

import torch
from torch import nn

__all__ = ["Method", "METHODS", "register", "LINEAR_NAMES", "iter_linears", "require", "WrappedLinear", "DeltaLinear",
           "merged_linear", "check_targets", "check_int", "check_rate", "check_auto_flag", "by_device", "dropout_layer",
           "autocast_dtype", "full_precision", "autocast_input", "prelude_batches", "take_handover",
           "PRELUDE_MAX_ELEMENTS"]

METHODS: dict[str, type["Method"]] = {}

# The linears of a ViT block that weight-delta methods target by default; every backbone names its own
# (``Block.LINEARS``, models/backbone.py), and ``qkv`` (fused) and ``reduction`` (Swin's patch merging) are targets too.
LINEAR_NAMES = ("q", "k", "v", "proj", "fc1", "fc2")


def register(cls: type["Method"]) -> type["Method"]:
    """Class decorator: add a method to ``METHODS`` under ``cls.name``."""
    if cls.name in METHODS:
        raise ValueError(f"method {cls.name!r} registered twice")
    METHODS[cls.name] = cls
    return cls


@dataclasses.dataclass
class Method:
    """Base class. Subclasses are dataclasses; their fields are the method's keyword arguments."""

    name: ClassVar[str] = ""
    head_init: ClassVar[str] = "trunc_normal"  # 'zeros' where the paper's code zero-initialises the head
    mergeable: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ()  # backbone capabilities the method relies on (models/backbone.py)

    def install(self, model: nn.Module) -> None:
        """Add the method's modules to ``model`` and make its tensors trainable. Backbone is frozen, head trainable."""

    def merge(self, model: nn.Module) -> None:
        """Fold the method into the plain ViT in place (eval-mode function unchanged), removing its modules."""
        raise ValueError(f"method {self.name!r} cannot be merged into a plain ViT")

    def unmergeable_reason(self) -> str:
        """Why ``merge`` refuses this method (only asked when ``mergeable`` is false)."""
        return "it adds a non-linear or token-level computation that no weight can express"

    def config(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def check_targets(targets, allowed=LINEAR_NAMES + ("reduction",)) -> tuple[str, ...]:
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    bad = [t for t in targets if t not in allowed]
    if bad or not targets:
        raise ValueError(f"targets {targets!r}: each must be one of {', '.join(allowed)}")
    if len(set(targets)) != len(targets):
        raise ValueError(f"targets {targets!r} names a layer twice")
    if "qkv" in targets and set(targets) & {"q", "k", "v"}:
        raise ValueError(f"targets {targets!r}: name the fused qkv or the separate q, k, v, not both")
    return targets


def check_int(method: str, name: str, value, minimum: int = 1, note: str = "") -> int:
    """``value`` if it is an integer (not a bool) >= ``minimum``; else one ValueError naming the method and argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{method}: {name} must be an integer >= {minimum}{note}, got {value!r}")
    return value


def check_rate(method: str, name: str, value) -> float:
    """``value`` as a float if it is a number in [0, 1) (a dropout or drop-path rate, a sparsity); else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{method}: {name} must be in [0, 1), got {value!r}")
    return float(value)


def check_auto_flag(method: str, name: str, value) -> bool | None:
    """``value`` if it is true, false or None (None: decided by device, :func:`by_device`); else ValueError."""
    if value not in (None, True, False):
        raise ValueError(f"{method}: {name} must be true, false or null (by device), got {value!r}")
    return value


def by_device(table: dict, t: torch.Tensor):
    """``table``'s entry for ``t``'s device type, else its "default" entry: a fast path's choice per device, set by
    measurement (e.g. ``HTAPrelude.WEIGHTS_BY_DEVICE``, ``snell.SELECT_BY_DEVICE``)."""
    return table.get(t.device.type, table["default"])


def dropout_layer(p: float) -> nn.Module:
    """``nn.Dropout(p)``, or ``nn.Identity`` for p = 0 (no op and no random draw at all)."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


def autocast_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype a GEMM computes in, under the current autocast state, for a floating operand like ``t`` (autocast
    casts floating operands to its dtype, float64 excepted)."""
    dev = t.device.type
    if dev != "meta" and t.dtype != torch.float64 and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return t.dtype


def full_precision(t: torch.Tensor):
    """Autocast off on ``t``'s device, for per-step weights built in full precision under mixed precision (a no-op
    context on meta, where autocast does not exist)."""
    return contextlib.nullcontext() if t.device.type == "meta" else torch.autocast(t.device.type, enabled=False)


def autocast_input(x: torch.Tensor) -> torch.Tensor:
    """x in the autocast dtype when autocast is on (any GEMM it feeds would cast it anyway). For a branch input that
    goes through a dropout and is kept for backward: cast first, and the dropout, its saved input and (on the CPU)
    its mask take 2 bytes an entry instead of 4 (LayerNorm outputs are fp32 under autocast)."""
    return x.to(autocast_dtype(x))


# ------------------------------------------------------------------------------------------------- preludes
# A method's ``model.prelude`` (models/vit.py) does per-step work for many layers at once and hands each layer its
# share through a slot attribute that the layer empties when it reads it (``take_handover``); a layer called on its
# own finds the slot empty and computes its share itself.

PRELUDE_MAX_ELEMENTS = 2**25  # matrix entries per stacked batch (128 MiB in fp32): bounds a prelude's transient memory


def prelude_batches(layers, key, entries, max_elements: int = PRELUDE_MAX_ELEMENTS) -> tuple[tuple, ...]:
    """``layers`` grouped by ``key(layer)`` (layers a prelude can stack: same shape and options), each group split
    into as few batches as keep ``len(batch) · entries(layer) <= max_elements`` (a single layer may exceed it), of
    near-equal size. ViT-B/16's 48 768×768 layers make one batch; ViT-H/14's 128 1280×1280 layers make 7."""
    groups: dict = {}
    for layer in layers:
        groups.setdefault(key(layer), []).append(layer)
    batches = []
    for g in groups.values():
        cap = max(1, max_elements // entries(g[0]))  # layers per batch at most
        size = -(-len(g) // -(-len(g) // cap))  # ceil(len / number of batches)
        batches += [tuple(g[i:i + size]) for i in range(0, len(g), size)]
    return tuple(batches)


def take_handover(layer: nn.Module, slot: str):
    """What the prelude left in ``layer.<slot>`` for this forward (None if nothing), emptying the slot: each
    hand-over is used once, and a layer called outside a model forward never sees a stale one."""
    value = getattr(layer, slot)
    setattr(layer, slot, None)
    return value


def iter_linears(model: nn.Module, targets) -> Iterator[tuple[int, nn.Module, str, nn.Module]]:
    """Yield ``(block_index, owner_module, attr_name, layer)`` for each targeted linear, block by block in ``targets``
    order, then the targeted linears outside the blocks; layers are found by name (``Backbone.linear_sites``).
    Asking for ``qkv`` fuses each attention's q/k/v first. A name the backbone does not offer is a ValueError."""
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    sites = model.linear_sites()
    offered = model.linear_names()
    missing = [t for t in targets if t not in offered]
    if missing:
        raise ValueError(f"{type(model).__name__} has no linear named {', '.join(missing)}: it offers "
                         f"{', '.join(offered)} (docs/backbones.md §2); set the method's targets accordingly")
    order = {t: j for j, t in enumerate(targets)}
    picked = sorted((s for s in sites if s[1] in order), key=lambda s: (s[0], order[s[1]]))
    for i, name, owner, attr in picked:
        if name == "qkv":
            owner.fuse_qkv()
        yield i, owner, attr, getattr(owner, attr)


def require(model: nn.Module, method: str, *needs: str) -> None:
    """One ValueError unless ``model`` offers every capability in ``needs`` (models/backbone.py ``CAPABILITIES``)."""
    from ..backbone import CAPABILITIES

    lacking = [n for n in needs if n not in model.capabilities]
    if lacking:
        what = "; ".join(CAPABILITIES[n] for n in lacking)
        raise ValueError(f"method {method!r} needs {what}, which {type(model).__name__} does not have: this pair is "
                         "not supported (docs/backbones.md §4 lists the supported pairs)")


class WrappedLinear(nn.Module):
    """A method layer that stands where a frozen ``nn.Linear`` was and keeps it as ``self.base``."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features

    @property
    def weight(self) -> torch.Tensor:  # the frozen weight, so code that reads ``layer.weight`` keeps working
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias


class DeltaLinear(WrappedLinear):
    """A frozen ``nn.Linear`` plus a learned additive branch: ``y = base(x) + branch(x)``.

    Subclasses implement ``branch(x)`` and ``delta_weight()`` (the eval-mode branch as a weight in ``nn.Linear``
    layout (out, in)). ``merge`` turns the layer back into one ``nn.Linear``.
    """

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.branch(x)

    def merged(self) -> nn.Linear:
        return merged_linear(self.base, self.delta_weight())


@torch.no_grad()
def merged_linear(base: nn.Linear, delta: torch.Tensor, bias_delta: torch.Tensor | None = None) -> nn.Linear:
    """A new frozen ``nn.Linear`` with weight ``W + delta`` (added in fp32, cast back) and bias ``b + bias_delta``."""
    out = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None or bias_delta is not None,
                    device=base.weight.device, dtype=base.weight.dtype)
    out.weight.copy_((base.weight.float() + delta.float()).to(base.weight.dtype))
    if out.bias is not None:
        b = base.bias.float() if base.bias is not None else torch.zeros(base.out_features, device=out.bias.device)
        if bias_delta is not None:
            b = b + bias_delta.float()
        out.bias.copy_(b.to(out.bias.dtype))
    out.requires_grad_(False)
    return out
