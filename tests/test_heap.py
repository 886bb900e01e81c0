"""cellctl.heap: the heap is frozen once set up only in cellctl's own process, never in a host
process (a test session, an application running cellctl in-process)."""

from __future__ import annotations

import gc
import subprocess
import sys

from cellctl import heap


def test_settle_leaves_a_host_process_alone() -> None:
    before = gc.get_freeze_count()
    heap.settle()
    assert gc.get_freeze_count() == before


def test_settle_freezes_what_is_alive_in_cellctls_own_process() -> None:
    code = (
        "import gc\n"
        "from cellctl import heap\n"
        "kept = [[i] for i in range(1000)]\n"
        "heap.own_process()\n"
        "heap.settle()\n"
        "print(gc.get_freeze_count())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert int(done.stdout) >= 1000
