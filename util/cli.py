"""The command-line parser of every entry point: argparse whose usage errors are one line.

argparse answers a bad flag with the whole usage block (over a dozen lines for train.py) and then the error; here the
error is one ``error:`` line naming the flag and pointing to ``--help``, exit status 2, as every other bad input.
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["ArgumentParser"]


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
