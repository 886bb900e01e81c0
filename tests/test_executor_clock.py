"""Step timeouts on memory drivers fire on time: not early, not late, not reset by tag updates."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from cellctl.control.events import Event, StepEnded, StepOutcome, StepStarted, WaitProgress
from tests.support import watched
from tests.test_executor import Rig

#: The wait's timeout in NEVER_MET.
TIMEOUT = 1.0
#: The latest the timeout may fire: a safety deadline with room for a loaded 2-core machine
#: (DESIGN §6: bound × 3 + 1 s). A timeout that each tag update restarted would never fire.
LATEST = TIMEOUT * 3 + 1

NEVER_MET = """\
recipe: never
version: 1
steps:
  - {id: never, wait: "dev.done and dev.count < 1000", timeout: 1s, on_error: skip}
"""


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig]:
    """A connected, watched memory cell (as in test_executor)."""
    async with watched(Rig()) as bench:
        yield bench


async def keep_changing(rig: Rig, tag: str) -> None:
    """The device side changes `tag` every 20 ms, so a wait on it is woken again and again."""
    count = 0
    while True:
        count = (count + 1) % 100
        rig.device(tag, count)
        await asyncio.sleep(0.02)  # pacing the device, not synchronisation


@pytest.mark.asyncio
async def test_a_wait_times_out_on_time_while_its_tags_keep_changing(rig: Rig) -> None:
    executor = rig.executor(NEVER_MET)
    marks: dict[str, float] = {}

    def mark(name: str) -> Callable[[Event], None]:
        return lambda _: marks.__setitem__(name, time.monotonic())

    rig.host.on(StepStarted, mark("started"))  # once each: the first start, the first end
    rig.host.on(StepEnded, mark("ended"))
    ticker = asyncio.create_task(keep_changing(rig, "dev.count"))
    try:
        await asyncio.wait_for(rig.start(executor), LATEST + 1)
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker  # a ticker that died raises here

    failed = [e for e in rig.host.of(StepEnded) if e.outcome is StepOutcome.FAILED]
    assert len(failed) == 1 and failed[0].error is not None
    assert failed[0].error.startswith("step 'never' timed out after 1 s waiting for"), failed
    elapsed = marks["ended"] - marks["started"]
    assert TIMEOUT <= elapsed <= LATEST
    # The wait was woken by updates throughout, and re-checked its deadline each time.
    assert len(rig.host.of(WaitProgress)) >= 10
