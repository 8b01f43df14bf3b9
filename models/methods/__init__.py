"""Method registry: importing this package imports every module in this folder, and each ``@register``-ed
``Method`` subclass lands in ``METHODS`` (name -> class).

Adding a method = one new file here defining a ``@register``-ed dataclass subclass of ``Method``.
"""
import importlib
import pkgutil

from .base import METHODS, Method, register

__all__ = ["METHODS", "Method", "register"]

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _mod != "base":
        importlib.import_module(f"{__name__}.{_mod}")
