"""The rich console the entry points print their tables to."""

from __future__ import annotations

import sys

from rich.console import Console

LOG_WIDTH = 120  # columns when printing to a file or CI log


def make_console(stderr: bool = False) -> Console:
    """A terminal's own width; LOG_WIDTH when output is redirected, where rich would assume 80
    columns and squeeze the results and parity tables until their headers are cut off."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else LOG_WIDTH)
