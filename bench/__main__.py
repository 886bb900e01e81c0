"""`python -m bench [--quick] [--json FILE] [--only N,...]`: run the benchmarks, print every
figure beside its reference, write the results as JSON."""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import sys
import traceback
from pathlib import Path
from typing import Any

from bench.figure import Figure
from bench.state import isolated, journal_where

#: The benchmark modules, in the order of the figures they produce.
MODULES = (
    "bench.steps",  # 1-3: set steps over Modbus TCP and OPC UA, wait reaction
    "bench.peer",  # 4, 9: memory driver against bluesky's RunEngine; RSS after long batches
    "bench.reaction",  # 5: interlock reaction
    "bench.scale",  # 6: 10, 25, 50 devices x 100 tags at 10 Hz
    "bench.decode",  # 6: decode and delivery per polled tag, CPU of a 100-tag poll cycle
    "bench.startup",  # 7-8: loading, start times
    "bench.journal",  # 10-11: a durable intent beside a bare commit; set steps, journal on
    "bench.service",  # 12-13: cellctl serve's status and command round trips, 0 and 50 idle
    "bench.web",  # 14: event to page: a state change to the web view's open pages, 1 and 10
)


def machine() -> dict[str, Any]:
    """What the figures were measured on: machine, Python and library versions, date."""
    versions: dict[str, str] = {}
    for name in ("cellctl", "pymodbus", "asyncua", "bluesky", "ophyd", "ruamel.yaml", "pydantic"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": sys.version.split()[0],
        "versions": versions,
    }


def show(figure: Figure) -> str:
    """One figure as a line: number, name, ours, the reference, the ratio, the goal, verdict."""
    reference = (
        f"{figure.reference:.4g} {figure.unit} ({figure.reference_name})"
        if figure.reference is not None
        else "-"
    )
    ratio = f"{figure.ratio:.2f}" if figure.ratio is not None else "-"
    verdict = {True: "pass", False: "FAIL", None: ""}[figure.passed]
    line = (
        f"{figure.number:>2} {figure.name:<44} {figure.ours:>10.4g} {figure.unit:<8} "
        f"ref {reference:<36} ratio {ratio:>6}  goal {figure.goal:<24} {verdict}"
    )
    return line + (f"\n     {figure.detail}" if figure.detail else "")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks; exit 0 when every figure ran (a missed goal is reported, not
    an error), 1 when a benchmark itself failed."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (under 3 min)")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--only", help="comma-separated module names (e.g. steps,startup)")
    options = parser.parse_args(argv)
    chosen: tuple[str, ...] = MODULES
    if options.only:
        wanted = {f"bench.{name.strip()}" for name in options.only.split(",")}
        chosen = tuple(m for m in MODULES if m in wanted)
    about = machine()
    load = ", ".join(f"{x:.2f}" for x in about["load_average"])
    print(
        f"cellctl bench on {about['platform']}, {about['cpus']} CPUs, Python {about['python']}, "
        f"load average {load}"
    )
    print(", ".join(f"{k} {v}" for k, v in about["versions"].items()), flush=True)
    figures: list[Figure] = []
    failed: dict[str, str] = {}
    # Every `cellctl run` of the bench, in this process or a child, journals and locks in a
    # folder of the bench's own (bench/state.py), never the user's journal or /run/lock/cellctl.
    with isolated():
        print(f"{journal_where()} unless a figure says otherwise; locks in the bench's own folder")
        about["journal"] = journal_where()
        for name in chosen:
            try:
                module = importlib.import_module(name)
                for figure in module.measure(options.quick):
                    figures.append(figure)
                    print(show(figure), flush=True)
            except Exception:  # one broken benchmark must not hide the others' figures
                failed[name] = traceback.format_exc()
                print(f"{name}: FAILED\n{failed[name]}", file=sys.stderr, flush=True)
    if options.json is not None:
        results = {"machine": about, "quick": options.quick, "failed": failed}
        results["figures"] = [f.to_json() for f in figures]
        options.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
