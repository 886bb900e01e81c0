"""Where a user's journal is when no `--journal PATH` is given."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

#: The environment variable that names the journal file.
JOURNAL_VARIABLE = "CELLCTL_JOURNAL"


def default_journal_path(environ: Mapping[str, str] | None = None) -> Path:
    """$CELLCTL_JOURNAL, else $XDG_STATE_HOME/cellctl/journal.sqlite, else
    ~/.local/state/cellctl/journal.sqlite (the store creates it and its folder on first write)."""
    env = os.environ if environ is None else environ
    named = env.get(JOURNAL_VARIABLE)
    if named:
        return Path(named).expanduser()
    state = env.get("XDG_STATE_HOME")
    # The XDG spec: a relative XDG_STATE_HOME is invalid and must be ignored.
    base = Path(state) if state and Path(state).is_absolute() else Path.home() / ".local" / "state"
    return base / "cellctl" / "journal.sqlite"


def journal_option(path: Path | str) -> str:
    """` --journal PATH` as a shell reads it (a path with a space is quoted): what a printed
    command that names the journal ends with, so that it copies whole."""
    import shlex

    return f" --journal {shlex.quote(str(path))}"
