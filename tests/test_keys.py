"""Keys from a real pseudo-terminal, and the terminal operator driven by them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from cellctl.cell import load_cell
from cellctl.cli.keys import TerminalKeys, TerminalOperator
from cellctl.cli.views.run import RunModel
from cellctl.control.events import StepPaused
from cellctl.control.operator import PromptRequest, StepChoice
from cellctl.recipe import PromptStep, load_recipe
from cellctl.testing import wait_until

DEMO = Path(__file__).parent.parent / "recipes" / "demo"


async def keys_of(keys: TerminalKeys, count: int) -> list[str]:
    return [await asyncio.wait_for(keys.get(), 2.0) for _ in range(count)]


@pytest.fixture
def pty() -> Iterator[tuple[int, int]]:
    master, slave = os.openpty()
    yield master, slave
    for fd in (master, slave):
        with contextlib.suppress(OSError):  # the test closed it already
            os.close(fd)


@pytest.mark.asyncio
async def test_cbreak_no_echo_isig_kept_and_restored(pty: tuple[int, int]) -> None:
    _, slave = pty
    before = termios.tcgetattr(slave)
    keys = TerminalKeys(slave)
    keys.open()
    try:
        lflag = termios.tcgetattr(slave)[3]
        assert not lflag & termios.ICANON and not lflag & termios.ECHO
        assert lflag & termios.ISIG  # Ctrl-C still reaches the CLI as SIGINT
    finally:
        keys.close()
    assert termios.tcgetattr(slave) == before


@pytest.mark.asyncio
async def test_keys_arrive_one_by_one_enter_and_backspace_mapped(pty: tuple[int, int]) -> None:
    master, slave = pty
    keys = TerminalKeys(slave)
    keys.open()
    try:
        os.write(master, b"u1\r\x7f")
        assert await keys_of(keys, 4) == ["u", "1", "\n", "\x7f"]
        # Escape sequences (arrow, F5, F1) are no keys; a control character is dropped.
        os.write(master, b"\x1b[A\x04\x1b[15~\x1bOPs")
        # A character cut between two reads is decoded whole.
        os.write(master, "é".encode()[:1])
        os.write(master, "é".encode()[1:] + b"a")
        assert await keys_of(keys, 3) == ["s", "é", "a"]
    finally:
        keys.close()


@pytest.mark.asyncio
async def test_end_of_input_gives_empty_keys(pty: tuple[int, int]) -> None:
    master, slave = pty
    keys = TerminalKeys(slave)
    keys.open()
    try:
        os.write(master, b"a")
        assert await keys_of(keys, 1) == ["a"]
        os.close(master)  # the terminal is gone: the slave reads EIO
        assert await keys_of(keys, 2) == ["", ""]
    finally:
        keys.close()


@pytest.mark.asyncio
async def test_open_on_a_pipe_fails_and_leaves_nothing_behind() -> None:
    read_end, write_end = os.pipe()
    try:
        keys = TerminalKeys(read_end)
        with pytest.raises(termios.error):
            keys.open()
        keys.close()  # harmless after a failed open
    finally:
        os.close(read_end)
        os.close(write_end)


# ---------------------------------------------------------------------------------------------
# The operator


@pytest_asyncio.fixture
async def operator() -> TerminalOperator:
    loaded = load_recipe(DEMO / "changeover.yaml", load_cell(DEMO / "cell.yaml"))
    model = RunModel(loaded.recipe, loaded.identity, "demo", list)
    return TerminalOperator(model, "kim")


def swap_tool(operator: TerminalOperator) -> PromptRequest:
    step = operator.model.steps["3"]
    assert isinstance(step, PromptStep)
    return PromptRequest("3", "swap-tool", step.prompt, step.answer)


def feed(operator: TerminalOperator, text: str) -> None:
    for key in text:
        operator.feed(key)


@pytest.mark.asyncio
async def test_a_typed_answer_is_edited_checked_and_asked_again(
    operator: TerminalOperator,
) -> None:
    model = operator.model
    operator.feed("x")  # nothing waits: dropped
    task = asyncio.create_task(operator.answer(swap_tool(operator)))
    await wait_until(lambda: operator.waiting)
    assert model.prompt is not None and model.prompt.step_id == "swap-tool"

    feed(operator, "B8\x7f")
    await wait_until(lambda: model.typed == "B")
    feed(operator, "X\n")
    await wait_until(lambda: model.prompt_error != "")
    assert "'BX'" in model.prompt_error and "one of 'A12', 'B7', 'C3'" in model.prompt_error
    assert model.typed == "" and not task.done()

    feed(operator, "B7\n")
    assert await asyncio.wait_for(task, 2.0) == "B7"
    assert not operator.waiting
    assert model.prompt is None and model.typed == "" and model.prompt_error == ""


@pytest.mark.asyncio
async def test_a_plain_prompt_is_acknowledged_with_enter(operator: TerminalOperator) -> None:
    request = PromptRequest("4", "wrong-tool", "Fit the right tool", None)
    task = asyncio.create_task(operator.answer(request))
    await wait_until(lambda: operator.waiting)
    feed(operator, "ok\n")
    assert await asyncio.wait_for(task, 2.0) is None


@pytest.mark.asyncio
async def test_a_cancelled_prompt_leaves_nothing_behind(operator: TerminalOperator) -> None:
    model = operator.model
    task = asyncio.create_task(operator.answer(swap_tool(operator)))
    await wait_until(lambda: operator.waiting)
    feed(operator, "A1")
    await wait_until(lambda: model.typed == "A1")
    task.cancel()  # a hold
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not operator.waiting
    assert model.prompt is None and model.typed == ""


PAUSE = StepPaused(
    path="1",
    step_id="stop-conveyor",
    label="step 'stop-conveyor'",
    preview=("conveyor.run := false",),
    breakpoint=False,
)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("keys", "choice"),
    [
        ("\n", StepChoice.RUN),
        ("xs", StepChoice.SKIP),
        ("\x7fc", StepChoice.CONTINUE),
        ("Ua", StepChoice.ABORT),
    ],
)
async def test_a_step_pause_takes_one_choice(
    operator: TerminalOperator, keys: str, choice: StepChoice
) -> None:
    task = asyncio.create_task(operator.confirm_step(PAUSE))
    await wait_until(lambda: operator.waiting)
    assert operator.model.pause == PAUSE
    feed(operator, keys)
    assert await asyncio.wait_for(task, 2.0) is choice
    assert not operator.waiting and operator.model.pause is None


@pytest.mark.asyncio
async def test_other_keys_do_not_decide_a_step(operator: TerminalOperator) -> None:
    task = asyncio.create_task(operator.confirm_step(PAUSE))
    await wait_until(lambda: operator.waiting)
    feed(operator, "xyz ")
    await wait_until(lambda: operator._keys is not None and operator._keys.empty())
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not operator.waiting and operator.model.pause is None
