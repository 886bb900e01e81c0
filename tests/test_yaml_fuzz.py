"""Fuzzing the recipe and cell loaders: located problems or ValidationFailed, nothing else runs."""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from cellctl.cell import Cell, check_cell_file, load_cell
from cellctl.errors import Problem, ValidationFailed
from cellctl.recipe import check_recipe_file, load_recipe

DEMO = Path(__file__).resolve().parent.parent / "recipes" / "demo"
DEMO_CELL = (DEMO / "cell.yaml").read_text(encoding="utf-8")
DEMO_RECIPES = [
    path.read_text(encoding="utf-8")
    for path in sorted(DEMO.glob("*.yaml"))
    if path.name != "cell.yaml"
]

# Payloads aimed at a placeholder path, replaced by the sentinel's path in each test: YAML
# tags that an unsafe loader would construct, and expressions that eval would run.
PLACEHOLDER = "SENTINEL-PATH"
YAML_PAYLOADS = [
    f"!!python/object/apply:os.system ['touch {PLACEHOLDER}']",
    f"!!python/object/apply:builtins.open ['{PLACEHOLDER}', 'w']",
    f"!!python/object/new:pathlib.Path ['{PLACEHOLDER}']",
    "!!python/name:os.system",
    f"!!python/module:{PLACEHOLDER}",
    f"!python/object/apply:os.system ['touch {PLACEHOLDER}']",
]
EXPRESSION_PAYLOADS = [
    f"__import__('pathlib').Path('{PLACEHOLDER}').touch()",
    f"open('{PLACEHOLDER}', 'w')",
    f"true and open('{PLACEHOLDER}', 'w').close() or true",
    f"(lambda: open('{PLACEHOLDER}', 'w'))()",
]
# Keys the loaders know, so generated documents reach past the first unknown key.
RECIPE_KEYS = ["recipe", "version", "description", "parameters", "defaults", "steps"]
STEP_KEYS = [
    "id", "set", "wait", "call", "args", "result", "timeout", "delay", "repeat", "index",
    "steps", "parallel", "prompt", "answer", "if", "on_error",
]  # fmt: skip
CELL_KEYS = ["cell", "description", "devices", "tags", "methods", "interlocks", "safe_state"]
NAMES = ["conveyor.run", "conveyor.speed_rpm", "press.force_kN", "force_kN", "parts", "robot.pick"]

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from([*NAMES, "10s", "500ms", "-1s", "'LOT-42'", "many", "hold", "retry"]),
    st.sampled_from(EXPRESSION_PAYLOADS),
)
KEYS = st.one_of(st.sampled_from(RECIPE_KEYS + STEP_KEYS + CELL_KEYS + NAMES), st.text(max_size=8))
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(KEYS, children, max_size=5),
    ),
    max_leaves=20,
)
STEPS = st.lists(st.dictionaries(st.sampled_from(STEP_KEYS), VALUES, max_size=5), max_size=4)
RECIPE_SHAPED = st.fixed_dictionaries(
    {"recipe": SCALARS, "steps": STEPS},
    optional={
        "version": SCALARS,
        "parameters": st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=3),
        "defaults": VALUES,
    },
)
CELL_SHAPED = st.dictionaries(st.sampled_from(CELL_KEYS), VALUES, max_size=7)


def dump(data: Any) -> str:
    """Data as the YAML text a person might have written."""
    stream = io.StringIO()
    YAML(typ="safe", pure=True).dump(data, stream)
    return stream.getvalue()


