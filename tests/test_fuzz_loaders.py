"""Fuzzing the cell and recipe loaders from valid documents mutated in their structure, and
replaying the committed corpus (tests/fuzz_corpus/loaders): a file loads, or every problem is
located in it; nothing else is raised and nothing runs.

test_yaml_fuzz.py mutates the text line by line and feeds raw bytes; here the parsed data of
every shipped cell and recipe is mutated (wrong types, missing keys, huge numbers, deep
nesting, one subtree at two places, which the dumper writes as an anchor and aliases) and
dumped again, so the documents get past YAML into the models and the rules between entries.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from cellctl.cell import Cell, check_cell_file, load_cell
from cellctl.errors import BadValue, ValidationFailed
from cellctl.recipe import check_recipe_file, load_recipe
from cellctl.recipe.plan import make_plan
from tests.fuzz_corpus import files
from tests.test_yaml_fuzz import EXPRESSION_PAYLOADS, PLACEHOLDER, assert_located, dump, write

ROOT = Path(__file__).resolve().parent.parent
DEMO_CELL = ROOT / "recipes" / "demo" / "cell.yaml"
# Every cell and recipe the project ships: the valid documents mutations start from.
SOURCES = sorted(
    [*(ROOT / "recipes").glob("*/*.yaml"), ROOT / "tests" / "recipes" / "cell.yaml"],
)
_SAFE = YAML(typ="safe", pure=True)
DOCUMENTS = {
    path.relative_to(ROOT).as_posix(): _SAFE.load(path.read_text(encoding="utf-8"))
    for path in SOURCES
    if path.name != "broken.yaml"  # broken on purpose: the examples' bad-recipe demo
}

# Values a person or a bad tool might put anywhere: wrong types, edges of every range the
# files have (ports, units, addresses, registers, durations, counts) and hostile text.
EDGES: list[Any] = [
    *(2**63, 2**64, -(2**63) - 1, 10**30, 1e308, -1e308, 1e-320, -0.0, 0.1, 65535, 65536),
    *(-1, 0, 1, 125, 126, 247, 248, 2**31, 1_000_000, 1_000_001),
    *("", " ", "0ms", "1ms", "169h", "1e9s", "-1s", "10", "hr:65535", "hr:65536", "coil:0"),
    *("hr:1.16", "ir:0.15", "ns=2;s=X", "opc.tcp://[::1]:0/x", "modbus-tcp", "modbus-rtu"),
    *("opcua", "memory", "float32", "string", "ABCD", "rw", "hold", "abort", "retry", "skip"),
    *("conveyor.run", "press.force_kN", "parts", "force_kN", "not conveyor.run", "'x'"),
    *("press.force_kN > 1", "true", "1 / 0 > 1", "round(1, 400) > 1", "speed_rpm * 2"),
    *EXPRESSION_PAYLOADS,
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**80), 2**80),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(EDGES),
)
WEIRD = st.one_of(
    SCALARS,
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=6), SCALARS, max_size=2),
)
KEYS = st.one_of(st.text(max_size=8), st.sampled_from(["id", "steps", "set", "wait", "tags"]))
MUTATIONS = ["replace", "delete", "wrap", "duplicate", "nest", "rename", "share"]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into a document, the root's () first."""
    yield prefix
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, child in items:
        yield from _paths(child, (*prefix, key))


def _holds(node: Any, target: Any) -> bool:
    """Whether `target` is `node` or inside it (by identity: shared subtrees are one object)."""
    if node is target:
        return True
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    return any(_holds(child, target) for child in children)


