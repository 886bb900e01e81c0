"""`cellctl validate`, `plan` and `schema` on recipes, in-process; the demo recipes; the README."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from rich.console import Console
from ruamel.yaml import YAML

from cellctl.cli.validate import open_recipe
from cellctl.cli.views.plan import plan_view
from cellctl.recipe import SetStep, iter_steps
from cellctl.recipe.plan import make_plan
from cellctl.testing import cli

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "recipes" / "demo"
DEMO_CELL = DEMO / "cell.yaml"
DEMO_RECIPES = ["press-fit", "changeover", "press-calibration"]
README = ROOT / "README.md"

#: Each demo recipe's devices and worst case with its default parameters (worked out by hand
#: from its timeouts, delays, retries, repeat count and parallel branches).
EXPECTED = {
    "press-fit": ({"conveyor", "robot", "press"}, "3m 27s"),
    "changeover": ({"conveyor", "robot", "press", "inspection"}, "1m 2s"),
    "press-calibration": ({"conveyor", "robot", "press", "inspection"}, "45s"),
}


def demo(name: str) -> Path:
    return DEMO / f"{name}.yaml"


def yaml_data(path: Path) -> Any:
    return YAML(typ="safe").load(path)


def line_of(path: Path, text: str) -> int:
    """The 1-based line of the first line of `path` that contains `text`."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} not in {path}")


@pytest.fixture
def cell_dir(tmp_path: Path) -> Path:
    """A folder holding a copy of the demo cell file, for recipes written by a test."""
    shutil.copy(DEMO_CELL, tmp_path / "cell.yaml")
    return tmp_path


# ---------------------------------------------------------------------------------------------
# validate


@pytest.mark.parametrize("name", DEMO_RECIPES)
def test_every_demo_recipe_validates(capsys: pytest.CaptureFixture[str], name: str) -> None:
    code, out, err = cli(capsys, "validate", demo(name))
    assert (code, err) == (0, "")
    assert "1 file(s) valid" in out


