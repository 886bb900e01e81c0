"""The live view of a batch: its model kept from events, its rendering, its plain lines, the
summary."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import ClassVar

import pytest
from rich.cells import cell_len
from rich.console import Console

from cellctl.cell import load_cell
from cellctl.cell.tags import tag_units
from cellctl.cli.views.run import (
    CAUSE_ROWS,
    FittedView,
    RunModel,
    StepStatus,
    clock,
    event_line,
    render,
    summary_lines,
)
from cellctl.control.events import (
    BatchEnded,
    CommandRefused,
    Event,
    MethodCalled,
    ModeChanged,
    Notice,
    PromptAnswered,
    PromptShown,
    SafeStateWritten,
    SafeWrite,
    StateChanged,
    StepEnded,
    StepOutcome,
    StepPaused,
    StepStarted,
    TagWritten,
    TripCleared,
    Tripped,
    WaitProgress,
)
from cellctl.control.machine import Command, Mode, State
from cellctl.recipe import LoadedRecipe, load_recipe
from cellctl.values import TagValue
from drivers.base import Quality

DEMO = Path(__file__).parent.parent / "recipes" / "demo"
T0 = float(int(time.time()) - 60)  # whole seconds: event lines show .000


def load(name: str) -> LoadedRecipe:
    return load_recipe(DEMO / f"{name}.yaml", load_cell(DEMO / "cell.yaml"))


def model_for(name: str, values: list[TagValue] | None = None) -> RunModel:
    loaded = load(name)
    return RunModel(
        loaded.recipe,
        loaded.identity,
        loaded.cell.cell,
        lambda: list(values or []),
        parameters={"force_kN": 12.0, "parts": 3, "speed_rpm": 1200},
    )


def shown(model: RunModel, width: int = 120, height: int = 40) -> str:
    stream = io.StringIO()
    Console(file=stream, width=width, force_terminal=False).print(render(model, width, height))
    return stream.getvalue()


def line_of(text: str, needle: str) -> str:
    return next(line for line in text.splitlines() if needle in line)


def started(path: str, step_id: str, kind: str, at: float, round_: int | None = None) -> Event:
    return StepStarted(
        path=path, step_id=step_id, kind=kind, label=f"step {step_id!r}", round=round_, at=at
    )


def ended(path: str, step_id: str, outcome: StepOutcome, at: float, error: str = "") -> Event:
    return StepEnded(
        path=path,
        step_id=step_id,
        label=f"step {step_id!r}",
        outcome=outcome,
        error=error or None,
        at=at,
    )


CURTAIN_TRIP = Tripped(
    interlock="light-curtain",
    action="hold",
    condition="not safety.light_curtain_ok",
    values={"safety.light_curtain_ok": False},
    message="someone reached into the cell",
    at=T0 + 6,
)

SAFE_FAILED = SafeStateWritten(
    reason="trip light-curtain",
    results=(
        SafeWrite("conveyor.run", False),
        SafeWrite("press.cycle_start", False, "press coil:0: timeout after 0.5 s"),
    ),
    at=T0 + 6.1,
)


def into_second_round(model: RunModel) -> None:
    """Idle -> Execute, the first round of `cycle` done, the second waiting for a part."""
    events: list[Event] = [
        ModeChanged(mode=Mode.MAINTENANCE, at=T0),
        StateChanged(source=State.IDLE, target=State.STARTING, command=Command.START, at=T0),
        StateChanged(source=State.STARTING, target=State.EXECUTE, command=None, at=T0 + 0.5),
        started("1", "start-conveyor", "set", T0 + 0.6),
        TagWritten(tag="conveyor.run", value=True, path="1", at=T0 + 0.7),
        ended("1", "start-conveyor", StepOutcome.DONE, T0 + 0.7),
        started("2", "cycle", "repeat", T0 + 0.8),
    ]
    body = ["wait-part", "pick", "picked", "place", "placed", "press", "release"]
    for number, step_id in enumerate(body, 1):
        events.append(started(f"2.{number}", step_id, "wait", T0 + 1, round_=1))
        events.append(ended(f"2.{number}", step_id, StepOutcome.DONE, T0 + 2))
    events.append(started("2.1", "wait-part", "wait", T0 + 3, round_=2))
    events.append(
        WaitProgress(
            path="2.1",
            step_id="wait-part",
            condition="conveyor.part_at_station",
            values={"conveyor.part_at_station": False},
            met=False,
            deadline=T0 + 60.5 + 9,  # 9 s left at the test's clock
            at=T0 + 3.1,
        )
    )
    for event in events:
        model.apply(event)


def test_the_tag_table_shows_the_units_the_cell_gives() -> None:
    now = time.time()
    values = [
        TagValue("robot.position", "robot", 12.5, Quality.GOOD, now),
        TagValue("conveyor.run", "conveyor", True, Quality.GOOD, now),
    ]
    loaded = load("press-fit")
    units = tag_units(loaded.cell)
    model = RunModel(loaded.recipe, loaded.identity, "demo", lambda: values, units=units)
    text = shown(model)
    assert re.search(r"┃ tag +┃ device +┃ +value ┃ unit +┃ quality", text), text
    assert re.search(r"│ robot\.position │ robot +│ +12\.5 │ mm +│ good", text), text
    assert re.search(r"│ conveyor\.run +│ conveyor │ +true │ +│ good", text), text


def test_the_view_shows_state_mode_current_step_round_and_wait_values() -> None:
    values = [TagValue("conveyor.run", "conveyor", True, Quality.GOOD, time.time())]
    model = model_for("press-fit", values)
    into_second_round(model)
    model.clock = lambda: T0 + 60.5  # 60 s after Execute was entered at T0 + 0.5
    model.hint = "Ctrl-C hold · u unhold · a abort"
    text = shown(model)

    assert "demo · press-fit v4 sha256:" in text
    assert "state Execute" in text and "mode Maintenance" in text
    assert "elapsed 60.0 s" in text
    assert "force_kN=12.0" in text and "parts=3" in text
    assert "cycle (round 2/3)" in text
    # The current step has the running mark; the body's marks started over for round 2.
    assert "▶ 2.1 wait-part" in line_of(text, "2.1 wait-part")
    assert "· 2.2 pick" in line_of(text, "2.2 pick")
    assert "✓ 1 start-conveyor done" in line_of(text, "1 start-conveyor")
    assert model.status["2.2"] is StepStatus.PENDING
    assert model.current == ["2", "2.1"]
    # The active wait: its condition, its tag with the current value, the time left.
    wait = line_of(text, "wait 2.1 wait-part")
    assert "conveyor.part_at_station" in wait
    assert "(9.0 s left)" in wait
    assert "conveyor.part_at_station = false" in text
    # The tags table, the last events and the hint.
    assert "│ conveyor.run │ conveyor │  true │ good" in text
    assert "step 2.1 wait-part started (round 2)" in text
    assert text.rstrip().endswith("Ctrl-C hold · u unhold · a abort")


def test_a_trip_shows_its_interlock_and_values_and_a_failed_safe_state() -> None:
    model = model_for("press-fit")
    into_second_round(model)
    for event in (
        CURTAIN_TRIP,
        SAFE_FAILED,
        ended("2.1", "wait-part", StepOutcome.INTERRUPTED, T0 + 6.2),
        StateChanged(source=State.EXECUTE, target=State.HOLDING, command=None, at=T0 + 6.2),
        StateChanged(source=State.HOLDING, target=State.HELD, command=None, at=T0 + 6.3),
    ):
        model.apply(event)
    text = shown(model)

    assert "state Held" in text
    assert "TRIP light-curtain: not safety.light_curtain_ok -> hold" in text
    assert "safety.light_curtain_ok = false" in text
    assert "someone reached into the cell" in text
    assert "safe state (trip light-curtain) FAILED" in text
    assert "press.cycle_start = false FAILED: press coil:0: timeout after 0.5 s" in text
    assert "‖ 2.1 wait-part interrupted" in text
    assert "wait 2.1" not in text  # an interrupted wait is no longer active

    model.apply(TripCleared(interlock="light-curtain", at=T0 + 7))
    assert "someone reached into the cell" not in shown(model)
    assert model.trips == {}


def test_markup_in_texts_and_values_is_shown_as_text() -> None:
    model = model_for("press-fit")
    model.apply(Notice(text="lot [/x] [bold]LOT-7", at=T0))
    model.apply(
        WaitProgress(
            path="2.1",
            step_id="wait-part",
            condition="conveyor.part_at_station",
            values={"batch.name": "[red]x"},
            met=False,
            at=T0,
        )
    )
    text = shown(model)
    assert "lot [/x] [bold]LOT-7" in text
    assert "batch.name = [red]x" in text


def test_a_step_pause_shows_its_preview_and_choices() -> None:
    model = model_for("press-fit")
    into_second_round(model)
    model.apply(ended("2.1", "wait-part", StepOutcome.DONE, T0 + 4))
    pause = StepPaused(
        path="2.2",
        step_id="pick",
        label="step 'pick'",
        preview=("call robot.pick(slot=1)",),
        breakpoint=True,
        at=T0 + 4,
    )
    model.apply(pause)
    text = shown(model)
    assert "⏸ 2.2 pick paused" in text
    assert "paused before step 2.2 pick (breakpoint)" in text
    assert "call robot.pick(slot=1)" in text
    assert "Enter run · s skip · c continue · a abort" in text

    model.apply(started("2.2", "pick", "call", T0 + 5, round_=2))
    assert model.pause is None
    assert "Enter run" not in shown(model)


def test_a_prompt_takes_its_answer_spec_from_the_recipe_and_shows_what_is_typed() -> None:
    model = model_for("changeover")
    model.apply(PromptShown(path="3", step_id="swap-tool", text="Swap the press tool", at=T0))
    assert model.prompt is not None and model.prompt.answer is not None
    model.typed = "B[7"
    model.prompt_error = "'X': is not one of 'A12'"
    text = shown(model)
    assert "prompt swap-tool: Swap the press tool" in text
    assert "answer fitted_tool: one of 'A12', 'B7', 'C3'" in text
    assert "> B[7" in text and "'X': is not one of 'A12'" in text

    model.apply(PromptAnswered(path="3", step_id="swap-tool", value="B7", at=T0 + 1))
    assert model.prompt is None and model.typed == ""


def test_parallel_branches_are_nodes_of_their_own() -> None:
    model = model_for("changeover")
    model.apply(started("2.1.1", "robot-home", "call", T0))
    model.apply(started("2.2.1", "press-release", "set", T0))
    text = shown(model)
    assert "branch 1" in text and "branch 3" in text
    assert "▶ 2.1.1 robot-home" in text and "▶ 2.2.1 press-release" in text
    assert model.current == ["2.1.1", "2.2.1"]


def test_event_lines_name_what_happened() -> None:
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.250", clock(T0 + 0.25))
    assert clock(T0 + 6.1).endswith(".100") and clock(T0 + 0.9996).endswith(".000")

    def line(event: Event) -> str | None:
        text = event_line(event)
        assert text is None or text.startswith(clock(event.at) + " ")
        return None if text is None else text.split(" ", 1)[1]

    assert (
        line(StateChanged(source=State.IDLE, target=State.STARTING, command=Command.START))
        == "state Idle -> Starting (Start)"
    )
    assert (
        line(StateChanged(source=State.EXECUTE, target=State.HOLDING, command=None, cause="x"))
        == "state Execute -> Holding: x"
    )
    assert line(ModeChanged(mode=Mode.MAINTENANCE)) == "mode Maintenance"
    assert (
        line(CommandRefused(command=Command.UNHOLD, reason="light-curtain is tripped"))
        == "Unhold refused: light-curtain is tripped"
    )
    assert (
        line(
            StepStarted(
                path="2.1",
                step_id="wait-part",
                kind="wait",
                label="step 'wait-part'",
                detail="until conveyor.part_at_station",
            )
        )
        == "step 2.1 wait-part started: until conveyor.part_at_station"
    )
    assert line(ended("2.1", "wait-part", StepOutcome.DONE, T0)) == "step 2.1 wait-part done"
    assert (
        line(ended("2.6", "press", StepOutcome.FAILED, T0, "timeout after 5 s"))
        == "step 2.6 press failed: timeout after 5 s"
    )

    def progress(met: bool) -> WaitProgress:
        return WaitProgress(
            path="2.1",
            step_id="wait-part",
            condition="conveyor.part_at_station",
            values={"conveyor.part_at_station": met},
            met=met,
        )

    assert line(progress(False)) is None
    assert line(progress(True)) == (
        "step 2.1 wait-part met: conveyor.part_at_station (conveyor.part_at_station = true)"
    )
    assert line(TagWritten(tag="conveyor.run", value=True, path="1")) == "wrote conveyor.run = true"
    assert (
        line(MethodCalled(method="robot.pick", args={"slot": 1}, result=True, path="2.2"))
        == "called robot.pick(slot=1) -> true"
    )
    assert line(CURTAIN_TRIP) == (
        "TRIP light-curtain: not safety.light_curtain_ok (safety.light_curtain_ok = false) -> hold"
    )
    assert line(TripCleared(interlock="light-curtain")) == "trip cleared: light-curtain"
    assert line(SAFE_FAILED) == (
        "safe state (trip light-curtain): conveyor.run = false ok, press.cycle_start = false "
        "FAILED: press coil:0: timeout after 0.5 s"
    )
    assert line(PromptShown(path="3", step_id="swap-tool", text="Swap")) == "prompt swap-tool: Swap"
    assert (
        line(PromptAnswered(path="3", step_id="swap-tool", value="B7", operator="kim"))
        == "prompt swap-tool = B7 (by kim)"
    )
    assert (
        line(PromptAnswered(path="4", step_id="wrong-tool", value=None))
        == "prompt wrong-tool acknowledged"
    )
    assert (
        line(
            StepPaused(
                path="2.2",
                step_id="pick",
                label="step 'pick'",
                preview=("call robot.pick(slot=1)",),
                breakpoint=False,
            )
        )
        == "paused before step 2.2 pick (stepping): call robot.pick(slot=1)"
    )
    assert line(Notice(text="robot: connected")) == "robot: connected"
    assert line(Notice(text="press: lost", level="error")) == "error: press: lost"
    assert (
        line(
            BatchEnded(
                state=State.HELD, duration=6.25, steps_done=8, faults=(), cause="light-curtain"
            )
        )
        == "batch ended Held after 6.2 s: light-curtain"
    )


def run_with_faults() -> tuple[RunModel, BatchEnded]:
    model = model_for("press-fit")
    into_second_round(model)
    for event in (
        ended("2.1", "wait-part", StepOutcome.FAILED, T0 + 4, "timeout after 10 s"),
        CURTAIN_TRIP,
        CommandRefused(
            command=Command.UNHOLD, reason="interlock light-curtain is tripped", blocked=True
        ),
        CommandRefused(command=Command.START, reason="Start is not legal in Held"),
    ):
        model.apply(event)
    end = BatchEnded(
        state=State.ABORTED,
        duration=12.44,
        steps_done=8,
        faults=("comm-loss:press",),
        cause="aborted by the operator",
    )
    model.apply(end)
    return model, end


def test_summary_counts_steps_and_names_every_fault() -> None:
    model, end = run_with_faults()
    lines = summary_lines(model, end)
    assert lines[:3] == [
        "outcome: Aborted",
        "duration: 12.4 s",
        "steps: 8 done, 0 skipped, 1 failed",
    ]
    # The controller's faults are the batch record's: the summary repeats them as they are.
    assert lines[3:] == ["faults: 1", "  comm-loss:press", "cause: aborted by the operator"]
    assert model.elapsed() == pytest.approx(12.44)
    assert model.current == [] and model.waits == {}


def test_summary_of_a_clean_batch() -> None:
    model = model_for("press-fit")
    model.apply(started("1", "start-conveyor", "set", T0))
    model.apply(ended("1", "start-conveyor", StepOutcome.DONE, T0 + 1))
    model.apply(ended("2", "cycle", StepOutcome.DONE, T0 + 1))  # a block is not counted
    model.apply(ended("3", "stop-conveyor", StepOutcome.SKIPPED, T0 + 2))
    end = BatchEnded(state=State.COMPLETE, duration=2.0, steps_done=1, faults=())
    assert summary_lines(model, end) == [
        "outcome: Complete",
        "duration: 2.0 s",
        "steps: 1 done, 1 skipped, 0 failed",
        "faults: none",
    ]


# -- the view fits the screen -------------------------------------------------------------------

LONG_VALUE = "lot " + "0123456789" * 20 + " end-of-value"


def big_model(tmp_path: Path, steps: int = 40, tags: int = 60) -> RunModel:
    """A long recipe (one prompt among many delays), many tags, long values, a full event log."""
    lines = ["recipe: long-line", "version: 1", "steps:"]
    for number in range(1, steps + 1):
        lines.append(f"  - {{id: station-{number:02d}-dwell, delay: 10ms}}")
    lines.append(
        "  - {id: ask-lot, prompt: 'Scan the lot label of the pallet now on the conveyor, check "
        "that it matches the work order, and type the lot number printed under the barcode "
        "(the long one) before the press starts', answer: {name: lot, type: int, min: 1, "
        "max: 999999}}"
    )
    path = tmp_path / "long-line.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    loaded = load_recipe(path, load_cell(DEMO / "cell.yaml"))
    values = [
        TagValue(f"line.station_{n:02d}.sensor", "conveyor", n, Quality.GOOD, time.time())
        for n in range(tags - 1)
    ]
    values.append(TagValue("line.label", "conveyor", LONG_VALUE, Quality.GOOD, time.time()))
    model = RunModel(
        loaded.recipe,
        loaded.identity,
        loaded.cell.cell,
        lambda: values,
        parameters={"lot_note": LONG_VALUE},
    )
    model.apply(StateChanged(source=State.IDLE, target=State.EXECUTE, command=None, at=T0))
    for number in range(1, 25):
        step_id = f"station-{number:02d}-dwell"
        model.apply(started(str(number), step_id, "delay", T0 + number))
        model.apply(ended(str(number), step_id, StepOutcome.DONE, T0 + number))
    model.apply(Notice(text=f"label read: {LONG_VALUE}", at=T0 + 25))
    model.hint = "Ctrl-C or h hold · p suspend · Ctrl-C twice abort"
    return model


def screen(model: RunModel, width: int, height: int) -> list[str]:
    """The rows of the live view as a terminal of that size shows it (as the CLI's console)."""
    stream = io.StringIO()
    console = Console(file=stream, width=width, height=height, soft_wrap=True, force_terminal=False)
    console.print(FittedView(model))
    rows = stream.getvalue().rstrip("\n").split("\n")
    assert len(rows) <= height, "\n".join(rows)
    assert all(cell_len(row) <= width for row in rows), "\n".join(rows)
    return rows


def test_at_80x24_a_pause_its_keys_and_the_running_steps_window_stay_on_screen(
    tmp_path: Path,
) -> None:
    model = big_model(tmp_path)
    model.apply(
        StepPaused(
            path="25",
            step_id="station-25-dwell",
            label="step 'station-25-dwell'",
            preview=("delay 10ms", "then station 26", "then station 27"),
            breakpoint=False,
            at=T0 + 26,
        )
    )
    rows = screen(model, 80, 24)
    text = "\n".join(rows)
    assert "paused before step 25 station-25-dwell (stepping)" in text
    assert "Enter run · s skip · c continue · a abort" in text
    assert rows[-1] == "Ctrl-C or h hold · p suspend · Ctrl-C twice abort"
    # The step tree gave up room last: a window around the paused step, the rest counted.
    assert "⏸ 25 station-25-dwell paused" in text
    assert "24 station-24-dwell done" in text and "26 station-26-dwell" in text
    assert re.search(r"⋮ \d+ more above", text) and re.search(r"⋮ \d+ more below", text)
    # Tags and events gave up theirs first.
    assert "line.station_00.sensor" not in text and "label read" not in text


def test_at_80x24_a_long_prompt_wraps_whole_and_its_answer_line_shows(tmp_path: Path) -> None:
    model = big_model(tmp_path)
    model.apply(PromptShown(path="41", step_id="ask-lot", text=model.steps["41"].prompt, at=T0))
    model.typed = "12"
    rows = screen(model, 80, 24)
    text = "\n".join(rows)
    # The question's rows, from its first to the answer line: the whole text, no word cut.
    first = next(n for n, row in enumerate(rows) if row.startswith("prompt ask-lot: "))
    answer = rows.index("  answer lot: a whole number in 1..999999")
    assert answer - first >= 3  # wrapped over several rows of 80 columns
    question = " ".join(row.strip() for row in rows[first:answer])
    assert model.prompt is not None
    assert question == f"prompt ask-lot: {model.prompt.text}"
    assert "> 12▌  (Enter to answer)" in text
    assert rows[-1].startswith("Ctrl-C or h hold")


def test_at_80x24_the_cause_of_a_hold_and_a_trip_stay_on_screen(tmp_path: Path) -> None:
    model = big_model(tmp_path)
    for event in (
        StateChanged(
            source=State.EXECUTE,
            target=State.HOLDING,
            command=Command.HOLD,
            cause="the operator (Ctrl-C)",
            at=T0 + 30,
        ),
        StateChanged(source=State.HOLDING, target=State.HELD, command=None, at=T0 + 31),
    ):
        model.apply(event)
    model.hint = "u unhold · a abort"
    rows = screen(model, 80, 24)
    assert "cause of the hold: the operator (Ctrl-C)" in [row.rstrip() for row in rows]
    assert rows[-1] == "u unhold · a abort"
    assert "state Held" in "\n".join(rows)

    model.apply(CURTAIN_TRIP)
    model.apply(SAFE_FAILED)
    text = "\n".join(screen(model, 80, 24))
    assert "TRIP light-curtain: not safety.light_curtain_ok -> hold" in text
    assert "someone reached into the cell" in text
    assert "press.cycle_start = false FAILED: press coil:0: timeout after 0.5 s" in text

    # Running again: the cause is gone.
    model.apply(StateChanged(source=State.UNHOLDING, target=State.EXECUTE, command=None))
    assert "cause of the hold" not in "\n".join(screen(model, 80, 24))


def test_long_values_end_in_an_ellipsis_and_tags_give_up_room_first(tmp_path: Path) -> None:
    model = big_model(tmp_path, steps=3)
    for number in range(1, 4):
        model.apply(ended(str(number), f"station-{number:02d}-dwell", StepOutcome.DONE, T0))
    rows = screen(model, 80, 24)
    text = "\n".join(rows)
    # The short tree and the events fit; the tag table takes what is left, then "… N more".
    assert "3 station-03-dwell done" in text and "label read" in text
    shown_tags = [row for row in rows if "line.station_" in row]
    more = re.search(r"… (\d+) more", text)
    assert shown_tags and more is not None
    assert len(shown_tags) + int(more.group(1)) == 60
    assert any(row.rstrip().endswith("…") for row in rows if "label read" in row)
    assert any(row.rstrip().endswith("…") for row in rows if row.startswith("parameters"))
    # On a taller screen the table shows more of them.
    assert len([row for row in screen(model, 120, 40) if "line.station_" in row]) > len(shown_tags)


def test_a_screen_too_small_for_everything_keeps_the_keys(tmp_path: Path) -> None:
    model = big_model(tmp_path)
    model.apply(
        StepPaused(
            path="25",
            step_id="station-25-dwell",
            label="",
            preview=("delay 10ms",),
            breakpoint=True,
            at=T0,
        )
    )
    rows = screen(model, 60, 3)
    assert rows[-2:] == ["Enter run · s skip · c continue · a abort", rows[-1]]
    assert rows[-1].startswith("Ctrl-C or h hold")


def flowing(rows: list[str]) -> str:
    """The rows as one line of words: a text wrapped over rows reads whole in it."""
    return " ".join(" ".join(rows).split())


def held(model: RunModel, cause: str) -> None:
    """Execute -> Holding (Hold, with `cause`) -> Held, the Held keys as the hint."""
    model.apply(
        StateChanged(source=State.EXECUTE, target=State.HOLDING, command=Command.HOLD, cause=cause)
    )
    model.apply(StateChanged(source=State.HOLDING, target=State.HELD, command=None))
    model.hint = "u unhold · a abort"


#: A condition written over lines in YAML (`when: |`): its line breaks are in the text.
FOLDED = "not safety.light_curtain_ok\nor conveyor.fault\n"
#: The message of the demo's light-curtain trip, as cellctl.control.interlocks words it (100 chars).
CURTAIN_MESSAGE = (
    "interlock light-curtain tripped (not safety.light_curtain_ok; "
    "safety.light_curtain_ok = false): hold"
)


def test_at_80x24_a_text_written_over_lines_takes_one_row(tmp_path: Path) -> None:
    model = big_model(tmp_path, steps=3)
    # A `wait: |` condition (its last line break included) on a running step.
    model.apply(started("3", "station-03-dwell", "wait", T0 + 26))
    model.apply(
        WaitProgress(
            path="3",
            step_id="station-03-dwell",
            condition="press.cycle_done\nand press.force_kN >= 11.4\n",
            values={"press.cycle_done": False},
            met=False,
            at=T0 + 26,
        )
    )
    # A trip of an interlock whose condition is written over lines, and its message.
    message = f"interlock curtain tripped ({FOLDED}; safety.light_curtain_ok = false): hold"
    model.apply(
        Tripped(
            interlock="curtain",
            action="hold",
            condition=FOLDED,
            values={"safety.light_curtain_ok": False},
            message=message,
            at=T0 + 27,
        )
    )
    held(model, message)
    rows = screen(model, 80, 24)
    # Each of those is one row (or wraps, counted): nothing the operator needs is pushed off.
    assert rows[1].startswith("state Held"), "\n".join(rows)
    assert rows[-1] == "u unhold · a abort"
    shown = [" ".join(row.split()) for row in rows]
    assert "wait 3 station-03-dwell: press.cycle_done and press.force_kN >= 11.4" in shown
    assert "TRIP curtain: not safety.light_curtain_ok or conveyor.fault -> hold" in shown
    assert " ".join(message.split()) in flowing(rows)
    assert len(rows) == 24  # the room left is used: the rows were counted right


def test_at_80x24_a_long_cause_and_the_demo_trip_message_show_whole(tmp_path: Path) -> None:
    model = big_model(tmp_path)
    cause = (
        "the operator (Ctrl-C): the conveyor belt squeaks at station 4 and the guard door "
        "of the press does not latch; maintenance was called, ticket 4711"
    )
    assert len(cause) > 140
    held(model, cause)
    rows = screen(model, 80, 24)
    assert f"cause of the hold: {cause}" in flowing(rows)
    assert rows[-1] == "u unhold · a abort"

    # The demo's light-curtain trip: the value that tripped it and the action are on screen.
    model.apply(
        Tripped(
            interlock="light-curtain",
            action="hold",
            condition="not safety.light_curtain_ok",
            values={"safety.light_curtain_ok": False},
            message=CURTAIN_MESSAGE,
        )
    )
    held(model, CURTAIN_MESSAGE)
    rows = screen(model, 80, 24)
    assert CURTAIN_MESSAGE in flowing(rows)
    assert rows[-1] == "u unhold · a abort"

    # A cause longer than its rows ends in an ellipsis, the keys still at the bottom.
    model.trips.clear()
    held(model, "the operator: " + "far too much to say " * 40)
    rows = screen(model, 80, 24)
    cause_rows = [n for n, row in enumerate(rows) if row.startswith("cause of the hold: ")]
    assert cause_rows
    last = rows[cause_rows[0] + CAUSE_ROWS - 1]
    assert last.startswith("  ") and last.rstrip().endswith(" …")
    assert rows[-1] == "u unhold · a abort"


class CountedValue(TagValue):
    """A tag value that counts the table rows made of it (the table reads `age` once a row)."""

    made: ClassVar[list[str]] = []

    @property
    def age(self) -> float:
        """Counted, and always fresh."""
        CountedValue.made.append(self.tag)
        return 0.0


def test_the_tag_table_is_not_made_of_every_tag_to_fit_a_few(tmp_path: Path) -> None:
    model = big_model(tmp_path, steps=3)
    values = [
        CountedValue(f"line.station_{n:03d}.sensor", "conveyor", n, Quality.GOOD, time.time())
        for n in range(300)
    ]
    model.tag_values = lambda: list(values)
    CountedValue.made.clear()
    rows = screen(model, 80, 24)
    shown = [row for row in rows if "line.station_" in row]
    more = re.search(r"… (\d+) more", "\n".join(rows))
    assert shown and more is not None and len(shown) + int(more.group(1)) == 300
    # Only what can fit is made into rows: at most two tries of a screenful, never 300 rows.
    assert len(CountedValue.made) <= 2 * 24, len(CountedValue.made)


def test_a_cause_is_hidden_only_while_the_trip_that_took_it_stands(tmp_path: Path) -> None:
    model = big_model(tmp_path)
    model.apply(CURTAIN_TRIP)
    model.apply(
        StateChanged(
            source=State.EXECUTE,
            target=State.HOLDING,
            command=Command.HOLD,
            cause=CURTAIN_TRIP.message,
            interlock=CURTAIN_TRIP.interlock,
        )
    )
    text = "\n".join(screen(model, 80, 24))
    assert CURTAIN_TRIP.message in text  # said once, by the trip's own rows
    assert "cause of the hold" not in text
    # Not taken by a trip, the same words are a cause of their own.
    held(model, CURTAIN_TRIP.message)
    text = "\n".join(screen(model, 80, 24))
    assert f"cause of the hold: {CURTAIN_TRIP.message}" in text
