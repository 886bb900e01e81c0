"""`cellctl run` refuses bad input with exit 1 and one clear line, before anything connects;
`cellctl states` prints the PackML table and its mermaid diagram."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from cellctl.control.machine import Command, State
from cellctl.testing import cli

CELL = """\
cell: quiet
devices:
  plc: {{driver: modbus-tcp, host: 127.0.0.1, port: {port}, timeout: 300ms, retries: 1}}
tags:
  plc.run:   {{device: plc, address: "coil:0", access: rw}}
  plc.speed: {{device: plc, address: "hr:0", type: uint16, access: rw, min: 0, max: 3000}}
  plc.force: {{device: plc, address: "hr:2", type: float32, access: rw, min: 0, max: 25}}
"""

RECIPE = """\
recipe: batch
version: 2
parameters:
  speed: {type: int, default: 1200, min: 100, max: 3000}
steps:
  - {id: start, set: {plc.run: true, plc.speed: speed}}
  - id: count
    prompt: How many parts are on the tray?
    answer: {name: parts, type: int, min: 1, max: 5}
  - {id: ready, prompt: Close the guard.}
  - {id: stop, set: {plc.run: false}}
"""

BROKEN = """\
recipe: broken
version: 1
steps:
  - {id: start, set: {plc.run: true}}
  - {id: spin, set: {plc.sped: 100}}
"""


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """The cell's only device: a listening socket that records whether anybody connected."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        yield server


@pytest.fixture
def folder(tmp_path: Path, listener: socket.socket) -> Path:
    """A cell whose device is `listener`, with a good and a broken recipe beside it."""
    (tmp_path / "cell.yaml").write_text(
        CELL.format(port=listener.getsockname()[1]), encoding="utf-8"
    )
    (tmp_path / "batch.yaml").write_text(RECIPE, encoding="utf-8")
    (tmp_path / "broken.yaml").write_text(BROKEN, encoding="utf-8")
    return tmp_path


def connected(listener: socket.socket) -> bool:
    """True when somebody connected to the device (the kernel queues the connection)."""
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


@pytest.mark.parametrize(
    ("recipe", "args", "message"),
    [
        (
            "broken.yaml",
            [],
            r"broken\.yaml:5:\d+: step 'spin': set plc\.sped: unknown tag 'plc\.sped' "
            r"\(did you mean 'plc\.speed'\?\)",
        ),
        ("missing.yaml", [], r"missing\.yaml:1:1: cannot read: No such file or directory"),
        ("batch.yaml", ["-p", "nosuch=1"], r"error: unknown parameter 'nosuch' .*has: speed"),
        ("batch.yaml", ["-p", "speed=fast"], r"error: parameter speed: .*100\.\.3000, got 'fast'"),
        ("batch.yaml", ["-p", "speed=5000"], r"error: parameter speed: 5000 is out of range"),
        ("batch.yaml", ["-p", "speed"], r"error: parameter 'speed': write name=value"),
        (
            "batch.yaml",
            ["--answer", "cuont=3"],
            r"error: --answer cuont: recipe batch has no prompt 'cuont' "
            r"\(did you mean 'count'\?\) \(its prompts: count, ready\)",
        ),
        ("batch.yaml", ["--answer", "count=9"], r"error: --answer count: 9 is out of range"),
        ("batch.yaml", ["--answer", "count=many"], r"error: --answer count: .*got 'many'"),
        ("batch.yaml", ["--answer", "count"], r"error: --answer 'count': write PROMPT_ID=VALUE"),
        (
            "batch.yaml",
            ["--answer", "ready=x", "--answer", "ready=y"],
            r"error: --answer ready is given twice",
        ),
        (
            "batch.yaml",
            ["--break", "strat"],
            r"error: --break strat: recipe batch has no step 'strat' \(did you mean 'start'\?\)",
        ),
        ("batch.yaml", ["--step"], r"error: --step and --break wait for keys at a terminal"),
        (
            "batch.yaml",
            ["--break", "stop"],
            r"error: --step and --break wait for keys at a terminal",
        ),
        ("batch.yaml", ["--speed", "4"], r"error: --speed .*needs --sim"),
        ("batch.yaml", ["--safe-wait", "0s"], r"error: --safe-wait 0s: give a duration above"),
    ],
)
def test_bad_input_exits_1_with_one_line_and_connects_nothing(
    folder: Path,
    listener: socket.socket,
    capsys: pytest.CaptureFixture[str],
    recipe: str,
    args: list[str],
    message: str,
) -> None:
    code, out, err = cli(capsys, "run", folder / recipe, *args)
    assert code == 1, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in err
    assert out == ""
    assert not connected(listener)