def test_the_demo_folder_validates_with_json(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(DEMO.glob("*.yaml"))
    assert len(files) >= 4  # the cell and at least three recipes
    code, out, _ = cli(capsys, "validate", "--json", *files)
    assert (code, json.loads(out)) == (0, [])


def test_the_demo_recipes_cover_every_step_kind() -> None:
    kinds: set[str] = set()
    used: set[str] = set()
    for name in DEMO_RECIPES:
        recipe = open_recipe(demo(name)).recipe
        for step, _ in iter_steps(recipe.steps):
            kinds.add(step.kind)
            used |= {"if"} if step.if_ is not None else set()
            used |= {"result"} if getattr(step, "result", None) else set()
            used |= {"expect"} if getattr(step, "expect", None) else set()
            wait = getattr(step, "wait", None)
            used |= {"changed"} if wait is not None and wait.changed else set()
            used |= {"on_error"} if step.on_error is not None else set()
            used |= {"answer"} if getattr(step, "answer", None) else set()
    assert kinds == {"set", "wait", "call", "delay", "repeat", "parallel", "prompt"}
    assert used == {"if", "result", "expect", "changed", "on_error", "answer"}


#: What the demo recipes wait for before a press cycle: released, done off, no force.
PRESS_IDLE = "not press.cycle_done and press.force_kN < 1"


@pytest.mark.parametrize("name", DEMO_RECIPES)
def test_every_demo_press_cycle_starts_on_an_idle_press(name: str) -> None:
    # `changed: press.cycles` counts a cycle already running when it read the counter; only
    # an idle press makes the count this step's.
    steps = {path: step for step, path in iter_steps(open_recipe(demo(name)).recipe.steps)}
    starts = [
        path
        for path, step in steps.items()
        if isinstance(step, SetStep) and str(step.set.get("press.cycle_start")) == "true"
    ]
    assert starts
    for path in starts:
        head, _, number = path.rpartition(".")
        before = steps.get(f"{head}.{int(number) - 1}" if head else str(int(number) - 1))
        start = steps[path]
        assert isinstance(before, SetStep) and before.wait is not None, (name, path)
        assert str(before.set.get("press.cycle_start")) == "false", (name, path)
        assert before.wait.until.text == PRESS_IDLE, (name, path)
        assert str(before.if_) == str(start.if_), (name, path)  # skipped together


def test_validate_needs_a_cell_beside_the_recipe_or_cell(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    draft = tmp_path / "press-fit.yaml"
    shutil.copy(demo("press-fit"), draft)
    code, _, err = cli(capsys, "validate", draft)
    assert code == 1
    assert err.startswith(f"{draft}:1:1:") and "--cell" in err
    code, _, err = cli(capsys, "validate", "--cell", DEMO_CELL, draft)
    assert (code, err) == (0, "")


def test_a_broken_cell_is_reported_once_in_the_cell_file(
    capsys: pytest.CaptureFixture[str], cell_dir: Path
) -> None:
    cell = cell_dir / "cell.yaml"
    cell.write_text(cell.read_text().replace("port: 5020", "port: 70000"), encoding="utf-8")
    fit = cell_dir / "press-fit.yaml"
    shutil.copy(demo("press-fit"), fit)
    shutil.copy(demo("changeover"), cell_dir / "changeover.yaml")
    code, _, err = cli(capsys, "validate", cell, fit, cell_dir / "changeover.yaml")
    assert code == 1
    lines = err.strip().splitlines()
    assert lines == [f"{cell}:{line_of(cell, 'port: 70000')}:11: {lines[0].split(': ', 1)[1]}"]
    assert "port" in lines[0] and "70000" in lines[0]


def test_validate_with_a_good_parameter(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "validate", demo("press-fit"), "-p", "force_kN=15", "-p", "parts=20")
    assert (code, err) == (0, "")


@pytest.mark.parametrize(
    ("assignment", "name", "words"),
    [
        ("force_kN=50", "force_kN", "out of range"),
        ("parts=abc", "parts", "whole number"),
        ("parts=2.5", "parts", "whole number"),
        ("speed_rpm=", "speed_rpm", "whole number"),
    ],
)
def test_validate_locates_a_bad_parameter_value_at_its_declaration(
    capsys: pytest.CaptureFixture[str], assignment: str, name: str, words: str
) -> None:
    recipe = demo("press-fit")
    code, _, err = cli(capsys, "validate", recipe, "-p", assignment)
    assert code == 1
    assert err.startswith(f"{recipe}:{line_of(recipe, f'  {name}:')}:3: ")
    assert f"parameter {name}" in err and words in err


def test_validate_json_reports_an_unknown_parameter(capsys: pytest.CaptureFixture[str]) -> None:
    recipe = demo("press-fit")
    code, out, _ = cli(capsys, "validate", "--json", recipe, "-p", "forc_kN=12")
    assert code == 1
    [row] = json.loads(out)
    assert row["file"] == str(recipe)
    assert row["line"] == line_of(recipe, "parameters:")
    assert row["code"] == "bad-parameter"
    assert "'forc_kN'" in row["message"] and "did you mean 'force_kN'" in row["message"]


# ---------------------------------------------------------------------------------------------
# plan


@pytest.mark.parametrize("name", DEMO_RECIPES)
def test_plan_prints_steps_devices_worst_case_and_identity(
    capsys: pytest.CaptureFixture[str], name: str
) -> None:
    code, out, err = cli(capsys, "plan", demo(name))
    assert (code, err) == (0, "")
    digest = hashlib.sha256(demo(name).read_bytes()).hexdigest()
    assert f"recipe {name} v" in out and f"sha256:{digest}" in out
    recipe = open_recipe(demo(name)).recipe
    for step, path in iter_steps(recipe.steps):
        label = f"{path} {step.id}" if step.id else f"{path}  "
        assert re.search(rf"^\s+{re.escape(label)}", out, re.M), (label, out)
    devices, worst = EXPECTED[name]
    touched = re.search(r"^devices touched: (.*)$", out, re.M)
    assert touched is not None and set(touched.group(1).split(", ")) == devices
    assert re.search(rf"^worst case: +{re.escape(worst)} ", out, re.M), out


def test_plan_resolves_parameters_and_multiplies_the_repeat(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = cli(capsys, "plan", demo("press-fit"), "-p", "parts=5", "-p", "force_kN=15")
    assert code == 0
    assert re.search(r"parts += 5 +\(-p\)", out) and re.search(
        r"speed_rpm += 1200 rpm +\(default\)", out
    )
    assert "repeat 5 times" in out
    assert "press.setpoint_kN = 15.0 (force_kN)" in out
    assert "press.force_kN >= 15.0 * 0.95" in out
    # 5 rounds of 69 s: a 10 s wait retried twice 2 s apart (34 s) and seven 5 s steps.
    assert re.search(r"^worst case: +5m 45s ", out, re.M)


def test_plan_lists_untimed_prompts_apart_from_the_worst_case(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = cli(capsys, "plan", demo("changeover"), "-p", "tool=B7")
    assert code == 0
    assert "plus the operator's time at prompt(s) swap-tool, wrong-tool, trial-rejected" in out
    assert "[if fitted_tool != 'B7': decided at run time]" in out
    assert "branch 3:" in out


def test_plan_skips_steps_whose_if_parameters_make_false(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = cli(capsys, "plan", demo("press-calibration"), "-p", "high_load=false")
    assert code == 0
    assert out.count("[if high_load: skipped]") == 5
    # 45 s less the skipped press-idle-high (5 s), load-high (5 s), settle (0.5 s), check
    # (1 s), unload (5 s).
    assert re.search(r"^worst case: +28.5s ", out, re.M)


@pytest.mark.parametrize(
    ("recipe", "assignment", "words"),
    [
        ("press-fit", "parts=0", "parameter parts: 0 is out of range"),
        ("press-fit", "parts=many", "parameter parts: expects a whole number"),
        ("press-fit", "force_kN=20.5", "parameter force_kN: 20.5 is out of range"),
        ("changeover", "tool=Z9", "parameter tool: 'Z9' is not one of 'A12', 'B7', 'C3'"),
        (
            "press-calibration",
            "high_load=maybe",
            "parameter high_load: expects true or false (yes/no, on/off, 1/0)",
        ),
        ("press-fit", "colour=red", "unknown parameter 'colour'"),
        ("press-fit", "parts", "'parts': write name=value"),
    ],
)
def test_plan_with_a_bad_parameter_exits_1_naming_it(
    capsys: pytest.CaptureFixture[str], recipe: str, assignment: str, words: str
) -> None:
    code, out, err = cli(capsys, "plan", demo(recipe), "-p", assignment)
    assert (code, out) == (1, "")
    assert err.startswith("error: ") and words in err, err


def test_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "plan", "--json", demo("press-fit"), "-p", "parts=2")
    assert code == 0
    plan = json.loads(out)
    assert plan["sha256"] == hashlib.sha256(demo("press-fit").read_bytes()).hexdigest()
    assert (plan["name"], plan["version"], plan["worst_case"]) == ("press-fit", 4, 138.0)
    assert {p["name"]: p["source"] for p in plan["parameters"]}["parts"] == "-p"
    cycle = plan["steps"][1]
    assert (cycle["id"], cycle["kind"], cycle["count"], cycle["worst_case"]) == (
        "cycle",
        "repeat",
        2,
        138.0,
    )
    [body] = cycle["branches"]
    press = next(step for step in body if step["id"] == "press")
    assert press["writes"] == ["press.setpoint_kN", "press.cycle_start"]
    assert press["reads"] == ["press.cycle_done", "press.force_kN", "press.cycles"]
    assert press["devices"] == ["press"]
    assert press["timeout"] == 5.0


def test_plan_of_a_recipe_elsewhere_with_cell_and_a_count_read_at_run_time(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    recipe = tmp_path / "drain.yaml"
    recipe.write_text(
        "recipe: drain\nversion: 1\ndefaults: {timeout: 2s}\nsteps:\n"
        "  - id: each-part\n    repeat: conveyor.parts_delivered\n    steps:\n"
        "      - {id: part, wait: conveyor.part_at_station}\n"
        "      - {id: ok, prompt: Take the part out, timeout: 1m}\n",
        encoding="utf-8",
    )
    code, out, err = cli(capsys, "plan", recipe, "--cell", DEMO_CELL)
    assert (code, err) == (0, ""), err
    assert "repeat conveyor.parts_delivered times (the count is read at run time)" in out
    assert re.search(r"^worst case: +not known before the run$", out, re.M)
    assert "step 'each-part' repeats a count read at run time (each round 1m 2s)" in out
    assert f"cell   demo ({DEMO_CELL})" in out


def test_plan_refuses_a_cell_file_and_a_broken_recipe(
    capsys: pytest.CaptureFixture[str], cell_dir: Path
) -> None:
    code, out, err = cli(capsys, "plan", DEMO_CELL)
    assert (code, out) == (1, "")
    assert err.startswith(f"{DEMO_CELL}:1:1:") and "cell file, not a recipe" in err
    broken = cell_dir / "broken.yaml"
    broken.write_text(
        "recipe: broken\nversion: 1\nsteps:\n  - {id: go, set: {conveyor.rn: true}}\n",
        encoding="utf-8",
    )
    code, out, err = cli(capsys, "plan", broken)
    assert (code, out) == (1, "")
    assert err.startswith(f"{broken}:4:") and "conveyor.rn" in err


def test_plan_on_a_terminal_is_a_tree() -> None:
    plan = make_plan(open_recipe(demo("changeover")))
    screen = io.StringIO()
    Console(file=screen, force_terminal=True, width=160, color_system=None).print(plan_view(plan))
    text = screen.getvalue()
    assert "├── 2 clear-cell" in text and "│   ├── branch 1" in text
    assert "2.3.1 gauge-release" in text and f"sha256:{plan.sha256}" in text


def test_a_retried_step_carries_its_retries_and_shows_its_worst_case(
    capsys: pytest.CaptureFixture[str],
) -> None:
    plan = make_plan(open_recipe(demo("press-fit")))
    [body] = plan.steps[1].branches
    wait_part, pick = body[0], body[1]
    assert (wait_part.id, wait_part.retries, pick.retries) == ("wait-part", 2, 0)
    code, out, _ = cli(capsys, "plan", demo("press-fit"))
    assert code == 0
    assert "[on error: retry 2 times, 2s apart]  [worst case 34s]" in out
    assert not re.search(r"pick .*worst case", out), out  # no retry, no branches: no total
    # The JSON says it in on_error's words, as it always did.
    code, out, _ = cli(capsys, "plan", "--json", demo("press-fit"))
    step = json.loads(out)["steps"][1]["branches"][0][0]
    assert (step["on_error"], "retries" in step) == ("retry 2 times, 2s apart", False)


# ---------------------------------------------------------------------------------------------
# schema


def schema(capsys: pytest.CaptureFixture[str], *kind: str) -> dict[str, Any]:
    code, out, err = cli(capsys, "schema", *kind)
    assert (code, err) == (0, "")
    document: dict[str, Any] = json.loads(out)
    jsonschema.Draft202012Validator.check_schema(document)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    return document


def test_schemas_are_valid_and_accept_the_demo_files(capsys: pytest.CaptureFixture[str]) -> None:
    recipe = jsonschema.Draft202012Validator(schema(capsys, "recipe"))
    cell = jsonschema.Draft202012Validator(schema(capsys, "cell"))
    either = jsonschema.Draft202012Validator(schema(capsys))
    for name in DEMO_RECIPES:
        data = yaml_data(demo(name))
        recipe.validate(data)
        either.validate(data)
        assert not cell.is_valid(data)
    data = yaml_data(DEMO_CELL)
    cell.validate(data)
    either.validate(data)
    assert not recipe.is_valid(data)


@pytest.mark.parametrize(
    "step",
    [
        {"id": "a", "set": {"conveyor.run": True}, "timout": "1s"},  # unknown key
        {"id": "a", "wait": "x", "call": "robot.pick"},  # two kinds
        {"id": "a"},  # no kind
        {"id": "a", "delay": 5},  # a duration without unit
        {"id": "a", "wait": ["x"]},  # an expression is no list
        {"repeat": 3, "steps": []},  # an empty body
        {"parallel": [[{"delay": "1s"}]]},  # one branch
    ],
)
def test_the_recipe_schema_refuses_misshapen_steps(
    capsys: pytest.CaptureFixture[str], step: dict[str, Any]
) -> None:
    validator = jsonschema.Draft202012Validator(schema(capsys, "recipe"))
    good = {"recipe": "r", "version": 1, "steps": [{"id": "go", "delay": "1s"}]}
    assert validator.is_valid(good)
    assert not validator.is_valid({**good, "steps": [step]})


def test_schema_durations_defaults_are_written_as_in_a_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    document = schema(capsys, "cell")
    poll = document["$defs"]["ModbusTcpDevice"]["properties"]["poll"]
    assert poll["default"] == "100ms"
    assert re.fullmatch(poll["pattern"], poll["default"])


# ---------------------------------------------------------------------------------------------
# README: its examples are what cellctl does


def readme_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Recipes") : text.index("## Simulators")]
    return re.findall(r"```\w*\n(.*?)```", section, re.S)


def readme_block(first_line: str) -> str:
    return next(block for block in readme_blocks() if block.startswith(first_line))


def test_readme_example_recipe_validates_and_plans(
    capsys: pytest.CaptureFixture[str], cell_dir: Path
) -> None:
    recipe = cell_dir / "press-sample.yaml"
    recipe.write_text(readme_block("recipe: press-sample"), encoding="utf-8")
    assert cli(capsys, "validate", recipe)[0] == 0
    code, out, _ = cli(capsys, "plan", recipe)
    assert code == 0
    assert "plus the operator's time at prompt(s) oversize, judge" in out
    jsonschema.Draft202012Validator(schema(capsys, "recipe")).validate(yaml_data(recipe))


@pytest.mark.parametrize(
    ("recipe", "command"),
    [
        ("recipes/examples/lot.yaml", "cellctl validate recipes/examples/lot.yaml"),
        (
            "recipes/examples/broken.yaml",
            "cellctl validate --cell recipes/demo/cell.yaml recipes/examples/broken.yaml",
        ),
    ],
)
def test_readme_error_examples_are_the_shipped_files_and_what_validate_prints(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, recipe: str, command: str
) -> None:
    text = (ROOT / recipe).read_text(encoding="utf-8")
    assert readme_block(text.split("\n", 1)[0] + "\n" + text.split("\n", 2)[1]) == text
    expected = readme_block(f"$ {command}")
    monkeypatch.chdir(ROOT)
    code, _, err = cli(capsys, *command.split()[1:])
    assert code == 1
    assert err == expected.split("\n", 1)[1]


def test_every_file_the_readme_names_exists() -> None:
    # Examples a reader copies must work: a path under the project's own folders exists.
    text = README.read_text(encoding="utf-8")
    named = set(
        re.findall(r"(?<![\w/.])((?:recipes|tests|hil_tests|drivers|cellctl)/[\w./-]+\w)", text)
    )
    made_by_the_reader = {"recipes/cellctl.schema.json"}  # `cellctl schema > …` makes it
    missing = sorted(
        n
        for n in named - made_by_the_reader
        if "<" not in n and "*" not in n and not (ROOT / n).exists()
    )
    assert missing == []


def test_plan_of_a_worst_case_too_long_to_count(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Durations stop at 7 days, but repeats multiply: 52 nested rounds of a million overflow
    # a float. The plan says so instead of crashing, and its JSON stays JSON.
    lines = ["recipe: forever", "version: 1", "steps:"]
    for depth in range(52):
        lines += [f"{'    ' * depth}  - repeat: 1000000", f"{'    ' * depth}    steps:"]
    lines.append(f"{'    ' * 52}  - {{delay: 168h}}")
    recipe = tmp_path / "forever.yaml"
    recipe.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, err = cli(capsys, "plan", recipe, "--cell", DEMO_CELL)
    assert (code, err) == (0, ""), err
    assert re.search(r"^worst case: +not known before the run$", out, re.M), out
    assert "its worst case is too long to count" in out
    code, out, _ = cli(capsys, "plan", "--json", recipe, "--cell", DEMO_CELL)
    assert code == 0
    assert json.loads(out)["worst_case"] is None  # not Infinity, which JSON does not have


def test_plan_writes_a_long_worst_case_in_days(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    recipe = tmp_path / "long.yaml"
    recipe.write_text(
        "recipe: long\nversion: 1\nsteps:\n"
        "  - repeat: 3\n    steps: [{delay: 168h}, {delay: 1h}]\n"
        "  - repeat: 1000000\n    steps: [{delay: 168h}]\n",
        encoding="utf-8",
    )
    code, out, err = cli(capsys, "plan", recipe, "--cell", DEMO_CELL)
    assert (code, err) == (0, ""), err
    assert "[worst case 21d 3h]" in out
    assert re.search(r"^worst case: +7e\+06 days ", out, re.M), out
