"""The `cellctl` console script: a light entry point that makes even an early Ctrl-C or SIGTERM
clean."""

from __future__ import annotations

import signal
import sys


def main() -> None:
    """Import the CLI and run it (each command loads the libraries it needs); Ctrl-C or SIGTERM
    meanwhile exits 130, no traceback."""
    # First, before any heavy import: SIGTERM interrupts as Ctrl-C does (KeyboardInterrupt), so
    # a stop request while the libraries load, the files are checked or the devices are reached
    # ends with 130 and no traceback instead of killing the process (143). A batch's own
    # handlers take over once its event loop runs, and hand this one back when they end.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        from cellctl import heap

        heap.own_process()
        from cellctl.cli import run
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(run())
