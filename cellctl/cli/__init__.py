"""The `cellctl` command line: parse arguments, print, exit codes. The work is done elsewhere."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console, RenderableType
from rich.live import Live
from typer.core import TyperCommand, TyperGroup
from typer.exceptions import TyperException

from cellctl import __version__, exitcodes, textvalue
from cellctl.cell import Cell, load_cell
from cellctl.cell.tags import parse_value, tag_units, text_type
from cellctl.cli.schema import FileKind, schema_of, schema_of_both
from cellctl.cli.validate import open_recipe, validate_files
from cellctl.cli.views.tags import plain_line, tag_table
from cellctl.durations import DurationError, parse_duration
from cellctl.errors import BadValue, CellctlError, Problem, ValidationFailed
from cellctl.io.commissioning import check_cell
from cellctl.io.drivers import DeviceFailed, DevicesUnreachable, non_loopback_endpoints
from cellctl.io.session import CellSession, tags_to_read
from cellctl.logsetup import active_log_file, configure_logging
from cellctl.recipe.plan import make_plan, plan_lines, plan_view
from cellctl.values import TagValue
from drivers.base import Quality
from drivers.codecs import format_value
from drivers.errors import DriverError

if TYPE_CHECKING:  # the controller is imported by the commands that run it
    # typer's vendored click, for types only: at run time typer hands these in.
    from typer._click import Context, Parameter
    from typer.models import CommandFunctionType

    from cellctl.cli.batch import RunOptions


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
# emoji=False: rich would turn ':100:' in 'cell.yaml:100:1: ...' into an emoji.
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

#: Where the demo cell is: shipped in the installed package (pyproject.toml maps recipes/demo
#: to cellctl/_demo), or, run from a source tree, recipes/demo itself.
_PACKAGE = Path(__file__).resolve().parent.parent  # the cellctl package
DEMO_FOLDERS = (_PACKAGE / "_demo", _PACKAGE.parent / "recipes" / "demo")
DEMO_RECIPE = "press-fit.yaml"

#: Seconds `sim` and `read --watch` get to finish by themselves after SIGINT/SIGTERM.
STOP_GRACE = 2.0

CellOption = Annotated[
    Path, typer.Option("--cell", "-c", help="the cell file (recipes/<cell>/cell.yaml)")
]


DEFAULT_SAFE_WAIT = "5m"
SafeWaitOption = Annotated[
    str,
    typer.Option(
        "--safe-wait",
        metavar="DURATION",
        help="once the batch ended, how long to wait for the safe state to be confirmed "
        "(exit 5 past it)",
    ),
]


class DemoMissing(CellctlError):
    """`demo` found no demo cell, or no press-fit recipe beside the cell it was given."""


def demo_cell() -> Path:
    """The demo cell file, installed or in the source tree."""
    for folder in DEMO_FOLDERS:
        if (folder / "cell.yaml").is_file():
            return folder / "cell.yaml"
    looked = " or ".join(str(folder / "cell.yaml") for folder in DEMO_FOLDERS)
    raise DemoMissing(f"the demo cell is not installed: no {looked} (reinstall cellctl)")


class _Stop(Exception):
    """Ends a command with an exit code after its message was printed."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _exit_code_of(error: BaseException) -> int:
    """Map a failure to the CLI's exit-code convention."""
    if isinstance(error, DevicesUnreachable | DeviceFailed | DriverError):
        return exitcodes.DEVICE_FAILURE
    code = getattr(error, "exit_code", None)
    return code if isinstance(code, int) else exitcodes.BAD_INPUT


def _fail(error: BaseException) -> _Stop:
    """Print an error a technician can act on (no traceback) and return the stop to raise."""
    problems = error.problems if isinstance(error, ValidationFailed) else None
    if problems:
        for problem in problems:
            err.print(str(problem), markup=False)
    else:
        for line in str(error).splitlines() or [type(error).__name__]:
            err.print(f"error: {line}", markup=False)
    return _Stop(_exit_code_of(error))


