"""The rules of methods, interlocks, the safe state, reset, ready and heartbeats."""

from __future__ import annotations

from pydantic import TypeAdapter, ValidationError

from cellctl.cell.model import INTEGER_TYPES, Heartbeat
from cellctl.cell.rules import Loc, Rules
from cellctl.durations import format_duration
from cellctl.errors import BadValue, did_you_mean
from cellctl.yamlload import plain
from drivers.points import Access, DataType

_HEARTBEAT_ADAPTER = TypeAdapter(Heartbeat)


def check_methods(rules: Rules) -> None:
    """Each method: its name is no tag's, its device exists and speaks OPC UA."""
    for name, method in rules.methods.items():
        loc: Loc = ("methods", name)
        if name in rules.raw_tags:
            rules.add(loc, "duplicate-name", f"method {name}: a tag has the same name", key=True)
        driver = rules.drivers.get(method.device)
        known = rules.known_device(loc, f"method {name}", method.device)
        if known and driver is not None and driver != "opcua":
            rules.add(
                (*loc, "device"),
                "wrong-driver",
                f"method {name}: device {method.device} is {driver}; methods need an OPC UA device",
            )


def check_interlocks(rules: Rules) -> None:
    """Each interlock: a name used once, a condition over the cell's tags."""
    raw = rules.data.get("interlocks")
    if not isinstance(raw, list):
        return
    names: dict[str, int] = {}
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            continue  # reported by pydantic
        loc: Loc = ("interlocks", index)
        name, when = item.get("name"), item.get("when")
        subject = f"interlock {name}" if isinstance(name, str) else f"interlock #{index + 1}"
        if isinstance(name, str) and name in names:
            first = rules.doc.position(("interlocks", names[name]))[0]
            rules.add(
                (*loc, "name"),
                "duplicate-name",
                f"{subject}: name used twice (first at line {first})",
            )
        if isinstance(name, str):
            names.setdefault(name, index)
        rules.check_condition((*loc, "when"), subject, when)


def check_safe_state(rules: Rules) -> None:
    """The safe state writes rw tags, each a value of its type."""
    _check_written(rules, "safe_state", "the safe state")


def _check_written(rules: Rules, section: str, writer: str) -> None:
    """A mapping of rw tags to values of their type, which `writer` writes."""
    raw = rules.data.get(section)
    if not isinstance(raw, dict):
        return
    for name, value in raw.items():
        loc: Loc = (section, str(name))
        tag = rules.tags.get(str(name))
        if str(name) not in rules.raw_tags:
            hint = did_you_mean(str(name), rules.raw_tags)
            rules.add(loc, "unknown-tag", f"{section}: unknown tag {name!r}{hint}", key=True)
        elif tag is None:
            continue
        elif tag.access is not Access.RW:
            said = f"{section}: tag {name} is read-only; {writer} writes rw tags"
            rules.add(loc, "read-only", said, key=True)
        else:
            try:
                tag.check_value(plain(value))
            except BadValue as err:
                rules.add(loc, "bad-value", f"{section} {name}: {err}")


def check_reset(rules: Rules) -> None:
    """Resetting writes rw tags, each a value of its type, never a heartbeat."""
    _check_written(rules, "reset", "Resetting")
    raw, beats = rules.data.get("reset"), rules.data.get("heartbeat")
    if not isinstance(raw, dict) or not isinstance(beats, list):
        return
    for index, beat in enumerate(beats):
        name = beat.get("tag") if isinstance(beat, dict) else None
        if isinstance(name, str) and name in raw:
            rules.add(
                ("reset", name),
                "heartbeat-in-reset",
                f"reset: tag {name} is a heartbeat (line "
                f"{rules.line(('heartbeat', index))}); only the heartbeat writes it",
                key=True,
            )


def check_ready(rules: Rules) -> None:
    """The condition Resetting waits for, over the cell's tags."""
    raw = rules.data.get("ready")
    if isinstance(raw, dict):
        rules.check_condition(("ready", "when"), "ready", raw.get("when"))


