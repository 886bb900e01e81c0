"""OPC UA method calls on a simulator: a plant model's handler behind asyncua's method node."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from asyncua import ua
from asyncua.ua.status_codes import StatusCodes

from drivers.base import Value
from drivers.codecs import check_value, zero_value
from drivers.errors import WriteRejected
from drivers.opcua_types import from_ua, status_code, to_variant, variant_type
from drivers.points import MethodSpec
from drivers.sim.plant.base import MethodHandler

log = logging.getLogger("drivers.sim.opcua")


class MethodCallback:
    """Runs a plant model's handler for an OPC UA method call, mapping failures to status codes."""

    def __init__(
        self,
        device: str,
        spec: MethodSpec,
        handler: MethodHandler | None,
        after: Callable[[], Awaitable[None]],
    ) -> None:
        self.device = device
        self.spec = spec
        self.handler = handler
        self.after = after

    async def call(self, _parent: ua.NodeId, *inputs: ua.Variant) -> Any:
        """asyncua calls this with the object's NodeId and the input Variants.

        A coroutine function (a bound `async def`): asyncua runs anything else in a thread pool.
        """
        spec = self.spec
        if len(inputs) != len(spec.args):
            code = (
                StatusCodes.BadArgumentsMissing
                if len(inputs) < len(spec.args)
                else StatusCodes.BadTooManyArguments
            )
            return status_code(code)
        args: list[Value] = []
        arg_results: list[ua.StatusCode] = []
        for arg, variant in zip(spec.args, inputs, strict=True):
            try:
                if variant.VariantType != variant_type(arg.datatype):
                    raise ValueError(f"{variant.VariantType.name} is not {arg.datatype.value}")
                args.append(from_ua(arg.datatype, variant.Value))
                arg_results.append(ua.StatusCode())
            except ValueError:
                arg_results.append(status_code(StatusCodes.BadTypeMismatch))
        if len(args) != len(spec.args):
            return ua.CallMethodResult(
                StatusCode=status_code(StatusCodes.BadInvalidArgument),
                InputArgumentResults=arg_results,
            )
        try:
            result = await self._run(args)
        except ValueError as err:
            log.warning("%s: method %s refused its arguments: %s", self.device, spec.name, err)
            return status_code(StatusCodes.BadInvalidArgument)
        except Exception as err:
            # asyncua would answer BadUnexpectedError; the machine refusing is an invalid state.
            log.warning("%s: method %s failed: %s", self.device, spec.name, err)
            return status_code(StatusCodes.BadInvalidState)
        if spec.result is None:
            return []
        try:
            return [to_variant(spec.result, check_value(spec.result, result))]
        except WriteRejected as err:
            log.error(
                "%s: method %s handler returned a bad result: %s", self.device, spec.name, err
            )
            return status_code(StatusCodes.BadInternalError)

    async def _run(self, args: list[Value]) -> Any:
        """The handler's result, or the zero value of the result type when there is no handler."""
        if self.handler is None:
            return zero_value(self.spec.result) if self.spec.result is not None else None
        pending = self.handler(*args)
        result = await pending if inspect.isawaitable(pending) else pending
        await self.after()
        return result