async def _until_signalled(work: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `work(stop)` where SIGINT/SIGTERM set `stop`: the normal end of sim and --watch."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    task = asyncio.ensure_future(work(stop))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            # The work ends by itself when it sees `stop`; one still connecting does not look,
            # so it is cancelled (its drivers and simulators close on the way out).
            await asyncio.wait({task}, timeout=STOP_GRACE)
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        stopped.cancel()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _plain(line: str) -> None:
    """A line for scripts, tabs kept (rich's print would expand them to spaces)."""
    out.file.write(line + "\n")


def _version(value: bool) -> None:
    if value:
        out.print(f"cellctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
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
    # A --log-file that cannot be opened ends here, before the command does anything.
    configure_logging(log_file, debug=debug)


ParamOption = Annotated[
    list[str] | None,
    typer.Option("--param", "-p", metavar="NAME=VALUE", help="a recipe parameter (repeatable)"),
]


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(metavar="FILE...", help="cell or recipe files")],
    cell: Annotated[
        Path | None,
        typer.Option(
            "--cell", "-c", help="the cell of the recipes (default: cell.yaml beside each)"
        ),
    ] = None,
    params: ParamOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print problems as JSON")] = False,
) -> None:
    """Check cell and recipe files; every problem as FILE:LINE:COL: message."""
    problems: list[Problem] = validate_files(files, cell, params or ())
    if as_json:
        out.print_json(json.dumps([p.to_json() for p in problems]))
    else:
        for problem in problems:
            err.print(str(problem), markup=False)
        if not problems:
            out.print(f"{len(files)} file(s) valid")
    if problems:
        raise _Stop(exitcodes.BAD_INPUT)


@app.command()
def plan(
    recipe: Annotated[Path, typer.Argument(metavar="RECIPE", help="the recipe file")],
    cell: Annotated[
        Path | None,
        typer.Option("--cell", "-c", help="the cell file (default: cell.yaml beside the recipe)"),
    ] = None,
    params: ParamOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the plan as JSON")] = False,
) -> None:
    """Dry run: the step tree with parameters resolved, tags, devices, worst case; no device."""
    made = make_plan(open_recipe(recipe, cell), params or ())  # errors: see run()
    if as_json:
        out.print_json(json.dumps(made.to_json()))
    elif out.is_terminal:
        out.print(plan_view(made), soft_wrap=False)  # long steps wrap, never cut
    else:
        for line in plan_lines(made):
            out.print(line, markup=False)


@app.command()
def schema(
    kind: Annotated[
        FileKind | None,
        typer.Argument(
            metavar="KIND", help="recipe or cell (default: either, for one editor setting)"
        ),
    ] = None,
) -> None:
    """Print the JSON Schema of recipe or cell files, for editors' YAML language servers."""
    out.print(
        json.dumps(schema_of(kind) if kind else schema_of_both(), indent=2),
        markup=False,
    )


@app.command()
def read(
    tags: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="TAG|DEVICE...", help="tags, or devices (all their tags); default: every tag"
        ),
    ] = None,
    cell: CellOption = ...,  # type: ignore[assignment]
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="keep showing values until Ctrl-C")
    ] = False,
) -> None:
    """Read tags (or all tags of a device) from whatever serves the cell file's endpoints."""
    spec = load_cell(cell)
    names = tags_to_read(spec, tags or ())
    units = tag_units(spec)
    if watch:
        asyncio.run(_until_signalled(lambda stop: _watch(spec, names, stop)))
        return
    values = asyncio.run(_read_once(spec, names))
    if as_json:
        out.print_json(json.dumps([_json_value(v, units) for v in values]))
    elif out.is_terminal:
        out.print(tag_table(values, units=units))
    else:
        for value in values:
            _plain(plain_line(value, units.get(value.tag)))
    # One line per cause: a device that is down fails all its tags with the same error.
    causes: dict[tuple[str, str], list[str]] = {}
    for value in values:
        if value.error is not None:
            severity = "error" if value.quality is Quality.BAD else "warning"
            causes.setdefault((severity, value.error), []).append(value.tag)
    for (severity, cause), tags in causes.items():
        who = tags[0] if len(tags) == 1 else f"{len(tags)} tags ({tags[0]}, …)"
        err.print(f"{severity}: {who}: {cause}", markup=False)
    if any(v.quality is Quality.BAD for v in values):
        raise _Stop(exitcodes.DEVICE_FAILURE)


