"""`cellctl audit verify`: check the journal's chain of hashes, for the whole journal or a batch."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from cellctl.cli import consoles
from cellctl.cli.app import audit_app

#: `--journal PATH`, as every command that reads or writes the journal takes it.
JournalOption = Annotated[
    Path | None,
    typer.Option(
        "--journal",
        metavar="PATH",
        help="the journal (default: CELLCTL_JOURNAL or ~/.local/state/cellctl/journal.sqlite)",
    ),
]


def journal_path(option: Path | None) -> Path:
    """The journal a command uses: --journal, else the user's default."""
    # sqlite3 and hashlib load for a journal command only, never for --version or --help.
    from cellctl.control.journal.location import default_journal_path

    return option if option is not None else default_journal_path()


@audit_app.command()
def verify(
    batch: Annotated[
        str | None,
        typer.Argument(
            metavar="BATCH", help="check this batch, or a unique prefix of its id (default: all)"
        ),
    ] = None,
    journal: JournalOption = None,
    head: Annotated[
        str | None,
        typer.Option("--head", metavar="HASH", help="the head hash printed when the batch ended"),
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option(
            "--key-file", metavar="FILE", help="the HMAC key the journal was written with"
        ),
    ] = None,
) -> None:
    """Check the journal's chain: exit 0 when it holds, 6 naming the first broken row."""
    from cellctl.control.journal.record import AmbiguousBatch, UnknownBatch, find_batch
    from cellctl.control.journal.store import SqliteStore, read_key
    from cellctl.control.journal.verify import ChainBroken
    from cellctl.control.journal.verify import verify as verify_chain
    from cellctl.errors import BadValue

    if head is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", head):
        # Bad input, not a broken chain: a head is a whole SHA-256, as the summary printed it.
        raise BadValue(f"--head {head}: a head hash is 64 hexadecimal digits (the summary's)")
    key = read_key(key_file) if key_file is not None else None
    # Read-only: verifying never creates a journal, and never writes to one.
    store = SqliteStore(journal_path(journal), readonly=True)
    try:
        if batch is not None:  # a unique prefix names a batch, as for `report`
            try:
                batch = find_batch(store, batch)
            except AmbiguousBatch:
                raise
            except UnknownBatch:
                pass  # no row of it: the verdict says so (exit 6: rows may have been removed)
        verdict = verify_chain(store, batch=batch, head=head, key=key)
    finally:
        store.close()
    if not verdict.ok:
        raise ChainBroken(verdict.line())
    consoles.out.print(verdict.line(), markup=False, soft_wrap=True)
