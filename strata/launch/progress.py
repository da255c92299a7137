"""When the command line shows progress bars."""

from __future__ import annotations

import argparse
import sys


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only for people: off with --quiet or when stderr is not a terminal."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()
