"""log_info, the controller's way to log its events: the same JSON line and console line as
structlog's `bound.info(event, **fields)`, and structlog's own path under another setup."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from cellctl.logsetup import flush_logs, log_info
from tests.support import cellctls_handlers_only

FIELDS = {"path": "1.2", "step_id": "put", "value": "é ☃", "round": 3, "values": {"b": None}}


def _bound() -> structlog.stdlib.BoundLogger:
    return structlog.get_logger("cellctl.loginfo").bind(recipe="r", version=2, operator="op")  # type: ignore[no-any-return]


def _both(log: Path) -> tuple[str, str]:
    """The line bound.info writes and the one log_info writes, less their timestamps."""
    bound = _bound()
    bound.info("StepStarted", **FIELDS)
    log_info(bound, "StepStarted", lambda: dict(FIELDS))
    flush_logs()
    lines = [
        line
        for line in log.read_text(encoding="utf-8").splitlines()
        if json.loads(line).get("logger") == "cellctl.loginfo"
    ]
    assert len(lines) == 2
    stamp = ', "timestamp": '
    return lines[0].split(stamp)[0], lines[1].split(stamp)[0]


def test_the_same_line_as_structlog_when_only_the_file_takes_it(log_file: Path) -> None:
    # pytest's own capturing handlers take every record: out of the way, as outside tests.
    with cellctls_handlers_only():
        by_info, by_log_info = _both(log_file)
    assert by_log_info == by_info
    assert by_info.startswith('{"recipe": "r", "version": 2, "operator": "op", "path": "1.2"')


def test_the_same_line_and_record_when_another_handler_takes_it(
    log_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cellctl.loginfo")
    by_info, by_log_info = _both(log_file)
    assert by_log_info == by_info
    # The other handler (pytest's) got the same event dict from both.
    got = [r.msg for r in caplog.records if r.name == "cellctl.loginfo"]
    assert len(got) == 2 and got[0] == got[1]


def test_below_the_loggers_level_nothing_is_logged_nor_its_fields_made(log_file: Path) -> None:
    made: list[str] = []

    def fields() -> dict[str, object]:
        made.append("fields")
        return {"path": "1"}

    logging.getLogger("cellctl.loginfo").setLevel(logging.WARNING)
    try:
        log_info(_bound(), "StepEnded", fields)
        _bound().warning("kept", path="2")
        flush_logs()
    finally:
        logging.getLogger("cellctl.loginfo").setLevel(logging.NOTSET)
    records = [json.loads(line) for line in log_file.read_text(encoding="utf-8").splitlines()]
    assert [r["event"] for r in records if r.get("logger") == "cellctl.loginfo"] == ["kept"]
    assert made == []


def test_another_structlog_setup_gets_the_event_through_structlog() -> None:
    with capture_logs() as captured:
        log_info(_bound(), "StepEnded", lambda: {"path": "1"})
    assert captured == [
        {
            "recipe": "r",
            "version": 2,
            "operator": "op",
            "path": "1",
            "event": "StepEnded",
            "log_level": "info",
        }
    ]


def test_an_error_event_is_one_readable_console_line(
    log_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A technician reads the event and its own fields, not the record's dict or its context.
    _bound().bind(batch="B-1").error("the journal cannot be written", reason="the disk is full")
    flush_logs()
    err = capsys.readouterr().err
    assert "error: the journal cannot be written (reason=the disk is full)" in err.splitlines()
    assert "{" not in err and "recipe" not in err
