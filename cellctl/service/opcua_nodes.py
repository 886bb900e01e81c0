"""The address space of `cellctl serve`'s OPC UA surface: the PackML object (status variables
and methods) and the Tags folder built in the namespace NAMESPACE, and the values they show
(a status snapshot's values, a tag's DataValue with its quality and source time).

Runs on the surface's own loop (SurfaceThread), as cellctl.service.opcua_surface does.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from asyncua import ua
from asyncua.common.node import Node
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes

from cellctl.cell import Cell
from cellctl.service.api import (
    METHODS,
    MODE_NUMBERS,
    PACKML,
    STATE_NUMBERS,
    STATUS_VARIABLES,
    TAGS,
    Action,
    ServiceStatus,
)
from cellctl.values import TagValue
from drivers.base import Quality
from drivers.opcua_types import VARIANT_TYPES, from_ua, ns0_node, status_code
from drivers.points import Access, DataType

log = logging.getLogger("cellctl.service.opcua")

#: The inputs that take a String array.
ARRAY_INPUTS = frozenset({"Parameters"})

#: The asyncua handler of one method: (parent, *args) -> [Result], a Bad status, or a Bad
#: result naming the arguments that do not fit.
MethodHandler = Callable[
    ..., Coroutine[Any, Any, list[ua.Variant] | ua.StatusCode | ua.CallMethodResult]
]
#: Makes the handler of a method from its name, its inputs and its action.
HandlerFactory = Callable[[str, tuple[str, ...], Action], MethodHandler]
#: The status variables' nodes, by browse name: NodeId and OPC UA type.
StatusNodes = dict[str, tuple[ua.NodeId, ua.VariantType]]
#: The tag variables' nodes, by tag name: NodeId and the tag's type.
TagNodes = dict[str, tuple[ua.NodeId, DataType]]


def variable_type(name: str) -> tuple[ua.VariantType, bool]:
    """A status variable's OPC UA type and whether it is an array (from STATUS_VARIABLES)."""
    kind = STATUS_VARIABLES[name].split(":", 1)[0].strip()
    return ua.VariantType[kind.removesuffix("[]")], kind.endswith("[]")


def status_values(status: ServiceStatus, security: str) -> dict[str, str | int | list[str]]:
    """Each status variable's value (but LastRefusal, which each session reads for itself)."""
    prompt = status.prompt
    return {
        "Cell": status.cell,
        "State": status.state,
        "StateCurrent": STATE_NUMBERS.get(status.state, 0),
        "Mode": status.mode,
        "UnitModeCurrent": MODE_NUMBERS.get(status.mode, 0),
        "LegalCommands": list(status.legal),
        "BatchId": status.batch,
        "Recipe": status.recipe,
        "RecipeVersion": status.recipe_version,
        "RecipeSha256": status.recipe_sha256,
        "Parameters": [f"{k}={v}" for k, v in status.parameters.items()],
        "CurrentStep": status.step,
        "Produced": status.produced,
        "Rejected": status.rejected,
        "StopReason": status.stop_reason,
        "ActiveTrips": list(status.trips),
        "Prompt": f"{prompt.step_id}: {prompt.text} ({prompt.wants})" if prompt else "",
        "Paused": status.paused,
        "Breakpoints": list(status.breakpoints),
        "Forced": [f"{k}={v}" for k, v in status.forced.items()],
        "Recipes": list(status.recipes),
        "Security": status.security or security,
    }


def tag_datavalue(datatype: DataType, value: TagValue | None) -> ua.DataValue:
    """A tag variable's DataValue: the value as the node's type, its quality as the status and
    its reading's time as the source timestamp."""
    vtype = VARIANT_TYPES[datatype]
    now = ua.DateTime.now(datetime.UTC)
    if value is None:
        status = status_code(StatusCodes.BadWaitingForInitialData)
        return ua.DataValue(ua.Variant(), StatusCode=status, ServerTimestamp=now)
    source = ua.DateTime.fromtimestamp(value.device_time or value.timestamp, datetime.UTC)
    shown: object = None
    status = status_code(StatusCodes.Bad)
    if value.quality is not Quality.BAD and value.value is not None:
        try:
            shown = from_ua(datatype, value.value)
        except ValueError:
            log.warning("tag %s: value %r is not a %s", value.tag, value.value, datatype.value)
            status = status_code(StatusCodes.BadTypeMismatch)
        else:
            good = value.quality is Quality.GOOD
            status = status_code(StatusCodes.Good if good else StatusCodes.Uncertain)
    # A Bad value is a null Variant (asyncua would null it anyway: OPC UA Part 4, 7.7.1).
    variant = ua.Variant(shown, vtype) if shown is not None else ua.Variant()
    return ua.DataValue(variant, StatusCode=status, SourceTimestamp=source, ServerTimestamp=now)


