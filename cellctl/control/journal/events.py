"""The journal rows of controller events, and the bodies of the rows the recorder writes itself
(batch start, intents and confirmations around a recipe's writes, operator commands).

Bodies are plain dicts; `canonical_json` turns them into the stored text (enums by value,
non-finite floats spelled out).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cellctl.control import events as ev
from cellctl.control.journal.rows import Kind
from drivers.base import Value

Body = dict[str, Any]


# Not journaled:
# - WaitProgress: one per fresh value of a wait's tags (the poll rate, tens a second): it would
#   multiply rows and commits by the poll rate while saying nothing a report needs. How the
#   wait ended is in its step_ended row; values that tripped an interlock are in the trip row.
# - StepPaused: stepping and breakpoints are a debugging aid of the live view; the pause changes
#   nothing on the cell, and what the operator then does arrives as a command or a state row.
def rows_for(event: ev.Event) -> list[tuple[str, Body]]:
    """The (kind, body) of each row that records `event`; [] for the events not journaled;
    TypeError for an event class this module does not know (a new event must be mapped)."""
    row = _row(event)
    return [] if row is None else [row]


def _row(event: ev.Event) -> tuple[str, Body] | None:
    """The one row of `event`, None when it is not journaled."""
    match event:
        case ev.WaitProgress() | ev.StepPaused():
            return None
        case ev.StateChanged():
            return Kind.STATE, {
                "source": event.source,
                "target": event.target,
                "command": event.command,
                "cause": event.cause,
                "interlock": event.interlock,
            }
        case ev.ModeChanged():
            return Kind.MODE, {"mode": event.mode}
        case ev.CommandRefused():
            refused: Body = {
                "command": event.command,
                "reason": event.reason,
                "blocked": event.blocked,
            }
            if event.user is not None:  # every refusal on record with who gave the command
                refused["operator"] = event.user
            return Kind.REFUSED, refused
        case ev.StepStarted():
            return Kind.STEP_STARTED, {
                "path": event.path,
                "step_id": event.step_id,
                "step_kind": event.kind,
                "label": event.label,
                "detail": event.detail,
                "round": event.round,
            }
        case ev.StepEnded():
            return Kind.STEP_ENDED, {
                "path": event.path,
                "step_id": event.step_id,
                "label": event.label,
                "outcome": event.outcome,
                "error": event.error,
            }
        case ev.TagWritten():
            # A confirmed write with no intent of its own: Resetting's values, a restore after
            # the safe state. The recorder brackets each recipe write (a TagWritten with a
            # path) with its own intent and confirmation rows, and passes over its TagWritten.
            return Kind.CONFIRMED, {
                "intent": None,
                "tag": event.tag,
                "value": event.value,
                "path": event.path,
                "ok": True,
                "error": None,
            }
        case ev.MethodCalled():
            return Kind.CALL, {
                "method": event.method,
                "args": event.args,
                "result": event.result,
                "path": event.path,
            }
        case ev.Tripped():
            return Kind.TRIP, {
                "interlock": event.interlock,
                "action": event.action,
                "condition": event.condition,
                "values": event.values,
                "message": event.message,
                "device": event.device,
            }
        case ev.TripCleared():
            return Kind.TRIP_CLEARED, {"interlock": event.interlock}
        case ev.SafeStateWritten():
            return Kind.SAFE_STATE, {
                "reason": event.reason,
                "ok": event.ok,
                "results": [
                    {"tag": r.tag, "value": r.value, "error": r.error} for r in event.results
                ],
            }
        case ev.PromptShown():
            return Kind.PROMPT, {"path": event.path, "step_id": event.step_id, "text": event.text}
        case ev.PromptAnswered():
            return Kind.ANSWER, {
                "path": event.path,
                "step_id": event.step_id,
                "value": event.value,
                "operator": event.operator,
            }
        case ev.UnholdAsks():  # before Notice: it is one, with fields of its own
            return Kind.NOTICE, {
                "text": event.text,
                "level": event.level,
                "path": event.path,
                "step_id": event.step_id,
                "question": event.question,
            }
        case ev.Notice():
            return Kind.NOTICE, {"text": event.text, "level": event.level}
        case ev.BatchEnded():
            return Kind.BATCH_ENDED, {
                "state": event.state,
                "duration": event.duration,
                "steps_done": event.steps_done,
                "faults": event.faults,
                "cause": event.cause,
            }
    raise TypeError(f"no journal row for the event {type(event).__name__}")


def intent_body(
    intent_id: str, tag: str, value: Value, path: str | None, step_id: str | None
) -> Body:
    """The body of an intent row: a write about to leave for the device (on disk first)."""
    return {"intent": intent_id, "tag": tag, "value": value, "path": path, "step_id": step_id}


def call_intent_body(
    intent_id: str, method: str, args: Mapping[str, Value], path: str | None, step_id: str | None
) -> Body:
    """The body of a call_intent row: a device method about to be called (on disk first)."""
    return {
        "intent": intent_id,
        "method": method,
        "args": dict(args),
        "path": path,
        "step_id": step_id,
    }


def confirmation_body(intent_id: str, ok: bool, error: str | None) -> Body:
    """The body of a confirmation row: what the device answered to the write (or call)
    `intent_id`."""
    return {"intent": intent_id, "ok": ok, "error": error}


def command_body(command: str, operator: str | None, source: str | None = None) -> Body:
    """The body of a command row: an operator command, who gave it and from where (a key on
    the live view, a signal, a client of the service)."""
    return {"command": command, "operator": operator, "source": source}


def batch_started_body(
    *,
    cell: str,
    cell_sha256: str,
    recipe: str,
    version: str | int,
    recipe_sha256: str,
    parameters: Mapping[str, Value],
    operator: str | None,
    mode: str,
) -> Body:
    """The body of a batch_started row: what was run, on which cell, by whom, in which mode."""
    return {
        "cell": cell,
        "cell_sha256": cell_sha256,
        "recipe": recipe,
        "version": version,
        "recipe_sha256": recipe_sha256,
        "parameters": dict(parameters),
        "operator": operator,
        "mode": mode,
    }
