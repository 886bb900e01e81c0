"""Names are ASCII: Python reads 'ｐｒｅｓｓ' and 'ᵖress' as 'press' (NFKC), so they are refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cellctl import expr
from cellctl.expr import ExpressionError
from cellctl.testing import cli
from tests.located import col_of

CELL = Path(__file__).resolve().parent / "recipes" / "cell.yaml"


@pytest.mark.parametrize(
    ("text", "shown", "col"),
    [
        ("ｐｒｅｓｓ.force_kN >= 1", "ｐｒｅｓｓ.force_kN", 0),  # fullwidth letters
        ("ᵖress.force_kN >= 1", "ᵖress.force_kN", 0),  # a modifier letter
        ("x and press.ｆorce_kN > 1", "press.ｆorce_kN", 12),  # the point at the letter
        ("ｆｏｒｃｅ_kN * 2 > 1", "ｆｏｒｃｅ_kN", 0),  # a parameter
        ("ａｂｓ(parts) > 1", "ａｂｓ", 0),  # a function
        ("Ｔｒｕｅ", "Ｔｒｕｅ", 0),  # would be the name 'True'
        ("(ｐress).run", "(ｐress).run", 1),
        ("x == 1 and ﬁnal", "ﬁnal", 11),  # a ligature: 'ﬁ' folds to 'fi'
    ],
)
def test_a_name_written_in_other_than_ascii_is_refused_as_written(
    text: str, shown: str, col: int
) -> None:
    with pytest.raises(ExpressionError) as caught:
        expr.parse(text)
    assert f"name {shown!r}:" in str(caught.value)
    assert "ASCII" in str(caught.value)
    assert caught.value.col == col


@pytest.mark.parametrize(
    "text", ["robot.name == 'Ｌot-Ä'", "x # ｐ is fine in a comment", "press.force_kN >= 1"]
)
def test_text_other_than_names_may_be_any_unicode(text: str) -> None:
    assert expr.parse(text).names <= {"robot.name", "x", "press.force_kN"}


def test_a_recipe_condition_with_a_folded_name_is_located(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    shutil.copy(CELL, tmp_path / "cell.yaml")
    recipe = tmp_path / "r.yaml"
    text = (
        "recipe: t\nversion: 1\nsteps:\n"
        "  - {id: a, wait: 'plc.ready and ｐｌｃ.run', timeout: 1s}\n"
        "  - {id: b, set: {plc.speed: ᵖlc.speed}}\n"
    )
    recipe.write_text(text, encoding="utf-8")
    code, _, err = cli(capsys, "validate", recipe)
    assert code == 1
    lines = err.strip().splitlines()
    first, second = col_of(text, 4, "ｐｌｃ.run"), col_of(text, 5, "ᵖlc.speed")
    assert lines[0].startswith(f"{recipe}:4:{first}: step 'a': wait: name 'ｐｌｃ.run'")
    assert lines[1].startswith(f"{recipe}:5:{second}:") and "'ᵖlc.speed'" in lines[1]
    assert len(lines) == 2, err


def test_yaml_names_must_be_ascii(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cell = tmp_path / "cell.yaml"
    cell.write_text(
        "cell: bench\ndevices:\n  ｍ: {driver: memory}\n  m: {driver: memory}\n"
        "tags:\n  ｍ.x: {device: m, type: int32, access: rw}\n"
        "  m.y: {device: m, type: int32, access: rw}\n",
        encoding="utf-8",
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "recipe: r\nversion: 1\nparameters:\n  ｎ: {type: int, default: 1}\n"
        "steps:\n  - {id: ｓ1, set: {m.y: 1}}\n",
        encoding="utf-8",
    )
    code, _, err = cli(capsys, "validate", cell)
    assert code == 1
    assert "device name 'ｍ' must start with an ASCII letter" in err
    assert "tag name 'ｍ.x' must be ASCII letters" in err
    (tmp_path / "good.yaml").write_text(
        "cell: bench\ndevices:\n  m: {driver: memory}\n"
        "tags:\n  m.y: {device: m, type: int32, access: rw}\n",
        encoding="utf-8",
    )
    code, _, err = cli(capsys, "validate", recipe, "--cell", tmp_path / "good.yaml")
    assert code == 1
    assert "name 'ｎ' must be ASCII letters" in err
    assert "step id 'ｓ1' must start with an ASCII letter" in err
