"""The log file rotates (a size bound, a few old files kept), also when two processes share
it; operator commands reach the batch record with who gave them."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from cellctl.control.commands import Commands, OperatorCommand
from cellctl.control.journal.recorder import BatchRecorder
from cellctl.control.journal.rows import Kind
from cellctl.control.journal.store import SqliteStore
from cellctl.control.journal.writer import JournalWriter
from cellctl.control.machine import Command, State
from cellctl.logfile import _JsonLinesFile, _open_for_append
from cellctl.logsetup import configure_logging, flush_logs
from tests.test_controller import CALLING, Bench, failing_pick, start


def handler(path: Path, max_bytes: int = 200, backups: int = 2) -> _JsonLinesFile:
    return _JsonLinesFile(path, _open_for_append(path), max_bytes=max_bytes, backups=backups)


def test_the_log_file_rotates_past_its_bound_keeping_a_few_old_files(tmp_path: Path) -> None:
    path = tmp_path / "cellctl.log"
    log = handler(path)
    lines = [f'{{"n": {n:04d}, "pad": "{"x" * 20}"}}' for n in range(60)]
    for line in lines:
        log.write_line(line)
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["cellctl.log", "cellctl.log.1", "cellctl.log.2"]
    assert all(os.path.getsize(tmp_path / name) <= 200 for name in files)
    kept = (
        path.with_name("cellctl.log.2").read_text()
        + path.with_name("cellctl.log.1").read_text()
        + path.read_text()
    ).splitlines()
    assert kept == lines[-len(kept) :]  # the newest, in order, none cut


def test_a_file_rotated_by_another_process_is_reopened_not_rotated_again(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cellctl.log"
    first, second = handler(path), handler(path)
    line = "y" * 60
    for _ in range(3):
        first.write_line(line)  # 183 bytes: the next line of `first` rotates
    first.write_line(line)  # first rotates: cellctl.log.1 holds 3 lines
    for _ in range(3):  # second's own count is below its bound: on to the file it opened
        second.write_line(line)
    second.write_line(line)  # past its bound: the file was rotated by `first`: reopened only
    first.close()
    second.close()
    assert path.with_name("cellctl.log.1").read_text().count("\n") == 6
    assert path.read_text().count("\n") == 2
    assert not path.with_name("cellctl.log.2").exists()  # nothing rotated twice, nothing lost


def test_operator_commands_are_recorded_with_who_gave_them(tmp_path: Path) -> None:
    async def scenario() -> None:
        rig = Bench()
        writer = JournalWriter(SqliteStore(tmp_path / "j.sqlite"))
        recorder = BatchRecorder(writer, "B-c")
        commands = Commands(rig.ctl)
        commands.heard.append(recorder.command)
        await rig.io.connect()
        await rig.ctl.open()
        try:
            await commands.submit(OperatorCommand("ana", Command.HOLD, "ana (key h)"))
        finally:
            await rig.ctl.close()
            await rig.io.close()
            await writer.flush()
            writer.close()

    asyncio.run(scenario())
    store = SqliteStore(tmp_path / "j.sqlite", readonly=True)
    rows = [r.data() for r in store.rows("B-c") if r.kind == Kind.COMMAND]
    store.close()
    assert rows == [{"command": "Hold", "operator": "ana", "source": "ana (key h)", "choice": None}]


@pytest.mark.asyncio
async def test_a_writes_and_a_calls_log_lines_name_their_device_and_step(tmp_path: Path) -> None:
    # The log file's lines, as a technician reads them (structlog's capture_logs would miss
    # them: the controller's logger is cached once any earlier test logged through it).
    log_file = tmp_path / "cellctl.log"
    configure_logging(log_file)
    try:
        rig = Bench(CALLING)
        failing_pick(rig, 0)
        rig.device("line.feed", 4)
        await rig.io.connect()
        await rig.ctl.open()
        try:
            await start(rig)
            assert await rig.settle(State.COMPLETE) is State.COMPLETE
        finally:
            await rig.ctl.close()
            await rig.io.close()
        flush_logs()
    finally:
        configure_logging()
    logs = [json.loads(line) for line in log_file.read_text(encoding="utf-8").splitlines()]
    named = {
        (line["event"], line.get("tag") or line.get("method")): (
            line.get("device"),
            line.get("step_id"),
        )
        for line in logs
        if line["event"] in ("TagWritten", "MethodCalled")
    }
    assert named[("TagWritten", "line.run")] == ("line", "go")
    assert named[("MethodCalled", "arm.pick")] == ("arm", "pick")
    assert named[("TagWritten", "line.count")] == ("line", "count")
