"""The testing kit's one wait_until: it blocks a test function and is awaited in a coroutine,
with the same deadline and message either way."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from cellctl.testing import free_port, wait_until


def test_in_a_function_it_blocks_until_another_thread_makes_it_true() -> None:
    done = threading.Event()
    timer = threading.Timer(0.05, done.set)
    timer.start()
    wait_until(done.is_set, 5, "the timer")
    assert done.is_set()


def test_in_a_function_it_fails_naming_what_it_waited_for_after_the_deadline() -> None:
    start = time.monotonic()
    with pytest.raises(AssertionError, match=r"^timed out after 0\.1 s waiting for the light$"):
        wait_until(lambda: False, 0.1, "the light")
    assert time.monotonic() - start >= 0.1


@pytest.mark.asyncio
async def test_in_a_coroutine_it_lets_the_loop_make_it_true() -> None:
    done = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, done.set)
    # A wait that blocked the loop would never see the callback run: it would time out.
    await wait_until(done.is_set, 5, "the callback")
    assert done.is_set()


@pytest.mark.asyncio
async def test_in_a_coroutine_nothing_is_looked_at_before_it_is_awaited() -> None:
    looks: list[None] = []
    waiting = wait_until(lambda: bool(looks.append(None)) or len(looks) > 2, 5, "three looks")
    assert looks == []
    await waiting
    assert len(looks) == 3


@pytest.mark.asyncio
async def test_in_a_coroutine_it_fails_naming_what_it_waited_for_after_the_deadline() -> None:
    with pytest.raises(AssertionError, match=r"^timed out after 0\.1 s waiting for the condition$"):
        await wait_until(lambda: False, 0.1)


def test_a_free_port_refuses_connections() -> None:
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", free_port())) != 0
