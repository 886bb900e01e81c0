"""The remote commands that drive a running `cellctl serve` over OPC UA: `cmd`, `load`, `mode`,
`step`, `break add|rm`, `answer`, `ack`, `force`, `unforce`. Each prints the service's Result
line; a refusal its reason, with exit 7 (state, role) or 1 (an argument)."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from cellctl.cli.app import app, break_app
from cellctl.cli.remote import CertsOption, ServerOption, UserOption, call, target


def _assignment(text: str, what: str, form: str) -> tuple[str, str]:
    """(NAME, VALUE) of `NAME=VALUE`; BadValue naming the argument otherwise."""
    from cellctl.errors import BadValue

    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise BadValue(f"{what} {text!r}: write {form}")
    return name.strip(), value


# -- the commands ------------------------------------------------------------------------------


class CommandName(enum.StrEnum):
    """The nine PackML commands as typed."""

    RESET = "reset"
    START = "start"
    STOP = "stop"
    HOLD = "hold"
    UNHOLD = "unhold"
    SUSPEND = "suspend"
    UNSUSPEND = "unsuspend"
    ABORT = "abort"
    CLEAR = "clear"


class UnholdChoice(enum.StrEnum):
    """What Unhold does with a failed step."""

    RETRY = "retry"
    SKIP = "skip"


class StepChoice(enum.StrEnum):
    """What `step` does with the step paused before."""

    RUN = "run"
    SKIP = "skip"
    CONTINUE = "continue"
    ABORT = "abort"


@app.command("cmd")
def cmd(
    command: Annotated[
        CommandName, typer.Argument(help="the PackML command", case_sensitive=False)
    ],
    choice: Annotated[
        UnholdChoice | None,
        typer.Option(
            "--choice", help="unhold only: retry or skip the step that failed", case_sensitive=False
        ),
    ] = None,
    server: ServerOption = None,
    user: UserOption = None,
    certs: CertsOption = None,
) -> None:
    """Send a PackML command to the running service (operator)."""
    from cellctl.errors import BadValue

    if choice is not None and command is not CommandName.UNHOLD:
        raise BadValue(f"--choice {choice}: only unhold takes a choice, not {command}")
    method = command.value.capitalize()  # the method is the command's name: Reset, Start, ...
    args = (choice.value if choice is not None else "",) if command is CommandName.UNHOLD else ()
    call(target(server, user, certs), method, *args)


@app.command()
def load(
    recipe: Annotated[str, typer.Argument(metavar="RECIPE", help="a released recipe's name")],
    parameters: Annotated[
        list[str] | None,
        typer.Option("--parameter", "-p", metavar="NAME=VALUE", help="a recipe parameter"),
    ] = None,
    server: ServerOption = None,
    user: UserOption = None,
    certs: CertsOption = None,
) -> None:
    """Load a released recipe into the running service, with its parameters (operator)."""
    texts = parameters or []
    for text in texts:
        _assignment(text, "-p", "NAME=VALUE")
    call(target(server, user, certs), "LoadRecipe", recipe, texts)


@app.command()
def mode(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Production, Maintenance or Manual")],
    server: ServerOption = None,
    user: UserOption = None,
    certs: CertsOption = None,
) -> None:
    """Change the running service's unit mode (engineer)."""
    from cellctl.service.handlers import parse_mode

    # The service's own check, here too: a typo is named before anything is sent.
    call(target(server, user, certs), "SetMode", parse_mode(name).value)


@app.command()
def step(
    choice: Annotated[
        StepChoice,
        typer.Argument(help="what to do with the step paused before", case_sensitive=False),
    ] = StepChoice.RUN,
    server: ServerOption = None,
    user: UserOption = None,
    certs: CertsOption = None,
) -> None:
    """Step the running service's batch: run, skip, continue or abort (engineer)."""
    call(target(server, user, certs), "Step", choice.value)


@break_app.command("add")
def break_add(
    step_id: Annotated[str, typer.Argument(metavar="ID", help="the step's id")],
    server: ServerOption = None,
    user: UserOption = None,
    certs: CertsOption = None,
) -> None:
    """Pause the batch before a step (engineer)."""
    call(target(server, user, certs), "AddBreakpoint", step_id)


@break_app.command("rm")
def break_rm(
    step_id: Annotated[str, typer.Argument(metavar="ID", help="the step's id")],
    server: ServerOption = None,
    user: UserOption = None,
    certs: CertsOption = None,
) -> None:
    """Remove a breakpoint (engineer)."""
    call(target(server, user, certs), "RemoveBreakpoint", step_id)


@app.command()
def answer(
    step_id: Annotated[str, typer.Argument(metavar="ID", help="the prompt's step id")],
    value: Annotated[str, typer.Argument(metavar="VALUE", help="the answer")],
    server: ServerOption = None,
    user: UserOption = None,
    certs: CertsOption = None,
) -> None:
    """Answer the prompt the running batch waits on (operator)."""
    call(target(server, user, certs), "AnswerPrompt", step_id, value)


@app.command()
def ack(
    server: ServerOption = None,
    user: UserOption = None,
    certs: CertsOption = None,
) -> None:
    """Acknowledge the running service's trips: cleared ones leave its list (operator)."""
    call(target(server, user, certs), "Acknowledge")


@app.command()
def force(
    assignment: Annotated[str, typer.Argument(metavar="TAG=VALUE", help="the tag and value")],
    server: ServerOption = None,
    user: UserOption = None,
    certs: CertsOption = None,
) -> None:
    """Force a tag of the running service to a value until unforced (engineer)."""
    tag, value = _assignment(assignment, "force", "TAG=VALUE")
    call(target(server, user, certs), "Force", tag, value)


@app.command()
def unforce(
    tag: Annotated[str, typer.Argument(metavar="TAG", help="a forced tag")],
    server: ServerOption = None,
    user: UserOption = None,
    certs: CertsOption = None,
) -> None:
    """Release a forced tag of the running service (engineer)."""
    call(target(server, user, certs), "Unforce", tag)
