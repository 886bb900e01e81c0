"""`check` and `sim`: a cell's devices reached one by one, or served on simulators."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cellctl import exitcodes
from cellctl.cli import consoles
from cellctl.cli.app import app
from cellctl.cli.params import speed_option

# The cell model, the drivers and the simulators load when a command runs, not for every one.


@app.command()
def check(cell_file: Annotated[Path, typer.Argument(metavar="CELL", help="the cell file")]) -> None:
    """Commissioning check: reach every device, read every tag, compare OPC UA nodes."""
    import asyncio

    from cellctl.cell import load_cell
    from cellctl.io.commissioning import check_cell

    spec = load_cell(cell_file)
    results = asyncio.run(check_cell(spec))
    for result in results:
        status = "ok" if result.ok else "FAIL"
        rtt = f"{result.round_trip * 1000:.1f} ms" if result.round_trip is not None else "-"
        consoles.out.print(
            f"{status:4} {result.device:16} {result.endpoint}  rtt {rtt}  {result.health}",
            markup=False,
        )
        for problem in result.problems:
            consoles.out.print(f"     {result.device}: {problem}", markup=False)
    if not all(result.ok for result in results):
        raise typer.Exit(exitcodes.DEVICE_FAILURE)


@app.command()
def sim(
    cell_file: Annotated[Path, typer.Argument(metavar="CELL", help="the cell file")],
    speed: Annotated[float, speed_option("model time factor")] = 1.0,
    write_cell: Annotated[
        Path | None,
        typer.Option(
            "--write-cell", help="write a copy of the cell file pointing at what is served"
        ),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="address to serve on")] = "127.0.0.1",
) -> None:
    """Serve every device of a cell on simulators until SIGINT/SIGTERM."""
    import asyncio

    from cellctl.cell import load_cell_and_bytes
    from cellctl.cli.signals import until_signalled
    from cellctl.io.sim import CellSimulator, check_cell_copy, serve_host

    host = serve_host(host)  # checked before any port opens
    spec, raw = load_cell_and_bytes(cell_file)
    if write_cell is not None:
        check_cell_copy(cell_file, write_cell)

    async def serve(stop: asyncio.Event) -> None:
        simulator = CellSimulator(spec, speed=speed, host=host, keep_ports=True)
        async with simulator:
            for served in simulator.endpoints():
                consoles.out.print(
                    f"{served.device:16} {served.driver:11} {served.endpoint}", markup=False
                )
            if write_cell is not None:
                simulator.write_cell(cell_file, write_cell, raw)
                consoles.out.print(f"cell file for clients: {write_cell}", markup=False)
            consoles.out.print("serving; Ctrl-C or SIGTERM stops", markup=False)
            await stop.wait()

    asyncio.run(until_signalled(serve))
