"""Reproduction sweeps of the papers' tables: configs, sweep scripts, the HTA grid search and ``verify.py`` (see
reproduce/README.md; docs/benchmarks.md §6–7, paper_tables/README.md)."""