async def _read_once(cell: Cell, names: list[str]) -> list[TagValue]:
    async with CellSession(cell, names, partial=True) as session:
        return list((await session.read()).values())


def _json_safe(value: object) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _json_value(value: TagValue, units: dict[str, str]) -> dict[str, Any]:
    return {
        "tag": value.tag,
        "device": value.device,
        # JSON has no NaN or Infinity (an unset float32 register often reads NaN): null, and
        # the text shows what it was.
        "value": value.value if _json_safe(value.value) else None,
        "text": format_value(value.value),
        "unit": units.get(value.tag),
        "quality": value.quality.value,
        "timestamp": value.timestamp,
        "error": value.error,
    }


async def _watch(cell: Cell, names: list[str], stop: asyncio.Event) -> None:
    async with CellSession(cell, names) as session:
        latest: dict[str, TagValue] = await session.read()
        unsubscribe = session.subscribe(lambda value: latest.__setitem__(value.tag, value))
        try:
            units = tag_units(cell)
            with Live(
                tag_table(latest.values(), cell.cell, units), console=out, auto_refresh=False
            ) as live:
                while not stop.is_set():
                    live.update(
                        tag_table([latest[n] for n in names], cell.cell, units), refresh=True
                    )
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.25):
                            await stop.wait()
        finally:
            unsubscribe()
        if not out.is_terminal:
            out.print()  # rich leaves the last frame without a newline off a terminal


@app.command()
def write(
    assignments: Annotated[
        list[str], typer.Argument(metavar="TAG=VALUE...", help="written in order")
    ],
    cell: CellOption = ...,  # type: ignore[assignment]
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="write to non-loopback endpoints without asking")
    ] = False,
) -> None:
    """Write tags; each write is reported only once the device confirmed it."""
    spec = load_cell(cell)
    pairs: list[tuple[str, Any]] = []
    problems: list[str] = []
    for text in assignments:
        tag, sep, raw = text.partition("=")
        if not sep:
            problems.append(f"{text!r}: write TAG=VALUE")
            continue
        try:
            # The value as typed: a string tag takes its spaces (cellctl.textvalue).
            pairs.append((tag.strip(), parse_value(spec, tag.strip(), raw)))
        except CellctlError as error:
            problems.append(str(error))
    if problems:
        for problem in problems:
            err.print(f"error: {problem}", markup=False)
        raise _Stop(exitcodes.BAD_INPUT)
    remote = non_loopback_endpoints(spec, [t for t, _ in pairs])
    if remote and not yes:
        if not sys.stdin.isatty():
            err.print(
                f"error: {', '.join(remote)} is not on this machine: pass --yes to write to it",
                markup=False,
            )
            raise _Stop(exitcodes.BAD_INPUT)
        if not typer.confirm(f"Write to {', '.join(remote)}, a real machine?"):
            raise _Stop(exitcodes.BAD_INPUT)
    asyncio.run(_write_all(spec, pairs))


async def _write_all(cell: Cell, pairs: list[tuple[str, Any]]) -> None:
    async with CellSession(cell, [t for t, _ in pairs]) as session:
        for tag, value in pairs:
            await session.write(tag, value)
            spec = cell.tags[tag]
            # As the device stores it: a scaled tag holds whole raw steps (12.34 at scale 0.1
            # is raw 123, so 12.3).
            shown = textvalue.show(spec.from_raw(spec.to_raw(value)), text_type(spec))
            out.print(f"{tag} = {shown} (confirmed)", markup=False)


@app.command()
def check(cell_file: Annotated[Path, typer.Argument(metavar="CELL", help="the cell file")]) -> None:
    """Commissioning check: reach every device, read every tag, compare OPC UA nodes."""
    spec = load_cell(cell_file)
    results = asyncio.run(check_cell(spec))
    failed = False
    for result in results:
        status = "ok" if result.ok else "FAIL"
        rtt = f"{result.round_trip * 1000:.1f} ms" if result.round_trip is not None else "-"
        out.print(
            f"{status:4} {result.device:16} {result.endpoint}  rtt {rtt}  {result.health}",
            markup=False,
        )
        for problem in result.problems:
            out.print(f"     {result.device}: {problem}", markup=False)
        failed = failed or not result.ok
    if failed:
        raise _Stop(exitcodes.DEVICE_FAILURE)


