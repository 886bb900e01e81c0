"""The `cellctl` command line: parse arguments, print, exit codes. The work is done elsewhere.

Each command group's module registers its commands on the typer app (`cellctl.cli.app`):
`files` (validate, plan, schema), `tags` (read, write), `devices` (check, sim), `run_commands`
(run, demo), `states`, `audit` (audit verify), `history`, `report`, `resume`, `users` (users
add, rm, passwd, list), `remote_status` and `remote_commands` (status, watch, cmd, load, ...:
a running `cellctl serve`); `views/` draws what they print. `run` runs the app and turns
every failure into its exit code.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import typer
import typer.main
from typer.exceptions import TyperException

from cellctl import exitcodes

# Each registers its commands on `app`; --help lists them in this order.
# isort: off
from cellctl.cli import files, tags, devices, run_commands, states, audit  # noqa: F401
from cellctl.cli import history, report, resume, serve, users, certs  # noqa: F401
from cellctl.cli import remote_status, remote_commands  # noqa: F401

# isort: on
from cellctl.cli.app import app
from cellctl.cli.consoles import err
from cellctl.errors import CellctlError, ValidationFailed
from drivers.errors import DriverError

if TYPE_CHECKING:
    from typer import _click as click

__all__ = ["app", "run"]


def _exit_code_of(error: CellctlError | DriverError) -> int:
    """The exit code of a failure: its class says; every driver error is a device failure."""
    if isinstance(error, DriverError):  # drivers know nothing of the CLI's codes
        return exitcodes.DEVICE_FAILURE
    return error.exit_code


def _fail(error: CellctlError | DriverError) -> int:
    """Print an error a technician can act on (no traceback); its exit code."""
    problems = error.problems if isinstance(error, ValidationFailed) else None
    if problems:
        for problem in problems:
            err.print(str(problem), markup=False)
    else:
        for line in str(error).splitlines() or [type(error).__name__]:
            err.print(f"error: {line}", markup=False)
    return _exit_code_of(error)


@functools.cache
def _command() -> click.Command:
    """The click command of the app, built once: typer builds it from the functions'
    signatures on every call of `app`, most of an in-process command's time."""
    return typer.main.get_command(app)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on argv and return its exit code (used in-process by the tests)."""
    try:
        result = _command().main(args=argv, prog_name="cellctl", standalone_mode=False)
    except typer.Exit as done:
        return int(done.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err.print("interrupted")
        return exitcodes.INTERRUPTED
    except TyperException as usage:  # click's usage errors (its exit 2) are bad input here
        show = getattr(usage, "show", None)
        if callable(show):
            show()
        else:
            err.print(f"error: {usage}", markup=False)
        return exitcodes.BAD_INPUT
    except (CellctlError, DriverError) as error:
        return _fail(error)
    except Exception as error:  # a bug of ours: one line here, the traceback in the log file
        from cellctl.logsetup import log_internal_error

        log_file = log_internal_error(error)
        if log_file is not None:
            err.print(f"error: internal error, see the log {log_file}", markup=False)
        else:  # no log file took the traceback: this line is all that is left of it
            err.print(
                f"error: internal error: {type(error).__name__}: {error} "
                "(no log file could take the traceback)",
                markup=False,
            )
        return exitcodes.INTERNAL_ERROR
    return int(result) if isinstance(result, int) else exitcodes.OK
