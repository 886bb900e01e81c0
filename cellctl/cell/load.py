"""Loading a cell file: YAML, then each entry's model, then the rules between entries.

Every problem of the file is reported at once, each located at what is at fault
(FILE:LINE:COL); the file is read and parsed once, and so is each condition in it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import AliasChoices, BaseModel, ValidationError

from cellctl.cell.device_rules import check_devices
from cellctl.cell.devices import DRIVERS, SimSpec
from cellctl.cell.model import Cell, Heartbeat, Interlock, LoadContext, Method, Ready, Tag
from cellctl.cell.rules import Rules
from cellctl.cell.section_rules import (
    check_heartbeat,
    check_interlocks,
    check_methods,
    check_ready,
    check_reset,
    check_restore_on_unhold,
    check_safe_state,
)
from cellctl.cell.tag_rules import check_overlaps, check_tags
from cellctl.errors import Problem, Subject, SubjectKind, ValidationFailed
from cellctl.yamlload import (
    Describe,
    Loc,
    Where,
    YamlDocument,
    parse_yaml,
    read_file,
    validation_problems,
)

#: The rules between entries, in the order their problems are found.
RULES: tuple[Callable[[Rules], None], ...] = (
    check_devices,
    check_tags,
    check_overlaps,
    check_methods,
    check_interlocks,
    check_safe_state,
    check_restore_on_unhold,
    check_heartbeat,
    check_reset,
    check_ready,
)


def load_cell(path: Path) -> Cell:
    """Load and validate a cell file; raises ValidationFailed carrying every problem."""
    return load_cell_and_bytes(path)[0]


def load_cell_and_bytes(path: Path) -> tuple[Cell, bytes]:
    """load_cell, and the bytes the cell was loaded from: a copy of the file (`sim
    --write-cell`) is made of what was validated, without reading the file again."""
    raw = read_file(path)
    cell = cell_from_document(parse_yaml(raw, str(path)), path)
    cell.loaded_from(raw)
    return cell, raw


def read_cell(path: Path) -> tuple[Cell | None, list[Problem]]:
    """Load a cell file without raising: the cell and no problem, or None and every problem."""
    try:
        return load_cell(path), []
    except ValidationFailed as err:
        return None, err.problems


def check_cell_file(path: Path) -> list[Problem]:
    """Every problem of a cell file, sorted by line; an empty list when it is valid."""
    return read_cell(path)[1]


def cell_from_document(doc: YamlDocument, source: Path | None = None) -> Cell:
    """Validate a YAML document already read as a cell file; raises ValidationFailed.

    For a caller that has parsed the file already (to tell a cell file from a recipe).
    """
    doc = doc.about(_subject_at)
    rules = _run_rules(doc)
    conditions = rules.conditions if rules is not None else {}
    problems = list(doc.problems)
    cell: Cell | None = None
    try:
        cell = Cell.model_validate(doc.data, context=LoadContext(source, conditions))
    except ValidationError as err:
        problems.extend(validation_problems(doc, err, _describer(doc)))
    if rules is not None:
        problems.extend(rules.problems)
    if problems or cell is None:
        raise ValidationFailed(sorted(problems, key=lambda p: (p.line, p.col)))
    return cell


#: The sections whose entries are named things a problem can be about.
_SUBJECTS = {"tags": SubjectKind.TAG, "devices": SubjectKind.DEVICE, "methods": SubjectKind.METHOD}


def _subject_at(loc: Loc) -> Subject | None:
    """The tag, device or method a path into a cell file is inside, if any."""
    kind = _SUBJECTS.get(str(loc[0])) if len(loc) >= 2 else None
    return Subject(kind, str(loc[1])) if kind is not None else None


def _run_rules(doc: YamlDocument) -> Rules | None:
    """The rules between entries, run over a document that is a mapping (else None)."""
    if not isinstance(doc.data, dict):
        return None
    rules = Rules(doc, doc.data)
    for rule in RULES:
        rule(rules)
    return rules


_SECTIONS = {
    "devices": "device",
    "tags": "tag",
    "methods": "method",
    "safe_state": "safe_state",
    "reset": "reset",
}


def _keys(model: type[BaseModel]) -> tuple[str, ...]:
    keys: list[str] = []
    for name, info in model.model_fields.items():
        keys.append(name)
        if isinstance(info.validation_alias, AliasChoices):
            keys.extend(str(choice) for choice in info.validation_alias.choices)
    return tuple(dict.fromkeys(keys))


def _describer(doc: YamlDocument) -> Describe:
    """Names the device, tag, method or interlock a pydantic error's loc points into."""

    def describe(loc: tuple[str | int, ...]) -> Where:
        section = loc[0] if loc else None
        if section == "ready" and len(loc) >= 2:
            return Where("ready", loc[1:], _keys(Ready))
        if len(loc) < 2 or section not in (*_SECTIONS, "interlocks", "heartbeat"):
            return Where("cell file", loc, _keys(Cell))
        rest = loc[2:]
        models: dict[str, type[BaseModel]] = {"tags": Tag, "methods": Method}
        model = models.get(str(section))
        if section == "interlocks":
            raw = doc.data["interlocks"][loc[1]] if doc.has(loc[:2]) else None
            label = raw.get("name") if isinstance(raw, dict) else None
            name = f"interlock {label}" if label else f"interlock #{int(loc[1]) + 1}"
            model = Interlock
        elif section == "heartbeat":
            raw = doc.data["heartbeat"][loc[1]] if doc.has(loc[:2]) else None
            tag = raw.get("tag") if isinstance(raw, dict) else None
            name = f"heartbeat {tag}" if isinstance(tag, str) else f"heartbeat #{int(loc[1]) + 1}"
            model = Heartbeat
        else:
            name = f"{_SECTIONS[str(section)]} {loc[1]}"
        if section == "devices" and rest and rest[0] in DRIVERS:
            model, rest = DRIVERS[str(rest[0])], rest[1:]
        if rest[:1] == ("sim",) and len(rest) > 1:
            model = SimSpec
        return Where(name, rest, _keys(model) if model is not None else ())

    return describe