@app.command()
def sim(
    cell_file: Annotated[Path, typer.Argument(metavar="CELL", help="the cell file")],
    speed: Annotated[
        float, typer.Option("--speed", min=0.01, max=1000, help="model time factor")
    ] = 1.0,
    write_cell: Annotated[
        Path | None,
        typer.Option(
            "--write-cell", help="write a copy of the cell file pointing at what is served"
        ),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="address to serve on")] = "127.0.0.1",
) -> None:
    """Serve every device of a cell on simulators until SIGINT/SIGTERM."""
    from cellctl.io.sim import CellSimulator, check_cell_copy, serve_host

    host = serve_host(host)  # checked before any port opens
    spec = load_cell(cell_file)
    if write_cell is not None:
        check_cell_copy(cell_file, write_cell)

    async def serve(stop: asyncio.Event) -> None:
        simulator = CellSimulator(spec, speed=speed, host=host, keep_ports=True)
        async with simulator:
            for served in simulator.endpoints():
                out.print(f"{served.device:16} {served.driver:11} {served.endpoint}", markup=False)
            if write_cell is not None:
                simulator.write_cell(cell_file, write_cell)
                out.print(f"cell file for clients: {write_cell}", markup=False)
            out.print("serving; Ctrl-C or SIGTERM stops", markup=False)
            await stop.wait()

    asyncio.run(_until_signalled(serve))


def _interactive() -> bool:
    """True when somebody can answer at a terminal (stdin and stdout are terminals)."""
    return sys.stdin.isatty() and out.is_terminal


@app.command("run")
def run_recipe(
    recipe: Annotated[Path, typer.Argument(metavar="RECIPE", help="the recipe file")],
    cell: Annotated[
        Path | None,
        typer.Option("--cell", "-c", help="the cell file (default: cell.yaml beside the recipe)"),
    ] = None,
    params: ParamOption = None,
    sim: Annotated[
        bool, typer.Option("--sim", help="start the cell's simulators in this process first")
    ] = False,
    speed: Annotated[
        float, typer.Option("--speed", min=0.01, max=1000, help="model time factor (--sim)")
    ] = 1.0,
    step: Annotated[
        bool, typer.Option("--step", help="pause before every step (Maintenance mode)")
    ] = False,
    breaks: Annotated[
        list[str] | None,
        typer.Option("--break", metavar="STEP_ID", help="pause before this step (repeatable)"),
    ] = None,
    answers: Annotated[
        list[str] | None,
        typer.Option("--answer", metavar="ID=VALUE", help="answer a prompt (repeatable)"),
    ] = None,
    operator: Annotated[
        str | None, typer.Option("--operator", help="who runs the batch (recorded)")
    ] = None,
    safe_wait: SafeWaitOption = DEFAULT_SAFE_WAIT,
) -> None:
    """Run a recipe to Complete: Reset, Start, a live view; Ctrl-C holds, SIGTERM stops."""
    from cellctl.cli.batch import RunOptions

    if speed != 1.0 and not sim:
        err.print("error: --speed sets the simulators' time; it needs --sim", markup=False)
        raise _Stop(exitcodes.BAD_INPUT)
    options = RunOptions(
        recipe=recipe,
        cell=cell,
        params=params or [],
        sim=sim,
        speed=speed,
        step=step,
        breaks=breaks or [],
        answers=answers or [],
        operator=operator,
        interactive=_interactive(),
        safe_wait=_safe_wait(safe_wait),
    )
    _finish(options)


def _safe_wait(text: str) -> float:
    """--safe-wait as seconds; a bad duration is bad input naming the option."""
    try:
        seconds = parse_duration(text)
    except DurationError as error:
        raise BadValue(f"--safe-wait {text}: {error}") from None
    if seconds <= 0:  # no time to read the safe state back: every batch would end unconfirmed
        raise BadValue(f"--safe-wait {text}: give a duration above zero (e.g. 30s, 5m)")
    return seconds


