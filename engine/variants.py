"""Method variants by name: a registered method and its arguments in train.py's ``--method-args`` syntax, joined by
``:`` (``hta:impl=lowrank:batch_weights=false``). bench.py names its rows so, and ``reproduce/`` names the row of a
sweep config's method (``python -m reproduce.project --variant-of``). Lists of variants are comma-separated; a comma
continues a list value (``lora:targets=q,k,v``) unless a method name follows it."""
from __future__ import annotations

from .config import parse_method_args

__all__ = ["split_variants", "parse_variant", "variant_name"]


def split_variants(text: str, names: tuple[str, ...] = ()) -> list[str]:
    """``"hta:impl=lowrank,lora:targets=q,k,v,snell"`` -> ``["hta:impl=lowrank", "lora:targets=q,k,v", "snell"]``:
    a comma continues a list value (the variant so far ends in ``key=value``) unless a method name (or one of
    ``names``, e.g. bench.py's reference rows) follows it; otherwise it starts a new variant."""
    import models

    known = set(models.METHODS) | set(names)
    out: list[str] = []
    for piece in text.split(","):
        if not piece:
            continue
        if out and "=" in out[-1].rsplit(":", 1)[-1] and piece.split(":", 1)[0] not in known:
            out[-1] += "," + piece  # a list value's next item (targets=q,k,v)
        else:
            out.append(piece)
    return out


def parse_variant(name: str) -> tuple[str, dict]:
    """``"hta:impl=lowrank:dropout=0.1"`` -> ``("hta", {"impl": "lowrank", "dropout": 0.1})`` (values parsed as
    ``--method-args`` values are)."""
    method, *items = name.split(":")
    return method, parse_method_args(items)


def variant_name(method: str, kwargs: dict) -> str:
    """The variant name of ``method`` with ``kwargs`` (the inverse of :func:`parse_variant`)."""
    def text(v) -> str:
        if isinstance(v, (list, tuple)):
            return ",".join(text(x) for x in v)
        if isinstance(v, bool) or v is None:
            return {True: "true", False: "false", None: "null"}[v]
        return str(v)

    return ":".join([method, *(f"{k}={text(v)}" for k, v in kwargs.items())])
