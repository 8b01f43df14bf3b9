"""What the entry scripts share: the run configuration (``config``), the data of a run (``data``), the training loop
and evaluation (``loop``) and the run folder (``rundir``). See docs/ARCHITECTURE.md.

``engine.config`` imports no torch, so ``reproduce/`` can check a sweep config where only Python is installed."""
