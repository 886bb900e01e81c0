"""structlog's events reach the log file's thread without a stdlib record made on the caller's
thread, and the thread's backlog stays bounded without losing a record."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import structlog

from cellctl import logsetup
from cellctl.logsetup import flush_logs
from cellctl.logwriter import BACKLOG
from tests.support import cellctls_handlers_only


def lines(log: Path, logger: str) -> list[dict[str, Any]]:
    """The JSON records of `logger` in the log file."""
    text = log.read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, text) if r.get("logger") == logger]


def test_an_info_event_makes_no_record_on_the_callers_thread(log_file: Path) -> None:
    made: list[str] = []
    factory = logging.getLogRecordFactory()

    def counting(*args: Any, **kwargs: Any) -> logging.LogRecord:
        made.append(threading.current_thread().name)
        return factory(*args, **kwargs)

    # pytest's own capturing handlers take every record: out of the way, as outside tests.
    with cellctls_handlers_only():
        logging.setLogRecordFactory(counting)
        try:
            structlog.get_logger("cellctl.offloop").info("stepped", n=1)
            flush_logs()
        finally:
            logging.setLogRecordFactory(factory)
    assert threading.current_thread().name not in made
    [record] = lines(log_file, "cellctl.offloop")
    assert (record["event"], record["n"], record["level"]) == ("stepped", 1, "info")


def test_the_backlog_stays_bounded_and_every_record_is_written(log_file: Path) -> None:
    log = structlog.get_logger("cellctl.backlog")
    writer = logsetup._WRITER[0]
    most = 0
    for n in range(3 * BACKLOG):
        log.info("counted", n=n)
        most = max(most, writer.records.qsize())
    flush_logs()
    assert most <= BACKLOG + 1
    assert [r["n"] for r in lines(log_file, "cellctl.backlog")] == list(range(3 * BACKLOG))
