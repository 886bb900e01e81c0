"""A serial line made of two pseudo-terminals whose master ends are joined back to back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections import deque


class PtyBridge:
    """Two pty pairs bridged by the event loop: a device opens one tty, a client the other.

    Each pty's slave end is the "serial port" one side opens (pyserial opens ports exclusively,
    so the two sides cannot share one pty). The bridge copies bytes between the master ends
    with `loop.add_reader`; it keeps its own handle on both slave ends so a side that closes
    and reopens its port never leaves a master without a slave (which would read EIO).
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._masters: tuple[int, int] | None = None
        self._slaves: tuple[int, int] | None = None
        self._paths: tuple[str, str] = ("", "")
        self._frozen = False
        self._latency = 0.0
        # Device→client chunks waiting for their delivery time, oldest first.
        self._late: deque[tuple[float, bytes]] = deque()
        self._flush: asyncio.TimerHandle | None = None

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._masters is not None

    @property
    def device_path(self) -> str:
        """The tty the simulated device (the Modbus server) opens."""
        self._require_running()
        return self._paths[0]

    @property
    def client_path(self) -> str:
        """The tty the client (the driver under test) opens."""
        self._require_running()
        return self._paths[1]

    def start(self) -> None:
        """Open both pty pairs and start copying; call from inside the running loop."""
        if self.running:
            return
        loop = asyncio.get_running_loop()
        master_a, slave_a = os.openpty()
        master_b, slave_b = os.openpty()
        for fd in (slave_a, slave_b):
            # Raw mode: no echo, no line discipline; the bytes are binary RTU frames.
            tty.setraw(fd)
        for fd in (master_a, master_b):
            os.set_blocking(fd, False)
        self._loop = loop
        self._masters = (master_a, master_b)
        self._slaves = (slave_a, slave_b)
        self._paths = (os.ttyname(slave_a), os.ttyname(slave_b))
        loop.add_reader(master_a, self._copy, master_a, master_b)
        loop.add_reader(master_b, self._copy, master_b, master_a)

    def stop(self) -> None:
        """Stop copying and close every pty end (both sides see the line hang up)."""
        if self._masters is None or self._slaves is None or self._loop is None:
            return
        for fd in self._masters:
            self._loop.remove_reader(fd)
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self._late.clear()
        for fd in (*self._masters, *self._slaves):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._masters = self._slaves = None
        self._loop = None

    def freeze(self, frozen: bool) -> None:
        """While frozen, every byte is dropped in both directions: the device never answers."""
        self._frozen = frozen

    @property
    def frozen(self) -> bool:
        """True while the line drops every byte."""
        return self._frozen

    def latency(self, seconds: float) -> None:
        """Deliver what the device sends this much later (a slow device), keeping byte order."""
        if seconds < 0:
            raise ValueError("latency must not be negative")
        self._latency = seconds

    def _copy(self, source: int, target: int) -> None:
        try:
            data = os.read(source, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            # EIO while a side is being reopened: nothing to copy.
            return
        if self._frozen or not data:
            return
        from_device = self._masters is not None and source == self._masters[0]
        if from_device and self._loop is not None and (self._latency > 0 or self._late):
            # Behind chunks still waiting, so a latency change never reorders the bytes.
            due = self._loop.time() + self._latency
            if self._late:
                due = max(due, self._late[-1][0])
            self._late.append((due, data))
            self._schedule()
            return
        self._write(target, data)

    def _schedule(self) -> None:
        if self._flush is None and self._late and self._loop is not None:
            self._flush = self._loop.call_at(self._late[0][0], self._deliver_late)

    def _deliver_late(self) -> None:
        self._flush = None
        if self._masters is None or self._loop is None:
            return
        now = self._loop.time()
        while self._late and self._late[0][0] <= now:
            _due, data = self._late.popleft()
            if not self._frozen:
                self._write(self._masters[1], data)
        self._schedule()

    @staticmethod
    def _write(target: int, data: bytes) -> None:
        # A full tty input queue means nobody reads that side: drop, like bytes on a dead line.
        with contextlib.suppress(BlockingIOError, InterruptedError):
            os.write(target, data)

    def _require_running(self) -> None:
        if not self.running:
            raise RuntimeError("the pty bridge is not running; call start() first")
