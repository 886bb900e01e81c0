"""`cellctl write` names the cell file in the journal by the bytes it validated."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from cellctl.cell import load_cell
from cellctl.cli.tags import _write_record

DEMO_CELL = Path(__file__).resolve().parent.parent / "recipes" / "demo" / "cell.yaml"


def test_the_write_record_hashes_the_validated_bytes_not_the_file_as_it_is_now(
    tmp_path: Path,
) -> None:
    cell_file = tmp_path / "cell.yaml"
    shutil.copyfile(DEMO_CELL, cell_file)
    validated = hashlib.sha256(cell_file.read_bytes()).hexdigest()
    cell = load_cell(cell_file)
    cell_file.write_text("edited after it was checked\n")  # or gone: no traceback either way
    record = _write_record(cell, cell_file, "ana", tmp_path / "journal.sqlite")
    try:
        assert record.about["cell_sha256"] == validated
    finally:
        record.close()
