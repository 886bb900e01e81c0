"""The `cellctl` console script: a light entry point that makes even an early Ctrl-C clean."""

from __future__ import annotations

import sys


def main() -> None:
    """Import the CLI (≈0.4 s of libraries) and run it; Ctrl-C meanwhile exits 130, no traceback."""
    try:
        from cellctl.cli import run
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(run())
