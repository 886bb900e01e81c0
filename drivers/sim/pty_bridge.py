"""A serial line made of two pseudo-terminals whose master ends are joined back to back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty


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
        # A full tty input queue means nobody reads that side: drop, like bytes on a dead line.
        with contextlib.suppress(BlockingIOError, InterruptedError):
            os.write(target, data)

    def _require_running(self) -> None:
        if not self.running:
            raise RuntimeError("the pty bridge is not running; call start() first")