def _finish(options: RunOptions) -> None:
    """Check the inputs, run the batch, exit with its code."""
    from cellctl.cli.batch import run_command

    # A cellctl or driver error reaches run(), which prints it with its exit code.
    code = asyncio.run(run_command(options, out)())
    if code != exitcodes.OK:
        raise _Stop(code)


@app.command()
def demo(
    fault: Annotated[
        str | None,
        typer.Option("--fault", help="break this mid-batch, then restore it (light-curtain)"),
    ] = None,
    cell_file: Annotated[
        Path | None,
        typer.Option(
            "--cell",
            metavar="CELL",
            help=f"the cell to simulate, with {DEMO_RECIPE} beside it (default: the demo cell)",
        ),
    ] = None,
    speed: Annotated[
        float, typer.Option("--speed", min=0.01, max=1000, help="model time factor")
    ] = 1.0,
    params: ParamOption = None,
    safe_wait: SafeWaitOption = DEFAULT_SAFE_WAIT,
) -> None:
    """Run press-fit on the demo cell's simulators, in this process, to Complete."""
    from cellctl.cli.batch import RunOptions

    if cell_file is None:
        cell_file = demo_cell()
    recipe = cell_file.parent / DEMO_RECIPE
    if not recipe.is_file():
        raise DemoMissing(
            f"demo runs the {DEMO_RECIPE} recipe beside its cell file, and there is no "
            f"{recipe}; run another recipe with: cellctl run RECIPE --sim --cell {cell_file}"
        )
    options = RunOptions(
        recipe=recipe,
        cell=cell_file,
        params=params or [],
        sim=True,
        speed=speed,
        interactive=_interactive(),
        operator="demo",
        fault=fault,
        safe_wait=_safe_wait(safe_wait),
    )
    _finish(options)


@app.command()
def states(
    mermaid: Annotated[
        bool, typer.Option("--mermaid", help="a mermaid stateDiagram-v2 instead of the table")
    ] = False,
) -> None:
    """The PackML state table: for each state, where each command takes it."""
    from cellctl.control import machine

    if mermaid:
        out.print(machine.mermaid(), markup=False)
        return
    rows = machine.state_table_rows()
    if out.is_terminal:
        out.print(_state_table(rows), soft_wrap=False)
    else:
        for row in rows:
            _plain("\t".join(row))


def _state_table(rows: list[tuple[str, ...]]) -> RenderableType:
    """The state table as a grid (a column per command) where the terminal is wide enough for
    it, else one row per transition: never a state cut short."""
    from rich.measure import Measurement
    from rich.table import Table

    grid = Table(*rows[0])
    for row in rows[1:]:
        grid.add_row(*row)
    natural = Measurement.get(out, out.options.update_width(10_000), grid).maximum
    if natural <= out.width:
        return grid
    header = rows[0]
    narrow = Table(header[0], "Command", "Next state")
    for state, *targets in rows[1:]:
        moves = [(header[n], target) for n, target in enumerate(targets, 1) if target]
        for n, (command, target) in enumerate(moves):
            last = n == len(moves) - 1
            narrow.add_row(state if n == 0 else "", command, target, end_section=last)
    return narrow


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on argv and return its exit code (used in-process by the tests)."""
    try:
        result = app(args=argv, prog_name="cellctl", standalone_mode=False)
    except _Stop as stop:
        return stop.code
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
        return _fail(error).code
    except Exception as error:  # a bug of ours: one line here, the traceback in the log file
        # INFO, not ERROR: the console handler shows ERROR records, and this one has its line.
        logging.getLogger("cellctl").info("internal error", exc_info=error)
        log_file = active_log_file()
        where = f"traceback in {log_file}; " if log_file else ""
        err.print(
            f"error: internal error: {type(error).__name__}: {error} ({where}please report it)",
            markup=False,
        )
        return exitcodes.INTERNAL_ERROR
    return int(result) if isinstance(result, int) else exitcodes.OK
