"""The typer app of `cellctl`: its root options, and help that shows flags and arguments as
click writes them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from cellctl import __version__
from cellctl.cli import consoles

if TYPE_CHECKING:
    # typer's vendored click, for types only: at run time typer hands these in.
    from typer._click import Context, Parameter
    from typer.models import CommandFunctionType


def _bare_flags(params: list[Parameter]) -> list[Parameter]:
    """The params, each flag (it takes no value) with an empty metavar: typer's help would show
    `--json <bool>`, as if the flag took one."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


def _usage_name(argument: Parameter) -> str:
    """An argument on the usage line as FILE... or [TAG]... (typer writes `{files}...`)."""
    name = argument.metavar or (argument.name or "ARG").upper()
    if argument.nargs != 1 and not name.endswith("..."):
        name += "..."
    if not argument.required:
        name = f"[{name.removesuffix('...')}]" + ("..." if name.endswith("...") else "")
    return name


class _Command(TyperCommand):
    """A command whose --help shows flags as flags and arguments as click writes them."""

    def get_params(self, ctx: Context) -> list[Parameter]:
        """The params, flags shown without a value."""
        return _bare_flags(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        """`[OPTIONS] FILE...`: options, then each argument by its metavar."""
        pieces = [self.options_metavar] if self.options_metavar else []
        pieces += [
            _usage_name(param)
            for param in self.get_params(ctx)
            if param.param_type_name == "argument"
        ]
        return pieces


class _Group(TyperGroup):
    """The root command: its flags too are shown as flags."""

    def get_params(self, ctx: Context) -> list[Parameter]:
        """The params, flags shown without a value."""
        return _bare_flags(super().get_params(ctx))


class _App(typer.Typer):
    """A Typer whose commands are all `_Command`s."""

    def command(
        self, *args: Any, **kwargs: Any
    ) -> Callable[[CommandFunctionType], CommandFunctionType]:
        """Register a command (as typer.Typer.command), of class _Command unless told."""
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


app = _App(
    cls=_Group,
    name="cellctl",
    help="Control a microfactory production cell: devices, simulators, recipes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


#: `cellctl audit ...`: checks of the batch record; its commands are in cellctl.cli.audit.
audit_app = _App(
    cls=_Group,
    name="audit",
    help="Check the batch record (the journal).",
    no_args_is_help=True,
)
app.add_typer(audit_app)

#: `cellctl users ...`: the users file of `cellctl serve`; its commands are in cellctl.cli.users.
users_app = _App(
    cls=_Group,
    name="users",
    help="Manage the users of `cellctl serve`: names, roles, passwords.",
    no_args_is_help=True,
)
app.add_typer(users_app)

#: `cellctl certs ...`: certificates and trust of `cellctl serve`; commands in cellctl.cli.certs.
certs_app = _App(
    cls=_Group,
    name="certs",
    help="Certificates of `cellctl serve` and its remote CLI, and the trusted clients.",
    no_args_is_help=True,
)
app.add_typer(certs_app)

#: `cellctl break add|rm ID`: breakpoints of a running service; commands in cellctl.cli.remote.
break_app = _App(
    cls=_Group,
    name="break",
    help="Set or clear a breakpoint before a step of the running service's batch.",
    no_args_is_help=True,
)
app.add_typer(break_app)


def _version(value: bool) -> None:
    if value:
        consoles.out.print(f"cellctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="print the version"),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="show library logs on the console")
    ] = False,
    log_file: Annotated[
        Path | None,
        typer.Option(
            "--log-file",
            help="JSON log (default: CELLCTL_LOG_FILE or ~/.local/state/cellctl/cellctl.log)",
        ),
    ] = None,
) -> None:
    """cellctl: control software for microfactory production cells."""
    # structlog loads for a command, not for --version or --help.
    from cellctl.logsetup import configure_logging, flush_logs

    # A --log-file that cannot be opened ends here, before the command does anything.
    configure_logging(log_file, debug=debug)
    # The log file is written by a thread: the command ends once it holds every record.
    ctx.call_on_close(flush_logs)