def _at(node: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        node = node[key]
    return node


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, Any]:
    """A shipped document with one to four parts mutated: (its name, the data)."""
    name = draw(st.sampled_from(sorted(DOCUMENTS)))
    data = copy.deepcopy(DOCUMENTS[name])
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(data))[1:]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _at(data, path[:-1]), path[-1]
        action = draw(st.sampled_from(MUTATIONS))
        if action == "replace":  # a wrong type, an edge of a range, a hostile text
            parent[key] = draw(WEIRD)
        elif action == "delete":  # a required key missing, a list shorter
            del parent[key]
        elif action == "wrap":  # one level too deep
            parent[key] = draw(st.sampled_from([[parent[key]], {"x": parent[key]}]))
        elif action == "duplicate":  # a second entry alike: duplicate ids, names, addresses
            if isinstance(parent, list):
                parent.append(copy.deepcopy(parent[key]))
            else:
                parent[f"{key}{draw(st.sampled_from(['_', '.x', '2']))}"] = copy.deepcopy(
                    parent[key]
                )
        elif action == "nest":  # deep nesting, of blocks as a recipe would nest them
            value = parent[key]
            for _ in range(draw(st.integers(1, 40))):
                value = draw(
                    st.sampled_from(
                        [
                            [value],
                            {"steps": [value]},
                            {"id": "r", "repeat": 2, "steps": [value]},
                            {"parallel": [[value], [{"delay": "1s"}]]},
                        ]
                    )
                )
            parent[key] = value
        elif action == "rename" and isinstance(parent, dict):  # an unknown or a non-text key
            new = draw(st.one_of(KEYS, st.none(), st.booleans(), st.integers(), st.floats()))
            parent[new] = parent.pop(key)
        elif action == "share":  # this subtree again elsewhere: an anchor and an alias
            other = _at(data, draw(st.sampled_from(paths))[:-1])
            if _holds(parent[key], other):
                continue  # inside the subtree itself: a cycle, which YAML cannot write
            if isinstance(other, dict):
                other[draw(KEYS)] = parent[key]
            elif isinstance(other, list):
                other.append(parent[key])
    return name, data


@functools.cache
def demo_cell() -> Cell:
    """The demo cell, loaded once (not a fixture: hypothesis would print it on a failure)."""
    return load_cell(DEMO_CELL)


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A file no document may ever create; checked again when the module is done."""
    path = tmp_path_factory.mktemp("fuzz-loaders") / "SENTINEL"
    yield path
    assert not path.exists(), "a document created the sentinel file"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where each example writes its file (overwritten by the next)."""
    return tmp_path_factory.mktemp("fuzz-loaders-files")


def load_both_ways(path: Path) -> None:
    """Load `path` as a cell file, as a recipe for the demo cell, and as a recipe beside itself
    as its cell: each loads, or every problem is located in the file. A recipe that loads
    plans with its defaults (or names the parameter that has none)."""
    assert_located(check_cell_file(path), path)
    assert_located(check_recipe_file(path, path), path)
    try:
        loaded = load_recipe(path, demo_cell())
    except ValidationFailed as err:
        assert err.problems
        assert_located(err.problems, path)
        return
    try:
        make_plan(loaded)
    except BadValue as err:
        assert err.parameter, str(err)


def check_mutated(document: tuple[str, Any], workdir: Path, sentinel: Path) -> None:
    """The property every mutated document is held to."""
    _, data = document
    load_both_ways(write(workdir / "mutated.yaml", dump(data), sentinel))
    assert not sentinel.exists()


FEW = settings(max_examples=20, suppress_health_check=[HealthCheck.too_slow])
MANY = settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])


@given(document=mutated())
@FEW
def test_fuzz_mutated_documents_load_or_are_located(
    document: tuple[str, Any], workdir: Path, sentinel: Path
) -> None:
    check_mutated(document, workdir, sentinel)


@pytest.mark.extended
@pytest.mark.timeout(240)  # many examples: beyond the suite's 60 s per test
@given(document=mutated())
@MANY
def test_fuzz_mutated_documents_many(
    document: tuple[str, Any], workdir: Path, sentinel: Path
) -> None:
    check_mutated(document, workdir, sentinel)


@pytest.mark.parametrize("path", files("loaders"))
def test_fuzz_corpus_file_loads_or_is_located(path: Path, workdir: Path, sentinel: Path) -> None:
    # The corpus aims its payloads at a placeholder path: aimed at the sentinel here.
    copy_of = write(
        workdir / f"{path.stem}.yaml",
        path.read_bytes().replace(PLACEHOLDER.encode(), str(sentinel).encode()),
        sentinel,
    )
    load_both_ways(copy_of)
    assert not sentinel.exists()


def test_fuzz_every_shipped_document_starts_valid() -> None:
    # Mutations start from valid files, so what they find is what the mutation broke.
    for name, data in DOCUMENTS.items():
        assert data, name
    assert check_cell_file(DEMO_CELL) == []
    assert check_recipe_file(ROOT / "recipes" / "demo" / "press-fit.yaml") == []
