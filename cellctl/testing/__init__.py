"""The testing kit: a cell on simulators, cellctl run in-process, a fault injected, a wait with a
deadline, a free port; the pytest plugin (`cellctl.testing.plugin`) makes fixtures of them.

Names load on first use: pytest imports this package for its plugin in every run, and the
simulators and the CLI cost half a second of imports that a run may not need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cellctl.testing.ports import free_port
    from cellctl.testing.runs import (
        CliResult,
        Harness,
        cli,
        controller_for,
        entered,
        held_or_ended,
        wait_event,
    )
    from cellctl.testing.simulators import LoopThread, Served, SimChild, serve, serve_in_child
    from cellctl.testing.waiting import wait_until

#: Each public name and the module that holds it.
_HOME = {
    "free_port": "ports",
    "CliResult": "runs",
    "Harness": "runs",
    "cli": "runs",
    "controller_for": "runs",
    "entered": "runs",
    "held_or_ended": "runs",
    "wait_event": "runs",
    "LoopThread": "simulators",
    "Served": "simulators",
    "SimChild": "simulators",
    "serve": "simulators",
    "serve_in_child": "simulators",
    "wait_until": "waiting",
}

__all__ = [
    "CliResult",
    "Harness",
    "LoopThread",
    "Served",
    "SimChild",
    "cli",
    "controller_for",
    "entered",
    "free_port",
    "held_or_ended",
    "serve",
    "serve_in_child",
    "wait_event",
    "wait_until",
]


def __getattr__(name: str) -> object:
    """Import a public name from its module the first time it is asked for."""
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
