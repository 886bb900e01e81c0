"""The per-row-kind handlers of the journal's read model (cellctl.control.journal.record):
`RecordBuilder` reads a batch's rows in order into a BatchRecord, one `on_<kind>` method per
row kind. Nothing here writes to the journal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cellctl.control.journal.record import (
    CONFIRMED,
    FAILED,
    UNFINISHED,
    UNKNOWN,
    BatchRecord,
    Call,
    Entry,
    Hold,
    Notice,
    OperatorCommand,
    Prompt,
    Refusal,
    SafeState,
    StateChange,
    Step,
    Trip,
    Write,
    parse_at,
    value_text,
)
from cellctl.control.journal.rows import JournalRow

__all__ = ["RecordBuilder"]

#: The states a hold spans, from Holding (or Held) until the cell leaves Held.
_HOLD_STATES = frozenset({"Holding", "Held"})


def _step_name(body: Mapping[str, Any]) -> str:
    path = body.get("path")
    step_id = body.get("step_id")
    if step_id:
        return f"{step_id} ({path})" if path else str(step_id)
    return f"step {path}" if path else "no step"


class RecordBuilder:
    """Reads a batch's rows in order into a BatchRecord: one `on_<kind>` handler per row kind."""

    def __init__(self, batch: str) -> None:
        self.record = BatchRecord(batch)
        self.open_steps: dict[str, Step] = {}
        self.intents: dict[str, Write] = {}
        #: Calls made and not yet answered: intent id -> 'method(args)'.
        self.call_intents: dict[str, str] = {}
        self.open_trips: dict[str, Trip] = {}
        self.hold: Hold | None = None
        self.prompts: dict[str, Prompt] = {}
        self.first: float | None = None
        self.started = False

    def entry(self, row: JournalRow, text: str, flag: str | None = None) -> None:
        at = parse_at(row.at)
        if self.first is None:
            self.first = at
        self.record.timeline.append(Entry(row.at, round(at - self.first, 6), row.kind, text, flag))

    def add(self, row: JournalRow) -> None:
        rec = self.record
        rec.rows += 1
        rec.head = row.hash
        rec.last_row_at = row.at
        if rec.start is None:
            rec.start = row.at
        body = row.data()
        if not isinstance(body, dict):  # a body the recorder never writes: shown, not read
            self.entry(row, f"{row.kind} {value_text(body)}")
            return
        handler = getattr(self, "on_" + row.kind, None)
        if handler is None:  # a kind this reader does not know (a newer writer): shown as is
            self.entry(row, f"{row.kind} {value_text(body)}")
            return
        handler(row, body)

    def on_batch_started(self, row: JournalRow, body: dict[str, Any]) -> None:
        rec = self.record
        if self.started:  # the identity is the first row's; a second one is only shown
            self.entry(row, f"batch started again: {value_text(body)}")
            return
        self.started = True
        rec.start = row.at
        rec.cell = body.get("cell")
        rec.cell_sha256 = body.get("cell_sha256")
        rec.recipe = body.get("recipe")
        rec.version = body.get("version")
        rec.recipe_sha256 = body.get("recipe_sha256")
        rec.parameters = dict(body.get("parameters") or {})
        rec.operator = body.get("operator")
        rec.mode = body.get("mode")
        rec.pid = body.get("pid")
        rec.host = body.get("host")
        rec.os_user = body.get("os_user")
        rec.cellctl_version = body.get("cellctl_version")
        rec.cell_file = body.get("cell_file")
        rec.recipe_file = body.get("recipe_file")
        sim = body.get("sim")
        rec.sim = sim if isinstance(sim, bool) else None
        who = f" by {rec.operator}" if rec.operator else ""
        self.entry(row, f"batch started: {rec.recipe} v{rec.version} on {rec.cell}{who}")

    def on_batch_ended(self, row: JournalRow, body: dict[str, Any]) -> None:
        rec = self.record
        rec.end = row.at
        rec.unfinished = False
        rec.outcome = str(body.get("state") or "ended")
        rec.duration = body.get("duration")
        rec.steps_done = body.get("steps_done")
        code = body.get("exit_code")
        rec.exit_code = code if isinstance(code, int) else None
        rec.faults = [str(f) for f in body.get("faults") or []]
        rec.cause = body.get("cause")
        parts = body.get("parts_made", body.get("parts"))
        rec.parts_made = parts if isinstance(parts, int) else None
        cause = f" ({rec.cause})" if rec.cause else ""
        self.entry(row, f"batch ended: {rec.outcome}{cause}", "fault" if rec.cause else None)

    def on_state(self, row: JournalRow, body: dict[str, Any]) -> None:
        change = StateChange(
            row.at,
            str(body.get("source")),
            str(body.get("target")),
            body.get("command"),
            str(body.get("cause") or ""),
            body.get("interlock"),
        )
        self.record.states.append(change)
        if change.target in _HOLD_STATES and self.hold is None:
            self.hold = Hold(row.at, None, change.cause, change.interlock)
            self.record.holds.append(self.hold)
        elif change.target not in _HOLD_STATES and self.hold is not None:
            self.hold.end = row.at
            self.hold = None
        how = f" by {change.command}" if change.command else ""
        cause = f": {change.cause}" if change.cause else ""
        flag = "fault" if change.interlock else None
        self.entry(row, f"state {change.source} -> {change.target}{how}{cause}", flag)

    def on_mode(self, row: JournalRow, body: dict[str, Any]) -> None:
        self.record.modes.append({"at": row.at, "mode": str(body.get("mode"))})
        self.entry(row, f"mode {body.get('mode')}")

    def on_step_started(self, row: JournalRow, body: dict[str, Any]) -> None:
        step = Step(
            str(body.get("path")),
            body.get("step_id"),
            str(body.get("label") or ""),
            str(body.get("step_kind") or ""),
            str(body.get("detail") or ""),
            body.get("round"),
            row.at,
        )
        self.record.steps.append(step)
        self.open_steps[step.path] = step
        detail = f": {step.detail}" if step.detail else ""
        self.entry(row, f"step {_step_name(body)} started{detail}")

    def on_step_ended(self, row: JournalRow, body: dict[str, Any]) -> None:
        path = str(body.get("path"))
        step = self.open_steps.pop(path, None)
        if step is None:  # an end with no start in the record: a step of its own
            step = Step(
                path, body.get("step_id"), str(body.get("label") or ""), "", "", None, row.at
            )
            self.record.steps.append(step)
        step.end = row.at
        step.outcome = body.get("outcome")
        step.error = body.get("error")
        error = f": {step.error}" if step.error else ""
        flag = "fault" if step.outcome == "failed" else None
        self.entry(row, f"step {_step_name(body)} {step.outcome}{error}", flag)

    def on_intent(self, row: JournalRow, body: dict[str, Any]) -> None:
        write = Write(
            str(body.get("tag")),
            body.get("value"),
            body.get("path"),
            body.get("step_id"),
            body.get("intent"),
            row.at,
            None,
            UNKNOWN,
        )
        self.record.writes.append(write)
        if write.intent is not None:
            self.intents[write.intent] = write
        self.entry(row, f"write {write.tag} := {value_text(write.value)} (intent)")

    def on_call_intent(self, row: JournalRow, body: dict[str, Any]) -> None:
        shown = f"{body.get('method')}({value_text(dict(body.get('args') or {}))})"
        intent = body.get("intent")
        if intent is not None:
            self.call_intents[str(intent)] = shown
        self.entry(row, f"call {shown} (intent)")

    def on_confirmed(self, row: JournalRow, body: dict[str, Any]) -> None:
        intent = body.get("intent")
        call = self.call_intents.pop(str(intent), None) if intent is not None else None
        if call is not None:  # a call's: its answer is the `call` row that follows
            if not body.get("ok", True):
                unknown = "outcome UNKNOWN" if body.get("unknown") else "failed"
                self.entry(row, f"call {call} {unknown}: {body.get('error')}", "fault")
            return
        write = self.intents.pop(intent, None) if intent is not None else None
        if write is None:  # no intent of its own: Resetting's values, a restore
            write = Write(
                str(body.get("tag")),
                body.get("value"),
                body.get("path"),
                body.get("step_id"),
                intent,
                None,
                None,
                UNKNOWN,
            )
            self.record.writes.append(write)
        write.confirmed_at = row.at
        ok = bool(body.get("ok", True))
        write.error = body.get("error")
        if body.get("unknown"):  # no answer (a timeout, a lost link): it may have landed
            write.outcome = UNKNOWN
            said = f"outcome UNKNOWN: {write.error}"
        else:
            write.outcome = CONFIRMED if ok else FAILED
            said = "confirmed" if ok else f"failed: {write.error}"
        self.entry(
            row, f"write {write.tag} := {value_text(write.value)} {said}", None if ok else "fault"
        )

    def on_call(self, row: JournalRow, body: dict[str, Any]) -> None:
        call = Call(
            row.at,
            str(body.get("method")),
            dict(body.get("args") or {}),
            body.get("result"),
            body.get("path"),
        )
        self.record.calls.append(call)
        self.entry(row, f"call {call.method}({value_text(call.args)}) -> {value_text(call.result)}")

    def on_command(self, row: JournalRow, body: dict[str, Any]) -> None:
        choice = body.get("choice")
        command = OperatorCommand(
            row.at,
            str(body.get("command")),
            body.get("operator"),
            body.get("source"),
            None if choice is None else str(choice),
        )
        self.record.commands.append(command)
        who = f" by {command.operator}" if command.operator else ""
        where = f" ({command.source})" if command.source else ""
        chose = f", choice {command.choice}" if command.choice else ""
        self.entry(row, f"command {command.command}{who}{where}{chose}", "operator")

    def on_refused(self, row: JournalRow, body: dict[str, Any]) -> None:
        refusal = Refusal(
            row.at, str(body.get("command")), str(body.get("reason")), bool(body.get("blocked"))
        )
        self.record.refusals.append(refusal)
        self.entry(row, f"command {refusal.command} refused: {refusal.reason}", "operator")

    def on_trip(self, row: JournalRow, body: dict[str, Any]) -> None:
        trip = Trip(
            row.at,
            str(body.get("interlock")),
            str(body.get("action")),
            str(body.get("condition") or ""),
            dict(body.get("values") or {}),
            str(body.get("message") or ""),
            body.get("device"),
        )
        self.record.trips.append(trip)
        self.open_trips[trip.interlock] = trip
        self.entry(row, f"trip {trip.interlock} ({trip.action}): {trip.message}", "fault")

    def on_trip_cleared(self, row: JournalRow, body: dict[str, Any]) -> None:
        name = str(body.get("interlock"))
        trip = self.open_trips.pop(name, None)
        if trip is not None:
            trip.cleared = row.at
        self.entry(row, f"trip {name} cleared")

    def on_safe_state(self, row: JournalRow, body: dict[str, Any]) -> None:
        results = [dict(r) for r in body.get("results") or [] if isinstance(r, dict)]
        safe = SafeState(row.at, str(body.get("reason")), bool(body.get("ok")), results)
        self.record.safe_states.append(safe)
        failed = [str(r.get("tag")) for r in results if r.get("error") is not None]
        said = "confirmed" if safe.ok else "NOT confirmed on " + ", ".join(failed)
        self.entry(row, f"safe state ({safe.reason}): {said}", "fault")

    def on_prompt(self, row: JournalRow, body: dict[str, Any]) -> None:
        prompt = Prompt(row.at, str(body.get("path")), body.get("step_id"), str(body.get("text")))
        self.record.prompts.append(prompt)
        self.prompts[prompt.path] = prompt
        self.entry(row, f"prompt {_step_name(body)}: {prompt.text}")

    def on_answer(self, row: JournalRow, body: dict[str, Any]) -> None:
        prompt = self.prompts.pop(str(body.get("path")), None)
        if prompt is not None:
            prompt.answered_at = row.at
            prompt.answer = body.get("value")
            prompt.operator = body.get("operator")
        who = f" by {body.get('operator')}" if body.get("operator") else ""
        value = body.get("value")
        said = "acknowledged" if value is None else f"answered {value_text(value)}"
        self.entry(row, f"prompt {_step_name(body)} {said}{who}", "operator")

    def on_notice(self, row: JournalRow, body: dict[str, Any]) -> None:
        if body.get("resumed") is True:  # the row `cellctl resume` writes first
            self.on_resumed(row, body)
            return
        notice = Notice(row.at, str(body.get("level") or "info"), str(body.get("text")))
        self.record.notices.append(notice)
        flag = "fault" if notice.level == "error" else None
        self.entry(row, f"{notice.level}: {notice.text}", flag)

    def on_resumed(self, row: JournalRow, body: dict[str, Any]) -> None:
        """`cellctl resume` took the batch up again (a notice row with `resumed: true`, its
        point under `point`): what ran when the process stopped never ended, so its steps end
        here, "crashed"."""
        for step in self.open_steps.values():
            step.end, step.outcome = row.at, "crashed"
        self.open_steps.clear()
        self.record.resumed.append({"at": row.at, **body})
        point = body.get("point")
        point = point if isinstance(point, dict) else body
        where = point.get("step_id") or point.get("path")
        at = f" at step {where}" if where else ""
        who = f" by {body.get('operator')}" if body.get("operator") else ""
        self.entry(row, f"batch resumed{at}{who} after the process stopped", "operator")

    def on_write(self, row: JournalRow, body: dict[str, Any]) -> None:
        self.entry(row, f"cellctl write {value_text(body)}", "operator")

    def finish(self) -> BatchRecord:
        rec = self.record
        if rec.unfinished:
            rec.outcome = UNFINISHED
            self.record.timeline.append(
                Entry(
                    rec.last_row_at or "",
                    rec.timeline[-1].offset if rec.timeline else 0.0,
                    "unfinished",
                    "the batch never ended (no batch_ended row): the process stopped mid-batch",
                    "fault",
                )
            )
        return rec
