"""What `cellctl read NAME...` reads: tags, every tag of a named device, or all tags."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellctl.cell import Cell, load_cell
from cellctl.errors import UnknownTag
from cellctl.io.session import NothingToRead, tags_to_read

CELL = """\
cell: bench
devices:
  press: {driver: memory}
  conveyor: {driver: memory}
  spare: {driver: memory}
tags:
  press.force_kN: {device: press, type: float32, unit: kN}
  conveyor.run: {device: conveyor, type: bool, access: rw}
  safety.curtain_ok: {device: conveyor, type: bool}
  press.cycles: {device: press, type: uint32}
  press: {device: conveyor, type: bool}
"""


@pytest.fixture
def cell(tmp_path: Path) -> Cell:
    path = tmp_path / "cell.yaml"
    path.write_text(CELL, encoding="utf-8")
    return load_cell(path)


def test_no_name_reads_every_tag(cell: Cell) -> None:
    assert tags_to_read(cell, []) == list(cell.tags)


def test_a_device_reads_all_its_tags_in_cell_file_order(cell: Cell) -> None:
    # Membership is the tag's device, not its name: safety.curtain_ok lives on the conveyor.
    assert tags_to_read(cell, ["conveyor"]) == ["conveyor.run", "safety.curtain_ok", "press"]


def test_tags_and_devices_mix_each_tag_once_in_the_order_named(cell: Cell) -> None:
    assert tags_to_read(cell, ["press.cycles", "conveyor", "conveyor.run"]) == [
        "press.cycles",
        "conveyor.run",
        "safety.curtain_ok",
        "press",
    ]


def test_a_name_that_is_a_tag_and_a_device_is_the_tag(cell: Cell) -> None:
    assert tags_to_read(cell, ["press"]) == ["press"]


def test_an_unknown_name_is_refused_with_a_hint(cell: Cell) -> None:
    with pytest.raises(UnknownTag, match=r"'conveyer' is neither a tag nor a device.*'conveyor'"):
        tags_to_read(cell, ["conveyer"])


def test_a_device_without_tags_is_refused(cell: Cell) -> None:
    with pytest.raises(NothingToRead, match="device spare has no tags"):
        tags_to_read(cell, ["spare"])
