"""The two ways a run stops on purpose: the user's input (exit 2) and a diverged loss (exit 3). Both are printed as one
``error:`` line by the entry scripts; neither leaves a ``results.json``."""


class RunError(Exception):
    """A problem with the user's input: printed as one line, exit code 2, nothing written."""


class Diverged(Exception):
    """Non-finite loss: exit code 3, no results.json."""
