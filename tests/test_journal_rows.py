"""The journal's row format: canonical JSON, the documented row hash, and the rows of each
controller event."""

from __future__ import annotations

import enum
import hashlib
import inspect
import json

import pytest

from cellctl.control import events as ev
from cellctl.control.journal.events import (
    batch_started_body,
    confirmation_body,
    intent_body,
    rows_for,
)
from cellctl.control.journal.rows import (
    GENESIS,
    Kind,
    canonical_json,
    format_at,
    row_hash,
    row_mac,
)
from cellctl.control.packml import Command, Mode, State


class Colour(enum.Enum):
    RED = "red"


def test_canonical_json_is_one_text_whatever_the_order() -> None:
    one = canonical_json({"b": [1, 2.5, None], "a": {"y": True, "x": "é"}})
    other = canonical_json({"a": {"x": "é", "y": True}, "b": (1, 2.5, None)})
    assert one == other == '{"a":{"x":"é","y":true},"b":[1,2.5,null]}'


def test_canonical_json_spells_out_non_finite_floats_and_enums() -> None:
    text = canonical_json(
        {"n": float("nan"), "i": float("inf"), "m": -float("inf"), "c": Colour.RED}
    )
    assert json.loads(text) == {
        "n": {"float": "nan"},
        "i": {"float": "inf"},
        "m": {"float": "-inf"},
        "c": "red",
    }


@pytest.mark.parametrize("bad", [{"x": object()}, {"x": {1, 2}}, {1: "key"}, {"x": b"bytes"}])
def test_canonical_json_refuses_what_json_cannot_hold(bad: object) -> None:
    with pytest.raises(TypeError):
        canonical_json(bad)


def test_row_hash_is_sha256_of_the_documented_lines() -> None:
    body = canonical_json({"text": 'a "quoted"\nline'})
    at = "2026-12-06T13:45:01.123456Z"
    text = f"cellctl-journal-v1\n{GENESIS}\n1\n=B-1\n{at}\nnotice\n{body}"
    assert row_hash(GENESIS, 1, "B-1", at, "notice", body) == (
        hashlib.sha256(text.encode()).hexdigest()
    )
    # A row of no batch is '-', which no batch id can spell ('=' comes first).
    no_batch = f"cellctl-journal-v1\n{GENESIS}\n1\n-\n{at}\nnotice\n{body}"
    assert row_hash(GENESIS, 1, None, at, "notice", body) == (
        hashlib.sha256(no_batch.encode()).hexdigest()
    )
    # Stable across versions: a journal written today verifies tomorrow.
    assert row_hash(GENESIS, 1, "B-1", at, "notice", '{"a":1}') == (
        "82aa6d1aed66048bb42cb91b0e175edcfa2da9ea05707601ed5b27a5bd6b67b7"
    )


def test_every_field_changes_the_hash() -> None:
    at = "2026-12-06T13:45:01.123456Z"
    base = (GENESIS, 1, "B-1", at, "notice", "{}")
    variants = [
        ("1" * 64, 1, "B-1", at, "notice", "{}"),
        (GENESIS, 2, "B-1", at, "notice", "{}"),
        (GENESIS, 1, "B-2", at, "notice", "{}"),
        (GENESIS, 1, None, at, "notice", "{}"),
        (GENESIS, 1, "B-1", "2026-12-06T13:45:01.123457Z", "notice", "{}"),
        (GENESIS, 1, "B-1", at, "state", "{}"),
        (GENESIS, 1, "B-1", at, "notice", '{"a":1}'),
    ]
    hashes = {row_hash(*base), *(row_hash(*v) for v in variants)}
    assert len(hashes) == 1 + len(variants)


def test_mac_depends_on_the_key() -> None:
    hash_ = row_hash(GENESIS, 1, None, "2026-12-06T13:45:01.123456Z", "write", "{}")
    assert row_mac(b"one", hash_) != row_mac(b"two", hash_)
    assert len(row_mac(b"one", hash_)) == 64


def test_time_stamp_is_utc_with_microseconds() -> None:
    assert format_at(0.5) == "1970-01-01T00:00:00.500000Z"


def _event_classes() -> list[type[ev.Event]]:
    return [
        cls
        for _, cls in inspect.getmembers(ev, inspect.isclass)
        if issubclass(cls, ev.Event) and cls not in (ev.Event, ev.StepEvent)
    ]


