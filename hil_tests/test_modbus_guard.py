"""The guard around a Modbus request on a serial line: it never cuts off a try the device
answers in time, however long the line's quiet after an earlier failure took, and it still
ends a job that hangs past its deadline (real pymodbus RTU server on a pty line).

After a try that failed, the next request first waits until the line has been quiet for a
turnaround after the failed try's own answer was due (its timeout). That wait is the bus's: it
comes out of the allowance for waiting for the bus (one worst case + 0.25 s), and the tries get
their whole budget after it.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from pymodbus.client import ModbusBaseClient

from cellctl.testing import wait_until
from drivers.config import RequestLimits
from drivers.errors import BadResponse, DeviceTimeout
from hil_tests.support import with_room
from hil_tests.test_modbus_late import BLOCK, REGISTERS, Device, Rig, answer_otherwise, rtu_rig

#: Long enough a timeout that the quiet owed after a failed try (most of a timeout) is longer
#: than the guard's 0.25 s margin, with room on both sides of every moment the test relies on.
TIMEOUT = 1.2
LIMITS = RequestLimits(timeout=TIMEOUT, retries=0)  # one try: one worst case = TIMEOUT
#: The failed try's wrong answer comes this long after it; the try's own answer may still
#: come until its timeout, so the line is owed quiet until TIMEOUT + turnaround after it.
WRONG_AFTER = 0.1
#: Then the device answers this long after each request: slow, but half a timeout within it
#: (room for a loaded machine).
SLOW = 0.6
#: How long the next request waits for the line to be quiet, asked as the failed one ends:
#: 1.15 s, within the 1.45 s the bus may be waited for.
QUIET = TIMEOUT + 0.05 - WRONG_AFTER
MARGIN = 0.25  # the guard's, beyond a request's deadline


async def _owe_quiet(rig: Rig) -> None:
    """A read whose try fails on a wrong answer; then the device answers right, but slowly."""
    assert rig.line is not None
    rig.device.rewrite = answer_otherwise  # 1 register for 3
    rig.line.latency(WRONG_AFTER)
    with pytest.raises(BadResponse, match="1 register, expected 3"):
        await rig.driver.read(BLOCK)
    rig.device.rewrite = None
    rig.line.latency(SLOW)


@pytest.mark.asyncio
async def test_a_quiet_owed_before_a_request_does_not_cut_off_its_answer() -> None:
    # The read waits QUIET for the line, then is answered SLOW later, within the device's
    # timeout. A guard whose clock started before the quiet wait fired 0.25 s after a budget
    # counted from there (at 1.45 s): 0.3 s before that answer (at 1.75 s), as "no answer
    # within 1.2 s".
    async with rtu_rig(Device(), LIMITS) as rig:
        await _owe_quiet(rig)
        started = time.monotonic()
        (reading,) = await rig.driver.read([REGISTERS[1]])
        took = time.monotonic() - started
        assert reading.value == 1001
        assert LIMITS.worst_case + MARGIN < QUIET + SLOW  # the old guard came first
        assert took >= 0.8 * (QUIET + SLOW)  # it waited for the quiet, then the answer
        assert took <= with_room(2 * LIMITS.worst_case + 0.25)


@pytest.mark.asyncio
async def test_the_guard_ends_a_job_that_hangs_past_its_deadline_and_frees_the_bus() -> None:
    # pymodbus ends an exchange when cancelled, so only a job that ignores its cancellation
    # hangs: this one, given to the bus's public request(), ignores the first cancellation
    # (the tries' deadline) and ends at the second (the guard's). After the same owed quiet:
    # the job gets its whole budget after the quiet, and the guard fires a margin later.
    async with rtu_rig(Device(), LIMITS) as rig:
        await _owe_quiet(rig)
        loop = asyncio.get_running_loop()
        moments: list[float] = []

        async def hang(_client: ModbusBaseClient) -> None:
            moments.append(loop.time())
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                moments.append(loop.time())  # ignored: the hang
            try:
                await asyncio.Event().wait()
            finally:
                moments.append(loop.time())

        asked = loop.time()
        with pytest.raises(DeviceTimeout) as caught:
            await rig.driver.bus.request("press hang", hang)
        ended = loop.time()
        assert str(caught.value).startswith(f"press hang: no answer within {TIMEOUT:g} s")
        # The guard cancels the job as it gives up: the job ends on the loop's next turn.
        await wait_until(lambda: len(moments) == 3, 5.0, "the job cancelled twice")
        began, deadline, guard = moments
        assert began - asked >= 0.75 * QUIET  # started after the quiet
        assert deadline - began >= 0.75 * LIMITS.worst_case  # its whole budget after the quiet
        # Then the guard. In order, not by their spacing: a loop stalled on a loaded machine
        # may run both cancellations in one late turn.
        assert began < deadline < guard
        assert ended - asked <= with_room(2 * LIMITS.worst_case + 2 * MARGIN)
        # The bus is free: the next read is answered (slowly, as the device now is).
        assert [r.value for r in await rig.driver.read([REGISTERS[2]])] == [1002]
