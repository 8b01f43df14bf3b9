"""Method registry: importing this package registers every method file in ``METHODS`` (name -> Method class).

Adding a method = one new file here that defines a ``@register``-ed ``Method`` subclass, plus its import below.
"""
from .base import METHODS, Method, register  # noqa: F401

from . import simple  # noqa: F401,E402  (full, linear, bitfit)
