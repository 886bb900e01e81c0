"""Errors carry their facts in fields, and nothing reads them back out of a message."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellctl.cell import cell_from_document, load_cell
from cellctl.cell.tags import device_config, get_tag, method_spec
from cellctl.cli.validate import validate_file
from cellctl.errors import (
    MissingSecret,
    Subject,
    SubjectKind,
    UnknownDevice,
    UnknownMethod,
    UnknownTag,
)
from cellctl.io.drivers import DeviceFailed, DevicesUnreachable
from cellctl.io.session import TagIO, tags_to_read
from cellctl.yamlload import parse_yaml
from drivers.config import MemoryConfig
from drivers.errors import ConnectFailed, DeviceTimeout
from drivers.memory import MemoryDriver

CELL = """\
cell: t
devices:
  m: {driver: memory}
  n: {driver: memory}
  ua: {driver: opcua, endpoint: "opc.tcp://127.0.0.1:4840", security: Basic256Sha256_SignAndEncrypt,
       cert: c.der, key: c.pem, trust_dir: t, user: op, password_env: CELLCTL_TEST_NO_SUCH_VARIABLE}
tags:
  m.x: {device: m, type: int32, access: rw}
  n.y: {device: n, type: int32, access: rw}
"""
RECIPE = """\
recipe: r
version: 1
parameters:
  parts: {type: int, min: 1, max: 10, default: 1}
steps:
  - {id: a, set: {m.x: parts}}
"""


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    """A recipe with one int parameter, beside its memory cell."""
    for name, text in (("cell.yaml", CELL), ("r.yaml", RECIPE)):
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path / "r.yaml"


def test_unknown_names_are_fields(recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELLCTL_TEST_NO_SUCH_VARIABLE", raising=False)
    cell = load_cell(recipe.parent / "cell.yaml")
    with pytest.raises(UnknownTag) as tag:
        get_tag(cell, "m.z")
    assert tag.value.tag == "m.z"
    with pytest.raises(UnknownTag) as neither:
        tags_to_read(cell, ["q"])
    assert neither.value.tag == "q"
    with pytest.raises(UnknownDevice) as device:
        device_config(cell, "mm")
    assert device.value.device == "mm"
    with pytest.raises(UnknownMethod) as method:
        method_spec(cell, "ua.pick")
    assert method.value.method == "ua.pick"
    with pytest.raises(MissingSecret) as secret:
        device_config(cell, "ua")
    assert (secret.value.device, secret.value.variable) == ("ua", "CELLCTL_TEST_NO_SUCH_VARIABLE")


@pytest.mark.asyncio
async def test_device_failures_name_their_devices() -> None:
    cell = cell_from_document(parse_yaml(CELL.encode(), "cell.yaml"))
    m, n = MemoryDriver(MemoryConfig("m")), MemoryDriver(MemoryConfig("n"))
    io = TagIO(cell, {"m": m, "n": n}, ["m.x", "n.y"])
    await io.connect()
    try:
        n.fail(DeviceTimeout("n: no answer within 1 s"))
        with pytest.raises(DeviceFailed) as failed:
            await io.write("n.y", 3)
        assert failed.value.device == "n"
    finally:
        await io.close()
    n.fail(None)
    m.fail(ConnectFailed("refused"))
    with pytest.raises(DevicesUnreachable) as unreachable:
        await TagIO(cell, {"m": m, "n": n}, ["m.x", "n.y"]).connect()
    assert list(unreachable.value.failures) == ["m"]
    assert str(unreachable.value) == unreachable.value.failures["m"]


@pytest.mark.parametrize(
    ("assignment", "subject"),
    [
        ("parts=99", Subject(SubjectKind.PARAMETER, "parts")),
        ("parts=abc", Subject(SubjectKind.PARAMETER, "parts")),
        ("prts=2", None),  # not a parameter of the recipe: located at 'parameters'
    ],
)
def test_a_bad_parameter_problem_names_its_parameter(
    recipe: Path, assignment: str, subject: Subject | None
) -> None:
    [problem] = validate_file(recipe, None, [assignment])
    assert problem.code == "bad-parameter"
    assert problem.subject == subject
    # Located by the field: at the parameter's key, else at 'parameters:'.
    assert problem.line == (4 if subject else 3)


def test_an_anchor_defined_twice_is_located_by_its_marks_not_by_its_text(
    tmp_path: Path,
) -> None:
    # ruamel's warning quotes the line, so a value that reads like a position would move it.
    path = tmp_path / "cell.yaml"
    path.write_text("a: &x 1\nb: &x 'see line 99, column 7'\ncell: t\n", encoding="utf-8")
    [problem] = validate_file(path)
    assert (problem.line, problem.col, problem.code) == (2, 4, "duplicate-anchor")
    assert "first at line 1" in problem.message


def _subjects(path: Path) -> dict[tuple[int, str], Subject | None]:
    """Each problem of a file validated as `validate` does, by (line, code): its subject."""
    return {(problem.line, problem.code): problem.subject for problem in validate_file(path)}


def test_a_cell_problem_names_its_tag_device_or_method(tmp_path: Path) -> None:
    path = tmp_path / "cell.yaml"
    broken = CELL.replace("m.x: {device: m, type: int32", "m.x: {device: m, type: int33")
    path.write_text(
        broken.replace("devices:\n", "devices:\n  p: {driver: modbus-tcp, host: h, port: 70000}\n")
        + "  n.y: {device: n, type: int32}\n"  # a tag given twice: the duplicate names it
        + "methods:\n  ua.pick: {device: ua, node: 'ns=2;s=R', method: '2:Pick', result: blob}\n"
        + "interlocks:\n  - {name: stop, when: 'n.y >', action: hold}\n",
        encoding="utf-8",
    )
    assert _subjects(path) == {
        (3, "less_than_equal"): Subject(SubjectKind.DEVICE, "p"),
        (9, "enum"): Subject(SubjectKind.TAG, "m.x"),
        (11, "duplicate-key"): Subject(SubjectKind.TAG, "n.y"),
        (13, "enum"): Subject(SubjectKind.METHOD, "ua.pick"),
        (15, "expression"): None,  # an interlock is none of the kinds a subject names
    }


def test_a_recipe_problem_names_its_step_or_parameter(recipe: Path) -> None:
    recipe.write_text(
        RECIPE.replace("default: 1}", "default: 11}")
        + "  - repeat: 2\n"
        + "    steps:\n"
        + "      - {id: inner, wait: 'm.x > 1', timeout: soon}\n"
        + "      - {wait: 'm.x > 1', timeout: later}\n",
        encoding="utf-8",
    )
    assert _subjects(recipe) == {
        (4, "bad-default"): Subject(SubjectKind.PARAMETER, "parts"),
        (9, "bad-duration"): Subject(SubjectKind.STEP, "inner"),
        # A step without an id is named by its path, in messages only.
        (10, "bad-duration"): None,
        (10, "missing"): None,
    }
