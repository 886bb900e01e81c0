"""A call of a PackML method of `cellctl serve`'s OPC UA surface as the Request it makes for
the command layer: its arguments checked for count and type (BadCall when they do not fit)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from asyncua import ua
from asyncua.ua.status_codes import StatusCodes

from cellctl.control.machine import Command
from cellctl.service.api import Action, Request
from cellctl.service.opcua_nodes import ARRAY_INPUTS

#: A method input's Request field, by input name (Choice: `choice` of a command, else `value`).
_FIELDS: Mapping[str, str] = {
    "Mode": "value",
    "Name": "name",
    "Parameters": "parameters",
    "StepId": "name",
    "Value": "value",
    "Tag": "name",
    "Choice": "value",
}


class BadCall(Exception):
    """A call whose arguments do not fit the method: its status, the reason, and the index of
    the argument of a wrong type (None when it is their count)."""

    def __init__(self, status: int, reason: str, argument: int | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.argument = argument


def build_request(
    method: str, inputs: tuple[str, ...], action: Action, args: Sequence[ua.Variant]
) -> Request:
    """The Request a call of `method` with these arguments makes; BadCall when they do not
    fit (count or type)."""
    if len(args) < len(inputs):
        missing = ", ".join(inputs[len(args) :])
        raise BadCall(StatusCodes.BadArgumentsMissing, f"{method}: missing {missing}")
    if len(args) > len(inputs):
        takes = ", ".join(inputs) or "no arguments"
        raise BadCall(StatusCodes.BadTooManyArguments, f"{method} takes {takes}")
    fields: dict[str, Any] = {}
    for index, (name, arg) in enumerate(zip(inputs, args, strict=True)):
        field = "choice" if name == "Choice" and action is Action.COMMAND else _FIELDS[name]
        fields[field] = _input_text(method, name, arg, index)
    command = Command(method) if action is Action.COMMAND else None
    return Request(action, command=command, **fields)


def _input_text(method: str, name: str, arg: ua.Variant, index: int) -> str | tuple[str, ...]:
    """An input as the text (or texts) a Request holds; a null input is '' (or no texts);
    BadCall naming the argument's `index` when it is of another type."""
    value = arg.Value
    if value is None:
        return () if name in ARRAY_INPUTS else ""
    if arg.VariantType == ua.VariantType.String:
        if name in ARRAY_INPUTS and isinstance(value, list):
            return tuple(v or "" for v in value)
        if name not in ARRAY_INPUTS and isinstance(value, str):
            return value
    wanted = "a String array" if name in ARRAY_INPUTS else "a String"
    raise BadCall(
        StatusCodes.BadInvalidArgument,
        f"{method}: {name} must be {wanted} (got {arg.VariantType.name})",
        index,
    )