def check_restore_on_unhold(rules: Rules) -> None:
    """Unholding restores only tags that the safe state changed."""
    raw = rules.data.get("restore_on_unhold")
    safe = rules.data.get("safe_state")
    if not isinstance(raw, list):
        return
    safe_tags = {str(t) for t in safe} if isinstance(safe, dict) else set()
    for index, name in enumerate(raw):
        if not isinstance(name, str):
            continue  # the model reports the type
        loc: Loc = ("restore_on_unhold", index)
        if name not in rules.raw_tags:
            hint = did_you_mean(name, rules.raw_tags)
            rules.add(loc, "unknown-tag", f"restore_on_unhold: unknown tag {name!r}{hint}")
        elif name not in safe_tags:
            rules.add(
                loc,
                "not-in-safe-state",
                f"restore_on_unhold: tag {name} is not in the safe state; only what the "
                "safe state changed is restored",
            )


def check_heartbeat(rules: Rules) -> None:
    """Each heartbeat: a writable counter or bool, one per device, beating within its timeout."""
    raw = rules.data.get("heartbeat")
    if not isinstance(raw, list):
        return
    safe = rules.data.get("safe_state")
    safe_tags = {str(t) for t in safe} if isinstance(safe, dict) else set()
    watched: dict[str, int] = {}  # device -> index of its first heartbeat
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            continue  # reported by pydantic
        loc: Loc = ("heartbeat", index)
        name = item.get("tag")
        if isinstance(name, str):
            _check_heartbeat_tag(rules, index, name, watched, safe_tags)
        try:
            beat = _HEARTBEAT_ADAPTER.validate_python(item)
        except ValidationError:
            continue  # reported by pydantic
        if beat.period >= beat.timeout:
            rules.add(
                (*loc, "period"),
                "bad-value",
                f"heartbeat {beat.tag}: period {format_duration(beat.period)} must be "
                f"shorter than timeout {format_duration(beat.timeout)} (the device trips "
                "when the value has not changed for timeout; give it several periods)",
            )


def _check_heartbeat_tag(
    rules: Rules, index: int, name: str, watched: dict[str, int], safe_tags: set[str]
) -> None:
    loc: Loc = ("heartbeat", index, "tag")
    subject = f"heartbeat {name}"
    tag = rules.tags.get(name)
    if name not in rules.raw_tags:
        hint = did_you_mean(name, rules.raw_tags)
        rules.add(loc, "unknown-tag", f"{subject}: unknown tag {name!r}{hint}")
        return
    if tag is None:
        return  # the tag's own problems are reported at the tag
    if tag.access is not Access.RW:
        rules.add(
            loc,
            "read-only",
            f"{subject}: the tag is read-only; the controller writes its heartbeat: "
            "give the tag access: rw",
        )
    datatype = tag.datatype
    if datatype is not DataType.BOOL and datatype not in INTEGER_TYPES:
        rules.add(
            loc,
            "type-mismatch",
            f"{subject}: a heartbeat is a counter (an integer type such as uint16) or a "
            f"toggling bool, not {datatype.value}",
        )
    elif datatype in INTEGER_TYPES and (tag.scaled or tag.min is not None or tag.max is not None):
        rules.add(
            loc,
            "type-mismatch",
            f"{subject}: a heartbeat counter runs through its type's whole range and wraps: "
            "remove scale, offset, min and max from the tag",
        )
    if name in safe_tags:
        rules.add(
            loc,
            "heartbeat-in-safe-state",
            f"{subject}: the tag is also in the safe state (line "
            f"{rules.line(('safe_state', name))}); only the heartbeat writes it",
        )
    first = watched.setdefault(tag.device, index)
    if first != index:
        other = rules.data["heartbeat"][first].get("tag")
        rules.add(
            loc,
            "duplicate-heartbeat",
            f"{subject}: device {tag.device} already has heartbeat {other} (line "
            f"{rules.line(('heartbeat', first))}); a device watches one heartbeat",
        )
