"""Valid recipes: loading, identity, the step tree, idempotent writes, parameters, schema."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import jsonschema
import pytest

from cellctl import expr
from cellctl.cell import load_cell
from cellctl.errors import BadValue, ValidationFailed
from cellctl.recipe import (
    CallStep,
    DelayStep,
    LoadedRecipe,
    ParallelStep,
    PromptStep,
    Recipe,
    RepeatStep,
    SetStep,
    WaitStep,
    cell_file_for,
    check_recipe_file,
    iter_steps,
    load_recipe,
    parse_parameters,
    step_ids,
)
from cellctl.yamlload import load_yaml, parse_yaml

ROOT = Path(__file__).resolve().parent.parent
CELL = ROOT / "tests" / "recipes" / "cell.yaml"
DEMO_CELL = ROOT / "recipes" / "demo" / "cell.yaml"

PRESS_FIT = """\
recipe: press-fit
version: 3
parameters:
  force_kN: {type: float, default: 12.0, min: 5, max: 20, unit: kN}
  parts:    {type: int, default: 3, min: 1, max: 500}
steps:
  - {id: start-conveyor, set: {conveyor.run: true, conveyor.speed_rpm: 1200}}
  - repeat: parts
    steps:
      - {id: wait-part, wait: "conveyor.part_at_station", timeout: 10s}
      - {id: pick, call: robot.pick, args: {slot: 1}, timeout: 15s}
      - {id: press, set: {press.setpoint_kN: force_kN, press.cycle_start: true},
         wait: "press.cycle_done and press.force_kN >= force_kN * 0.95", timeout: 5s}
  - {id: stop-conveyor, set: {conveyor.run: false}}
"""

# Every step kind, against tests/recipes/cell.yaml.
ALL_KINDS = """\
recipe: all-kinds
version: 2
description: every step kind once
parameters:
  speed: {type: int, default: 1200, min: 0, max: 3000, unit: rpm}
  rounds: {type: int, default: 2, min: 0, max: 10}
  lot: {type: str, default: LOT-1}
  mode: {type: enum, choices: [fast, slow], default: fast}
  gain: {type: float, min: 0.5, max: 2}
  verbose: {type: bool, default: false}
defaults:
  timeout: 5s
steps:
  - {id: start, set: {plc.run: true, plc.speed: speed, plc.lot: lot}, on_error: retry}
  - {id: ready, wait: "plc.ready and not arm.busy"}
  - {id: lot-fixed, set: {plc.lot: "'LOT-42'"}}
  - id: loop
    repeat: rounds
    index: n
    steps:
      - {id: pick, call: arm.pick, args: {slot: n, speed: 0.5 * gain}, result: picked,
         timeout: 15s}
      - {id: count, if: picked, set: {plc.count: plc.count + 1}}
      - {delay: 500ms}
  - parallel:
      - - {id: home, call: arm.home, on_error: {action: skip}}
      - - {id: measure, call: arm.measure, result: mm}
        - {id: press, set: {plc.force: mm * gain, plc.limited: round(speed / 2)},
           wait: "plc.pressure > 1", timeout: 2s}
  - {id: ask, prompt: "Parts left?", answer: {name: left, type: int, min: 0, max: 100}}
  - {id: finish, if: "left == 0 and mode == 'fast' and mm > 0",
     set: {plc.run: false, plc.temp_C: 25.5}, on_error: {action: retry, count: 3, delay: 1s}}