async def build_packml(
    server: Server, idx: int, values: Mapping[str, object], handler: HandlerFactory
) -> StatusNodes:
    """Objects/PackML: every status variable (with these first values) and every method (its
    handler made by `handler`); the status variables' nodes."""
    packml = await server.nodes.objects.add_object(
        node_id(PACKML, idx), ua.QualifiedName(PACKML, idx)
    )
    status_nodes: StatusNodes = {}
    for name, description in STATUS_VARIABLES.items():
        vtype, array = variable_type(name)
        variable = node_id(f"{PACKML}.{name}", idx)
        node = await packml.add_variable(
            variable,
            ua.QualifiedName(name, idx),
            ua.Variant(values[name], vtype),
            datatype=ns0_node(vtype.value),
        )
        await _describe(node, description)
        if array:
            await node.write_value_rank(ua.ValueRank.OneDimension)
            await node.write_attribute(
                AttributeIds.ArrayDimensions,
                ua.DataValue(ua.Variant([0], ua.VariantType.UInt32)),
            )
        status_nodes[name] = (variable, vtype)
    string = ns0_node(ua.VariantType.String.value)
    for name, (inputs, action) in METHODS.items():
        arguments = [
            ua.Argument(
                Name=arg,
                DataType=string,
                ValueRank=ua.ValueRank.OneDimension if arg in ARRAY_INPUTS else -1,
                ArrayDimensions=[0] if arg in ARRAY_INPUTS else [],
            )
            for arg in inputs
        ]
        result = [ua.Argument(Name="Result", DataType=string, ValueRank=-1)]
        await packml.add_method(
            node_id(f"{PACKML}.{name}", idx),
            ua.QualifiedName(name, idx),
            handler(name, inputs, action),
            arguments,
            result,
        )
    return status_nodes


async def build_tags(
    server: Server, idx: int, cell: Cell, tags: Mapping[str, TagValue]
) -> TagNodes:
    """Objects/Tags: one variable per cell tag, of the tag's type, showing its value in `tags`
    (none yet when it has none); the tag variables' nodes."""
    folder = await server.nodes.objects.add_folder(node_id(TAGS, idx), ua.QualifiedName(TAGS, idx))
    tag_nodes: TagNodes = {}
    for name, tag in cell.tags.items():
        datatype = tag.datatype
        variable = node_id(f"{TAGS}.{name}", idx)
        vtype = VARIANT_TYPES[datatype]
        node = await folder.add_variable(
            variable,
            ua.QualifiedName(name, idx),
            ua.Variant(_zero(datatype), vtype),
            datatype=ns0_node(vtype.value),
        )
        if tag.description:
            await _describe(node, tag.description)
        if tag.access is Access.RW:
            await node.set_writable()
        tag_nodes[name] = (variable, datatype)
        await write_value(server, variable, tag_datavalue(datatype, tags.get(name)))
    return tag_nodes


async def write_value(server: Server, node: ua.NodeId, value: ua.DataValue) -> None:
    """Write a value into the address space; a refusal is a bug in the surface."""
    status = await server.iserver.aspace.write_attribute_value(node, AttributeIds.Value, value)
    status.check()


def node_id(name: str, idx: int) -> ua.NodeId:
    """The NodeId `name` in namespace `idx` (asyncua annotates the parts with marker classes)."""
    return ua.NodeId(ua.String(name), ua.Int16(idx))


def _zero(datatype: DataType) -> object:
    """A value of the type for a variable's creation (its status says there is none yet)."""
    if datatype is DataType.BOOL:
        return False
    if datatype is DataType.STRING:
        return ""
    if datatype in (DataType.FLOAT32, DataType.FLOAT64):
        return 0.0
    return 0


async def _describe(node: Node, text: str) -> None:
    """Set a node's Description (what browsing clients show beside it)."""
    variant = ua.Variant(ua.LocalizedText(text), ua.VariantType.LocalizedText)
    await node.write_attribute(AttributeIds.Description, ua.DataValue(variant))
