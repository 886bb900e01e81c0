"""`cellctl schema`: the JSON Schema of cell files and recipes, for YAML language servers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

# The models load when a schema is asked for: every command's signature needs FileKind only.
if TYPE_CHECKING:
    from pydantic import BaseModel

#: The JSON Schema dialect pydantic's schemas follow.
DIALECT = "https://json-schema.org/draft/2020-12/schema"

FileKind = Literal["cell", "recipe"]
KINDS: tuple[FileKind, ...] = ("cell", "recipe")

_TITLES: dict[FileKind, str] = {"cell": "cellctl cell file", "recipe": "cellctl recipe"}


def _model(kind: FileKind) -> type[BaseModel]:
    """The pydantic model of one file kind."""
    from cellctl.cell import Cell
    from cellctl.recipe import Recipe

    return Cell if kind == "cell" else Recipe


def schema_of(kind: FileKind) -> dict[str, Any]:
    """The JSON Schema of one file kind, with `$schema` and `title` set."""
    model, title = _model(kind), _TITLES[kind]
    body = model.model_json_schema()
    _durations_as_written(body)
    # `$schema` first: editors and readers look for it at the top.
    return {"$schema": DIALECT, **body, "title": title}


def schema_of_both() -> dict[str, Any]:
    """One JSON Schema that accepts a cell file or a recipe: one editor setting for a folder."""
    from pydantic import TypeAdapter

    from cellctl.cell import Cell
    from cellctl.recipe import Recipe

    body = TypeAdapter(Cell | Recipe).json_schema()
    _durations_as_written(body)
    return {"$schema": DIALECT, **body, "title": "cellctl cell file or recipe"}


def _durations_as_written(node: object) -> None:
    """Show duration defaults as a file would write them ('100ms'), not as seconds (0.1).

    The models hold durations as float seconds, so pydantic's defaults are numbers, which the
    duration pattern itself refuses; an editor offering the default would insert an error.
    """
    from cellctl.durations import PATTERN as DURATION_PATTERN
    from cellctl.durations import format_duration

    if isinstance(node, dict):
        default = node.get("default")
        if (
            node.get("pattern") == DURATION_PATTERN
            and isinstance(default, int | float)
            and not isinstance(default, bool)
        ):
            node["default"] = format_duration(default)
        for value in node.values():
            _durations_as_written(value)
    elif isinstance(node, list):
        for item in node:
            _durations_as_written(item)