EXAMPLES: list[ev.Event] = [
    ev.StateChanged(
        source=State.EXECUTE, target=State.HOLDING, command=Command.HOLD, interlock="door"
    ),
    ev.ModeChanged(mode=Mode.MAINTENANCE),
    ev.CommandRefused(command=Command.START, reason="not in Idle", blocked=True),
    ev.StepStarted(path="2.1", step_id="press", kind="set", label="press", detail="x := 1"),
    ev.StepEnded(
        path="2.1", step_id="press", label="press", outcome=ev.StepOutcome.FAILED, error="timeout"
    ),
    ev.TagWritten(tag="press.force", value=float("nan")),
    ev.MethodCalled(method="robot.pick", args={"slot": 3}, result=True, path="3"),
    ev.Tripped(
        interlock="door",
        action="hold",
        condition="door.open",
        values={"door.open": True},
        message="door open",
    ),
    ev.TripCleared(interlock="door"),
    ev.SafeStateWritten(reason="trip", results=(ev.SafeWrite("a", 0), ev.SafeWrite("b", 1, "x"))),
    ev.PromptShown(path="4", step_id="ok", text="Part seated?"),
    ev.PromptAnswered(path="4", step_id="ok", value="yes", operator="ana"),
    ev.Notice(text="restored", level="warning"),
    ev.UnholdAsks(text="t", path="2", step_id="s", question="re-run s?"),
    ev.BatchEnded(state=State.COMPLETE, duration=1.5, steps_done=4, faults=("door",)),
]


def test_every_controller_event_is_journaled_or_left_out_on_purpose() -> None:
    left_out = {ev.WaitProgress, ev.StepPaused}
    assert {type(e) for e in EXAMPLES} | left_out == set(_event_classes())
    for event in EXAMPLES:
        rows = rows_for(event)
        assert len(rows) == 1
        kind, body = rows[0]
        assert kind in set(Kind)
        json.loads(canonical_json(body))  # every body can be stored


def test_event_rows_carry_what_a_report_needs() -> None:
    state = rows_for(EXAMPLES[0])[0]
    assert state[0] == Kind.STATE
    assert json.loads(canonical_json(state[1])) == {
        "source": "Execute",
        "target": "Holding",
        "command": "Hold",
        "cause": "",
        "interlock": "door",
    }
    ended = dict(rows_for(EXAMPLES[4]))[Kind.STEP_ENDED]
    assert (ended["outcome"], ended["error"], ended["path"]) == ("failed", "timeout", "2.1")
    answer = dict(rows_for(EXAMPLES[11]))[Kind.ANSWER]
    assert answer["operator"] == "ana"
    asks = dict(rows_for(EXAMPLES[13]))[Kind.NOTICE]
    assert asks["question"] == "re-run s?"
    safe = json.loads(canonical_json(dict(rows_for(EXAMPLES[9]))[Kind.SAFE_STATE]))
    assert safe["ok"] is False and safe["results"][1] == {"tag": "b", "value": 1, "error": "x"}
    progress = ev.WaitProgress(path="1", step_id=None, condition="c", values={}, met=False)
    assert rows_for(progress) == []


def test_unknown_event_is_a_bug() -> None:
    class Strange(ev.Event):
        pass

    with pytest.raises(TypeError, match="Strange"):
        rows_for(Strange())


def test_recorder_bodies() -> None:
    assert intent_body("i1", "press.force", 2.5, "2.1", "press") == {
        "intent": "i1",
        "tag": "press.force",
        "value": 2.5,
        "path": "2.1",
        "step_id": "press",
    }
    assert confirmation_body("i1", False, "timeout") == {
        "intent": "i1",
        "ok": False,
        "error": "timeout",
    }
    started = batch_started_body(
        cell="c",
        cell_sha256="a" * 64,
        recipe="r",
        version=2,
        recipe_sha256="b" * 64,
        parameters={"n": 3},
        operator="ana",
        mode=Mode.PRODUCTION,
    )
    assert json.loads(canonical_json(started))["mode"] == "Production"


def test_format_at_matches_strftime_at_every_rounding_edge() -> None:
    # format_at caches the seconds' text and rounds the microseconds itself: it must give
    # datetime's text exactly, carries and half-to-even included.
    from datetime import UTC, datetime

    whole = 1_800_000_000
    stamps = [whole + k + f for k in range(3) for f in (0.0, 0.25, 0.9999995, 0.9999996, 5e-7)]
    stamps += [whole + n * 1e-7 for n in range(-30, 30)] + [0.0, -0.5, -1.9999995, 1e-7]
    for stamp in stamps:
        expected = datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert format_at(stamp) == expected, stamp


class Shade(enum.StrEnum):
    DARK = "dark"


@pytest.mark.parametrize(
    "body",
    [
        {1: "x"},
        {"a": {None: 1}},
        {"a": [{"b": {True: 1}}]},
        {"a": object()},
        {"a": {"b": b"bytes"}},
    ],
)
def test_canonical_json_refuses_what_json_alone_would_take_or_not(body: object) -> None:
    # json.dumps turns int, None and bool keys into text: the body is refused all the same.
    with pytest.raises(TypeError):
        canonical_json(body)


def test_canonical_json_spells_enums_and_non_finite_floats_at_any_depth() -> None:
    body = {Shade.DARK: [Colour.RED, Shade.DARK, {"x": float("-inf")}], "n": (float("nan"),)}
    assert canonical_json(body) == (
        '{"dark":["red","dark",{"x":{"float":"-inf"}}],"n":[{"float":"nan"}]}'
    )