# A line in YAML's own words, to insert somewhere: payloads, anchors and aliases, broken syntax.
ODD_LINES = st.one_of(
    st.sampled_from(YAML_PAYLOADS).map(lambda payload: f"key: {payload}\n"),
    st.sampled_from(EXPRESSION_PAYLOADS).map(
        lambda payload: f"  - {{id: x, wait: {json.dumps(payload)}}}\n"
    ),
    st.sampled_from(
        [
            "a: &a [*a]\n",
            "b: &b [1, 2]\nc: [*b, *b, *b]\n",
            "<<: *nowhere\n",
            "- [\n",
            "{{{{\n",
            "\t- tab\n",
            "steps: []\n",
            "recipe: press-fit\n",
            "version: 99999999999999999999999\n",
            "  if: 2 ** 100000\n",
            "---\n",
            "...\n",
            "%YAML 1.1\n",
            "? complex key\n",
        ]
    ),
    st.text(max_size=40).map(lambda text: text + "\n"),
)


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    """`text` with one to four lines deleted, duplicated, swapped, replaced, inserted or cut."""
    lines = text.splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            lines = [draw(ODD_LINES)]
        at = draw(st.integers(0, len(lines) - 1))
        other = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["delete", "duplicate", "swap", "value", "insert", "cut"]))
        if action == "delete":
            del lines[at]
        elif action == "duplicate":  # a duplicate key, or a duplicate step id
            lines.insert(other, lines[at])
        elif action == "swap":  # two values trade places: types and ranges go wrong
            key_a, sep_a, value_a = lines[at].partition(": ")
            key_b, sep_b, value_b = lines[other].partition(": ")
            if sep_a and sep_b:
                lines[at], lines[other] = key_a + sep_a + value_b, key_b + sep_b + value_a
        elif action == "value":
            key, sep, _ = lines[at].partition(": ")
            value = draw(st.one_of(SCALARS.map(json.dumps), st.sampled_from(YAML_PAYLOADS)))
            lines[at] = f"{key}{sep or ': '}{value}\n"
        elif action == "insert":
            lines.insert(at, draw(ODD_LINES))
        else:
            lines[at] = lines[at][: draw(st.integers(0, len(lines[at])))]
    return "".join(lines)


@functools.cache
def demo_cell() -> Cell:
    """The demo cell, loaded once (not a fixture: hypothesis would print it on a failure)."""
    return load_cell(DEMO / "cell.yaml")


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A file no document may ever create; checked again when the module is done."""
    path = tmp_path_factory.mktemp("yaml-fuzz") / "SENTINEL"
    yield path
    assert not path.exists(), "a document created the sentinel file"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where each example writes its files (overwritten by the next)."""
    return tmp_path_factory.mktemp("yaml-fuzz-files")


def write(path: Path, content: str | bytes, sentinel: Path) -> Path:
    """Write a document with its payloads aimed at the sentinel."""
    if isinstance(content, str):
        content = content.replace(PLACEHOLDER, str(sentinel)).encode("utf-8", "surrogatepass")
    path.write_bytes(content)
    return path


def assert_located(problems: list[Problem], *files: Path) -> None:
    """Every problem is a Problem inside one of `files`, at a line the file has."""
    lines = {str(path): path.read_bytes().count(b"\n") + 1 for path in files}
    for problem in problems:
        assert isinstance(problem, Problem)
        assert problem.file in lines, problem
        assert 1 <= problem.line <= lines[problem.file], problem
        assert problem.col >= 1, problem
        assert problem.message.strip(), problem


def load_as_recipe(path: Path, cell: Cell) -> None:
    """Load `path` as a recipe: it loads, or ValidationFailed carries located problems."""
    try:
        load_recipe(path, cell)
    except ValidationFailed as err:
        assert err.problems
        assert_located(err.problems, path)


@given(data=st.one_of(RECIPE_SHAPED, CELL_SHAPED, VALUES))
@settings(max_examples=80)
def test_generated_documents(data: Any, workdir: Path, sentinel: Path) -> None:
    path = write(workdir / "generated.yaml", dump(data), sentinel)
    load_as_recipe(path, demo_cell())
    assert_located(check_cell_file(path), path)
    assert not sentinel.exists()


@given(content=st.one_of(st.binary(max_size=300), st.text(max_size=300)))
@settings(max_examples=120)
def test_raw_bytes_and_text(content: bytes | str, workdir: Path, sentinel: Path) -> None:
    path = write(workdir / "raw.yaml", content, sentinel)
    load_as_recipe(path, demo_cell())
    assert_located(check_cell_file(path), path)
    assert not sentinel.exists()


@given(data=st.data())
@settings(max_examples=50)
def test_mutated_demo_recipes(data: st.DataObject, workdir: Path, sentinel: Path) -> None:
    text = data.draw(st.sampled_from(DEMO_RECIPES).flatmap(mutated))
    load_as_recipe(write(workdir / "recipe.yaml", text, sentinel), demo_cell())
    assert not sentinel.exists()


@given(text=mutated(DEMO_CELL))
@settings(max_examples=40)
def test_mutated_demo_cell(text: str, workdir: Path, sentinel: Path) -> None:
    path = write(workdir / "cell.yaml", text, sentinel)
    assert_located(check_cell_file(path), path)
    assert not sentinel.exists()


