"""`cellctl run`'s live view is drawn by a task on the asyncio loop, where the controller changes
the model: no frame sees the model half-changed, and a frame that fails is reported (logged,
the operator's hands marked gone) instead of freezing the view unseen in rich's refresh thread."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
from pathlib import Path

import pytest
from rich.console import Console
from rich.live import Live

from cellctl.cli.batch import BatchRun, RunOptions, prepare
from cellctl.cli.views.run import FittedView, RunModel
from cellctl.testing import wait_until
from cellctl.values import TagValue

DEMO = Path(__file__).parent.parent / "recipes" / "demo"


def test_frames_are_drawn_on_the_loop_and_a_failed_frame_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    options = RunOptions(recipe=DEMO / "press-fit.yaml", interactive=True)
    prepared = prepare(options)
    out = Console(file=io.StringIO(), force_terminal=True, width=80, height=24)
    run = BatchRun(options, prepared, out)
    drawn_on: list[int] = []

    def tag_values() -> list[TagValue]:  # read by every frame
        drawn_on.append(threading.get_ident())
        if len(drawn_on) == 3:
            raise RuntimeError("the third frame fails")
        return []

    loaded = prepared.loaded
    run.model = model = RunModel(loaded.recipe, loaded.identity, loaded.cell.cell, tag_values)

    async def scenario() -> asyncio.Task[None]:
        with Live(FittedView(model), console=out, auto_refresh=False) as live:
            task = run._supervised(run._redraw(live), "the live view", run._no_keys)
            await wait_until(task.done, 5.0, "the failed frame to end the redraw task")
        return task

    with caplog.at_level(logging.ERROR, logger="cellctl.cli.batch"):
        task = asyncio.run(scenario())
    assert drawn_on and set(drawn_on) == {threading.get_ident()}  # the loop's own thread
    assert isinstance(task.exception(), RuntimeError)
    assert "the live view failed" in caplog.text  # reported, not lost
    assert run.keys_gone  # a batch that waits in Held for the operator ends, not hangs
