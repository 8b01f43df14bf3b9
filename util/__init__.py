"""Helpers below every other package (``models``, ``data``, ``engine``, ``reproduce`` all use them): plain Python,
no torch, so that ``reproduce/verify.py`` can run where only a ``results.json`` is."""

__version__ = "0.5.0"  # of this repository's code; recorded in adapters and results
