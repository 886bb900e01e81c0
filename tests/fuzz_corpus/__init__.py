"""The fuzz tests' committed corpus: inputs replayed as explicit examples on every run.

One folder per target of tests/test_fuzz_*.py (`cli/` is test_fuzz_values.py's): `loaders/`
holds whole files, replayed as they are (bytes), named *.case so that nothing taking every
*.yaml of the project for a valid file (tests/test_yaml_fast.py) takes them. Every other folder
holds JSON files, each a list of cases (objects whose keys the target's test reads). Hostile
seeds written by hand are here, and so is every input that found a bug: add a case when a fuzz
test fails, then fix the product.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

#: Where the corpus folders are.
CORPUS = Path(__file__).resolve().parent


def files(target: str) -> list[Any]:
    """pytest params of every file in the target's folder (ids: file names)."""
    paths = sorted(path for path in (CORPUS / target).iterdir() if path.is_file())
    assert paths, f"no corpus in {CORPUS / target}"
    return [pytest.param(path, id=path.name) for path in paths]


def cases(target: str) -> list[Any]:
    """pytest params of every case of the target's JSON files (ids: file name and index)."""
    params = []
    for path in sorted((CORPUS / target).glob("*.json")):
        # Python's json reads NaN, Infinity and integers of any size: the edge values.
        for index, case in enumerate(json.loads(path.read_text(encoding="utf-8"))):
            params.append(pytest.param(case, id=f"{path.stem}-{index}"))
    assert params, f"no corpus in {CORPUS / target}"
    return params