@pytest.mark.parametrize(
    "text", ["1_2", "１２００", "12\u00a0"], ids=["underscore", "full-width", "no-break-space"]
)
@pytest.mark.parametrize(
    ("args", "subject"),
    [
        (["write", "--cell", "{folder}/cell.yaml", "plc.speed={text}"], "tag plc.speed on device"),
        (["write", "--cell", "{folder}/cell.yaml", "plc.force={text}"], "tag plc.force on device"),
        (["run", "{folder}/batch.yaml", "-p", "speed={text}"], "parameter speed"),
        (["run", "{folder}/batch.yaml", "--answer", "count={text}"], "--answer count"),
    ],
    ids=["write-uint16", "write-float32", "p", "answer"],
)
def test_write_p_and_answer_refuse_separators_other_digits_and_junk(
    folder: Path,
    listener: socket.socket,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    subject: str,
    text: str,
) -> None:
    # `write plc.force=1_2` wrote 12 and `write plc.speed=１２００` wrote 1200 (Python's float()
    # and int() read them): one parser refuses both everywhere, before anything connects.
    code, out, err = cli(capsys, *(arg.format(folder=folder, text=text) for arg in args))
    assert code == 1, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {subject}"), lines[0]
    assert f"got {text!r}" in lines[0], lines[0]
    assert "Traceback" not in err
    assert out == ""
    assert not connected(listener)


def test_connected_sees_a_client(listener: socket.socket) -> None:
    # The check above can fail: a client that connects (as `cellctl run` does once its input is
    # good) is seen, though nobody accepted it yet.
    assert not connected(listener)
    with socket.create_connection(listener.getsockname(), timeout=1):
        assert connected(listener)


def test_states_table_has_every_state_and_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "states")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines()]
    assert set(rows[0]) >= {command.value for command in Command}
    assert [row[0] for row in rows[1:]] == [state.value for state in State]
    execute = next(row for row in rows if row[0] == "Execute")
    assert {"Holding", "Aborting", "Stopping", "Suspending"} <= set(execute)
    assert "Resetting" not in execute  # Reset is not legal in Execute


# Regression: the plain table keeps its tabs (rich would expand them to spaces).
def test_states_plain_table_is_tab_separated(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "states")
    assert code == 0
    assert all("\t" in line for line in out.splitlines()), out
    rows = [line.split("\t") for line in out.splitlines()]
    execute = dict(zip(rows[0], next(r for r in rows if r[0] == "Execute"), strict=True))
    assert execute["Hold"] == "Holding"
    assert execute["Reset"] == ""


def test_states_mermaid_is_a_state_diagram(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "states", "--mermaid")
    assert code == 0, err
    lines = [line.strip() for line in out.splitlines()]
    assert "stateDiagram-v2" in lines
    assert "Execute --> Holding: Hold" in lines
    assert "Held --> Unholding: Unhold" in lines
    for state in State:  # every state has a way out (a command or its state complete)
        assert any(line.startswith(f"{state.value} --> ") for line in lines), state


# Regression: the diagram starts with valid front matter (a YAML mapping) or the diagram.
def test_states_mermaid_starts_with_the_diagram_or_valid_front_matter(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = cli(capsys, "states", "--mermaid")
    assert code == 0
    if out.startswith("---\n"):
        front, _, body = out[4:].partition("\n---\n")
        assert isinstance(YAML(typ="safe").load(front), dict)
        assert body.startswith("stateDiagram-v2")
    else:
        assert out.startswith("stateDiagram-v2")
