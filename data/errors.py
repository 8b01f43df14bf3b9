"""The one exception type of the data package.

Every problem with the user's data (missing root / task / split file / image, unknown task
name, label out of range, corrupt image, FGVC JSON pointing at missing files ...) is raised as
``DataError`` with a message that names the offending file and says how to fix it.  It is a
``ValueError`` so generic callers that catch ``ValueError`` keep working.

CLI entry points use :func:`cli_main` to turn a ``DataError`` into one line on stderr and exit
status 2 (no traceback).
"""
from __future__ import annotations

import sys
from typing import Callable, Sequence


class DataError(ValueError):
    """Bad or missing data: the message names the file and the fix."""


def cli_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; a DataError becomes ``error: <msg>`` on stderr and exit code 2."""
    try:
        rc = main(argv)
    except DataError as e:
        msg = " ".join(str(e).split("\n"))
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return int(rc or 0)
