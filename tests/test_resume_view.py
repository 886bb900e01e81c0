"""The live view of a resumed batch: the steps it passes over (done before the crash, no event
tells of them) show done, the repeat round it is in stays, its done steps count, and an end
Held says the batch stays unfinished, not that it ended."""

from __future__ import annotations

from cellctl.cli.views.run import RunModel, StepStatus
from cellctl.cli.views.summary import summary_lines
from cellctl.control.events import BatchEnded, StepStarted
from cellctl.control.machine import State
from cellctl.control.resume import ResumePoint
from tests.test_runview import line_of, model_for, shown


def resumed_in_round_2() -> tuple[RunModel, ResumePoint]:
    # Killed in step 2.3 picked, round 2 of 3: step 1 and round 1 (7 leaves), 2.1, 2.2 done.
    point = ResumePoint("B", "2.3", step_id="picked", rounds={"2": 2}, steps_done=10)
    model = model_for("press-fit")
    model.resume_from(point)
    # What the executor emits as it takes the batch up: the blocks around it, then the step.
    model.apply(StepStarted(path="2", step_id="cycle", kind="repeat", label="cycle"))
    model.apply(StepStarted(path="2.3", step_id="picked", kind="wait", label="picked", round=2))
    return model, point


def test_the_steps_passed_over_show_done_and_the_round_stays() -> None:
    model, _ = resumed_in_round_2()
    status = model.status
    assert status["1"] is StepStatus.DONE
    assert status["2.1"] is StepStatus.DONE and status["2.2"] is StepStatus.DONE
    assert status["2.3"] is StepStatus.RUNNING
    assert status["2.4"] is StepStatus.PENDING and status["3"] is StepStatus.PENDING
    assert model.rounds["2"] == 2
    assert model.counts.done == 10
    text = shown(model)
    assert "✓" in line_of(text, "start-conveyor") and "✓" in line_of(text, "pick ")
    assert "✓" not in line_of(text, "stop-conveyor")


def test_after_a_step_that_had_ended_it_shows_done_too() -> None:
    point = ResumePoint("B", "1", step_id="start-conveyor", after=True, steps_done=1)
    model = model_for("press-fit")
    model.resume_from(point)
    assert model.status["1"] is StepStatus.DONE
    assert model.status["2"] is StepStatus.PENDING and model.status["2.1"] is StepStatus.PENDING


def test_an_end_held_says_the_batch_stays_unfinished() -> None:
    model, _ = resumed_in_round_2()
    ended = BatchEnded(state=State.HELD, duration=12.5, steps_done=10, faults=(), cause="held")
    model.apply(ended)
    assert "batch stays Held, unfinished, 12.5 s since its start: held" in model.events[-1]
    assert not any("batch ended" in line for line in model.events)
    lines = summary_lines(model, ended)
    assert lines[:3] == ["outcome: Held, unfinished", "duration: 12.5 s so far", lines[2]]
    assert lines[2].startswith("steps: 10 done")