@given(data=st.data())
@settings(max_examples=12)
def test_check_recipe_file_with_both_files_mutated(
    data: st.DataObject, tmp_path_factory: pytest.TempPathFactory, sentinel: Path
) -> None:
    folder = tmp_path_factory.mktemp("pair")
    recipe = write(
        folder / "recipe.yaml", data.draw(st.sampled_from(DEMO_RECIPES).flatmap(mutated)), sentinel
    )
    cell_text = data.draw(st.one_of(st.just(DEMO_CELL), mutated(DEMO_CELL)))
    cell = write(folder / "cell.yaml", cell_text, sentinel)
    assert_located(check_recipe_file(recipe, cell), recipe, cell)
    assert not sentinel.exists()


def test_the_demo_files_are_valid_so_mutations_start_from_a_good_file() -> None:
    assert DEMO_RECIPES
    for path in sorted(DEMO.glob("*.yaml")):
        if path.name != "cell.yaml":
            assert check_recipe_file(path) == [], path
    assert demo_cell().cell == "demo"


@pytest.mark.parametrize("payload", YAML_PAYLOADS)
def test_python_tags_are_never_constructed(payload: str, workdir: Path, sentinel: Path) -> None:
    # The round-trip loader keeps an unknown tag as plain data: a description that is not a
    # text, located on its line, and nothing called.
    recipe = f"recipe: x\nversion: 1\ndescription: {payload}\nsteps: [{{delay: 1s}}]\n"
    with pytest.raises(ValidationFailed) as caught:
        load_recipe(write(workdir / "tagged.yaml", recipe, sentinel), demo_cell())
    assert [problem.line for problem in caught.value.problems] == [3]
    assert not sentinel.exists()


@pytest.mark.parametrize(
    ("condition", "says"),
    [
        (f"__import__('os').system('touch {PLACEHOLDER}')", "call to \"__import__('os').system\""),
        (f"open('{PLACEHOLDER}', 'w')", "call to 'open' not allowed"),
        ("press.force_kN.__class__ == 1", "names starting with '_'"),
        ("2 ** 100000 > 1", "'**' is not allowed"),
        ("'ab' * 100000000 == 'x'", "strings can only be compared"),
        ("'a' + 'b' == 'ab'", "strings can only be compared"),
        ("press.force_kN > 1" + "0" * 30, "too large"),
        ("(lambda: 1)() == 1", "not allowed"),
    ],
)
def test_a_hostile_recipe_expression_is_refused_at_its_line(
    condition: str, says: str, workdir: Path, sentinel: Path
) -> None:
    text = (
        "recipe: hostile\nversion: 1\nsteps:\n"
        f"  - {{id: w, wait: {json.dumps(condition)}, timeout: 1s}}\n"
    )
    with pytest.raises(ValidationFailed) as caught:
        load_recipe(write(workdir / "hostile.yaml", text, sentinel), demo_cell())
    problems = caught.value.problems  # "'a' + 'b'": one problem for each string
    assert [problem.line for problem in problems] == [4] * len(problems)
    assert all("step 'w'" in problem.message for problem in problems)
    assert says in problems[0].message
    assert not sentinel.exists()


# Found by the fuzz tests above and kept as plain cases.
@pytest.mark.parametrize("text", ["=", "!foo x", "!!str x"])
def test_a_tagged_scalar_document_is_a_located_problem(text: str, workdir: Path) -> None:
    path = workdir / "scalar.yaml"
    path.write_text(text + "\n", encoding="utf-8")
    assert [problem.line for problem in check_cell_file(path)] == [1]
    with pytest.raises(ValidationFailed):
        load_recipe(path, demo_cell())


@pytest.mark.parametrize("number", ["18446744073709551616", "100000000000000000000000"])
def test_a_yaml_number_too_large_for_an_expression_is_a_located_problem(
    number: str, workdir: Path
) -> None:
    path = workdir / "big.yaml"
    path.write_text(
        f"recipe: big\nversion: 1\nsteps:\n  - {{id: w, wait: {number}, timeout: 1s}}\n",
        encoding="utf-8",
    )
    with pytest.raises(ValidationFailed) as caught:
        load_recipe(path, demo_cell())
    assert [(p.line, "too large" in p.message) for p in caught.value.problems] == [(4, True)]