"""


def write(directory: Path, name: str, text: str, cell: Path = CELL) -> Path:
    shutil.copyfile(cell, directory / "cell.yaml")
    path = directory / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def all_kinds(tmp_path: Path) -> LoadedRecipe:
    path = write(tmp_path, "all-kinds", ALL_KINDS)
    return load_recipe(path, load_cell(path.parent / "cell.yaml"))


def test_design_example_loads_with_its_identity(tmp_path: Path) -> None:
    path = write(tmp_path, "press-fit", PRESS_FIT, DEMO_CELL)
    loaded = load_recipe(path, load_cell(cell_file_for(path)))
    digest = hashlib.sha256(PRESS_FIT.encode()).hexdigest()
    assert (loaded.identity.name, loaded.identity.version) == ("press-fit", 3)
    assert loaded.identity.sha256 == digest
    assert str(loaded.identity) == f"press-fit v3 sha256:{digest[:8]}…"
    assert loaded.path == path and loaded.cell.cell == "demo"
    assert check_recipe_file(path) == []


def test_identity_changes_with_any_byte(tmp_path: Path) -> None:
    cell = load_cell(DEMO_CELL)
    first = load_recipe(write(tmp_path, "a", PRESS_FIT, DEMO_CELL), cell).identity
    second = load_recipe(write(tmp_path, "b", PRESS_FIT + "# a comment\n", DEMO_CELL), cell)
    assert first.sha256 != second.identity.sha256
    assert (first.name, first.version) == (second.identity.name, second.identity.version)


def test_every_step_kind_loads(all_kinds: LoadedRecipe) -> None:
    recipe = all_kinds.recipe
    walked = [(path, step.kind, step.id) for step, path in iter_steps(recipe.steps)]
    assert walked == [
        ("1", "set", "start"),
        ("2", "wait", "ready"),
        ("3", "set", "lot-fixed"),
        ("4", "repeat", "loop"),
        ("4.1", "call", "pick"),
        ("4.2", "set", "count"),
        ("4.3", "delay", None),
        ("5", "parallel", None),
        ("5.1.1", "call", "home"),
        ("5.2.1", "call", "measure"),
        ("5.2.2", "set", "press"),
        ("6", "prompt", "ask"),
        ("7", "set", "finish"),
    ]
    kinds = {type(step) for step, _ in iter_steps(recipe.steps)}
    assert kinds == {SetStep, WaitStep, CallStep, DelayStep, RepeatStep, ParallelStep, PromptStep}
    assert set(step_ids(recipe)) == {
        "start", "ready", "lot-fixed", "loop", "pick", "count", "home", "measure", "press",
        "ask", "finish",
    }  # fmt: skip


def test_steps_hold_their_values_typed_and_parsed(all_kinds: LoadedRecipe) -> None:
    ids = step_ids(all_kinds.recipe)
    start, ready, loop, pick = ids["start"], ids["ready"], ids["loop"], ids["pick"]
    assert isinstance(start, SetStep) and list(start.set) == ["plc.run", "plc.speed", "plc.lot"]
    assert start.on_error is not None and start.on_error.action == "retry"
    assert start.on_error.retries == 1
    assert isinstance(ready, WaitStep) and ready.timeout is None
    assert ready.wait.until.names == {"plc.ready", "arm.busy"}
    assert isinstance(loop, RepeatStep) and loop.index == "n" and str(loop.repeat) == "rounds"
    assert isinstance(pick, CallStep) and pick.result == "picked" and pick.timeout == 15
    assert set(pick.args) == {"slot", "speed"}
    # The parsed expression is what runs: no re-parsing in the controller.
    assert expr.evaluate(pick.args["speed"], {"gain": 2.0}) == 1.0
    count, finish = ids["count"], ids["finish"]
    assert count.if_ is not None and count.if_.names == {"picked"} and count.may_skip
    assert finish.on_error is not None and finish.on_error.retries == 3
    assert finish.on_error.delay == 1.0
    home = ids["home"]
    assert home.may_skip and home.on_error is not None and home.on_error.action == "skip"
    ask = ids["ask"]
    assert isinstance(ask, PromptStep) and ask.answer is not None and ask.answer.name == "left"
    assert all_kinds.recipe.defaults.timeout == 5.0


def test_constants_are_expressions_too(all_kinds: LoadedRecipe) -> None:
    finish = step_ids(all_kinds.recipe)["finish"]
    assert isinstance(finish, SetStep)
    assert expr.evaluate(finish.set["plc.run"], {}) is False
    assert expr.evaluate(finish.set["plc.temp_C"], {}) == 25.5
    fixed = step_ids(all_kinds.recipe)["lot-fixed"]
    assert isinstance(fixed, SetStep) and expr.evaluate(fixed.set["plc.lot"], {}) == "LOT-42"


@pytest.mark.parametrize(
    ("writes", "marks"),
    [
        ("{c: 5}", {"c": True}),
        ("{c: c + 1}", {"c": False}),
        ("{a: 1, b: a + 1}", {"a": True, "b": True}),  # reads a after writing it: the same
        ("{a: b, b: 1}", {"a": False, "b": True}),  # a retry would read the new b
        ("{a: a + 1, b: a}", {"a": False, "b": False}),  # b follows a's changing value
        ("{a: other * 2}", {"a": True}),
    ],
)
def test_writes_are_marked_idempotent_or_not(writes: str, marks: dict[str, bool]) -> None:
    raw = load_yaml_text(f"recipe: t\nversion: 1\nsteps:\n  - {{id: s, set: {writes}}}\n")
    step = Recipe.model_validate(raw).steps[0]
    assert isinstance(step, SetStep)
    assert step.idempotent_writes == marks
    assert all(step.idempotent(tag) is mark for tag, mark in marks.items())


def load_yaml_text(text: str) -> object:
    return parse_yaml(text.encode(), "inline.yaml").data


def test_values_read_from_tags_are_left_to_run_time(tmp_path: Path) -> None:
    text = (
        "recipe: t\nversion: 1\nsteps:\n"
        "  - {id: bump, set: {plc.count: plc.count + 1, plc.speed: plc.speed * 2}}\n"
    )
    assert check_recipe_file(write(tmp_path, "bump", text)) == []


def test_load_recipe_raises_with_every_problem(tmp_path: Path) -> None:
    text = "recipe: t\nversion: 1\nsteps:\n  - {id: a, set: {plc.rnu: 1}}\n  - {delay: x}\n"
    path = write(tmp_path, "bad", text)
    with pytest.raises(ValidationFailed) as caught:
        load_recipe(path, load_cell(CELL))
    assert [(p.line, p.code) for p in caught.value.problems] == [
        (4, "unknown-tag"),
        (5, "bad-duration"),
    ]


def test_cell_given_explicitly(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.yaml"
    path.write_text(PRESS_FIT)
    assert check_recipe_file(path, DEMO_CELL) == []
    assert [p.code for p in check_recipe_file(path)] == ["no-cell"]
    assert cell_file_for(path) == tmp_path / "cell.yaml"


# --- parameters ---------------------------------------------------------------------------


def test_parameters_default_and_parsed_by_type(all_kinds: LoadedRecipe) -> None:
    recipe = all_kinds.recipe
    values = parse_parameters(
        recipe, ["gain=1.5", "speed=+300", "verbose=yes", "mode=slow", "lot= LOT 7 "]
    )
    assert values == {
        "speed": 300,
        "rounds": 2,
        "lot": " LOT 7 ",
        "mode": "slow",
        "gain": 1.5,
        "verbose": True,
    }
    assert type(values["speed"]) is int and type(values["gain"]) is float
    assert list(values) == list(recipe.parameters)


@pytest.mark.parametrize(
    ("assignment", "words"),
    [
        ("speed=3001", ("parameter speed", "3001", "0..3000 rpm")),
        ("speed=12.5", ("parameter speed", "a whole number", "'12.5'")),
        ("gain=0.1", ("parameter gain", "0.5..2")),
        ("gain=lots", ("parameter gain", "'lots'")),
        ("gain=nan", ("parameter gain", "0.5..2", "'nan'")),
        ("verbose=maybe", ("parameter verbose", "true or false", "'maybe'")),
        ("mode=medium", ("parameter mode", "'medium'", "'fast', 'slow'")),
        ("sped=1", ("unknown parameter 'sped'", "did you mean 'speed'", "gain")),
        ("speed", ("'speed'", "name=value")),
    ],
)
def test_bad_parameter_values_name_the_parameter(
    all_kinds: LoadedRecipe, assignment: str, words: tuple[str, ...]
) -> None:
    with pytest.raises(BadValue) as caught:
        parse_parameters(all_kinds.recipe, [assignment, "gain=1"])
    assert all(word in str(caught.value) for word in words), str(caught.value)


def test_parameter_without_default_must_be_given(all_kinds: LoadedRecipe) -> None:
    with pytest.raises(BadValue, match=r"parameter gain has no default: .*-p gain=VALUE"):
        parse_parameters(all_kinds.recipe, [])


def test_parameter_given_twice_is_refused(all_kinds: LoadedRecipe) -> None:
    with pytest.raises(BadValue, match="parameter gain is given twice"):
        parse_parameters(all_kinds.recipe, ["gain=1", "gain=2"])


# --- schema --------------------------------------------------------------------------------


def test_json_schema_is_valid_and_accepts_the_recipes(tmp_path: Path) -> None:
    schema = Recipe.model_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for text in (PRESS_FIT, ALL_KINDS):
        validator.validate(load_yaml(write(tmp_path, "r", text)).data)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({"recipe": "t", "version": 1, "steps": [{"id": "a", "sett": {}}]})
