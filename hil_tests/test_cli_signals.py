"""SIGINT and SIGTERM end `read --watch` at once, even while a device is still being reached."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from hil_tests.support import wait_until


def test_sigint_while_connecting_to_a_frozen_device_ends_watch_promptly(tmp_path: Path) -> None:
    accepted: list[socket.socket] = []
    with socket.socket() as frozen:  # accepts, never answers: a frozen device
        frozen.bind(("127.0.0.1", 0))
        frozen.listen()
        frozen.settimeout(30)
        port = frozen.getsockname()[1]
        cell = tmp_path / "cell.yaml"
        cell.write_text(
            "cell: frozen\ndevices:\n"
            f"  plc: {{driver: modbus-tcp, host: 127.0.0.1, port: {port},\n"
            "        timeout: 5s, retries: 2}\n"
            "tags:\n  plc.x: {device: plc, address: 'hr:0'}\n",
            encoding="utf-8",
        )
        child = subprocess.Popen(
            [sys.executable, "-m", "cellctl", "read", "--cell", str(cell), "--watch"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, CELLCTL_LOG_FILE=str(tmp_path / "log")),
        )
        taker = threading.Thread(target=lambda: accepted.append(frozen.accept()[0]), daemon=True)
        taker.start()
        try:
            wait_until(lambda: bool(accepted), 30, "cellctl to connect")
            # Connected, now waiting 5 s × 3 for an answer that never comes.
            child.send_signal(signal.SIGINT)
            started = time.monotonic()
            _, err = child.communicate(timeout=10)
            took = time.monotonic() - started
        finally:
            if child.poll() is None:
                child.kill()
            for conn in accepted:
                conn.close()
    assert child.returncode == 0, err
    assert "Traceback" not in err
    assert took < 5  # long before the 15 s the frozen read would take
