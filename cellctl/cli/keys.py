"""Keys from the terminal during `cellctl run`: single keystrokes in cbreak mode, and the
operator that answers prompts and step pauses from them."""

from __future__ import annotations

import asyncio
import codecs
import os
import termios
import tty
from typing import Any

from cellctl.cli.views.run import RunModel
from cellctl.control.events import StepPaused
from cellctl.control.operator import PromptRequest, StepChoice
from cellctl.errors import BadValue
from drivers.base import Value

ENTER = "\n"
BACKSPACE = ("\x7f", "\b")


_CHOICES = {
    ENTER: StepChoice.RUN,
    "s": StepChoice.SKIP,
    "c": StepChoice.CONTINUE,
    "a": StepChoice.ABORT,
}


class TerminalKeys:
    """Single keystrokes from a terminal: cbreak, no echo; the terminal restored on close."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._saved: list[Any] | None = None
        self._keys: asyncio.Queue[str] = asyncio.Queue()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._eof = False
        self._escape = ""  # where in an escape sequence the input is: "", esc, csi or ss3

    def open(self) -> None:
        """Put the terminal in cbreak mode and read it from the running loop."""
        self._loop = asyncio.get_running_loop()
        self._saved = termios.tcgetattr(self.fd)
        mode = termios.tcgetattr(self.fd)
        # No line buffering and no echo; ISIG stays on so Ctrl-C still raises SIGINT.
        mode[tty.LFLAG] &= ~(termios.ECHO | termios.ICANON)
        mode[tty.LFLAG] |= termios.ISIG
        mode[tty.CC][termios.VMIN] = 1
        mode[tty.CC][termios.VTIME] = 0
        try:
            termios.tcsetattr(self.fd, termios.TCSANOW, mode)
            self._loop.add_reader(self.fd, self._readable)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop reading and restore the terminal's saved attributes."""
        try:
            if self._loop is not None:
                self._loop.remove_reader(self.fd)
                self._loop = None
        finally:
            saved, self._saved = self._saved, None
            if saved is not None:
                try:
                    termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)
                except termios.error:
                    if not self._eof:
                        raise
                    # The terminal hung up: there is nothing left to restore.

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 1024)
        except OSError:  # EIO: the other end of the terminal is gone
            data = b""
        if not data:
            self._end()
            return
        if self._escape == "esc":
            self._escape = ""  # a lone Esc ended the last read: this read is keys again
        for char in self._decoder.decode(data):
            if self._skip_escape(char):
                continue
            key = ENTER if char == "\r" else char
            if key == ENTER or key in BACKSPACE or key.isprintable():
                self._keys.put_nowait(key)

    def _skip_escape(self, char: str) -> bool:
        """True for a character of an escape sequence: an arrow key sends ESC [ A, and its
        letters must not reach the CLI as keys (ESC O x for F1-F4 and keypads)."""
        if char == "\x1b":
            self._escape = "esc"
        elif self._escape == "esc":
            self._escape = {"[": "csi", "O": "ss3"}.get(char, "")
        elif self._escape == "csi":
            if "@" <= char <= "~":  # the final byte of a control sequence
                self._escape = ""
        elif self._escape == "ss3":
            self._escape = ""
        else:
            return False
        return True

    def _end(self) -> None:
        self._eof = True
        if self._loop is not None:
            self._loop.remove_reader(self.fd)
        self._keys.put_nowait("")

    async def get(self) -> str:
        """The next key: '\\n' for Enter, '\\x7f' or '\\b' for backspace, '' at end of input."""
        if self._eof and self._keys.empty():
            return ""
        return await self._keys.get()


class TerminalOperator:
    """Answers prompts and step pauses from keys that the CLI's key loop feeds it."""

    def __init__(self, model: RunModel, name: str | None) -> None:
        self.model = model
        self.name = name
        self._keys: asyncio.Queue[str] | None = None

    @property
    def waiting(self) -> bool:
        """True while a prompt or a step pause wants keys."""
        return self._keys is not None

    def feed(self, key: str) -> None:
        """Hand over one key from the CLI's key loop (dropped when nothing waits for keys)."""
        if self._keys is not None:
            self._keys.put_nowait(key)

    async def _key(self) -> str:
        assert self._keys is not None
        return await self._keys.get()

    async def answer(self, request: PromptRequest) -> Value | None:
        """The operator's typed answer, parsed by the prompt's answer spec (None: acknowledged)."""
        model = self.model
        model.clear_prompt()
        model.prompt = request
        self._keys = asyncio.Queue()
        try:
            while True:
                key = await self._key()
                if key in BACKSPACE:
                    model.typed = model.typed[:-1]
                elif key != ENTER:
                    model.typed += key
                elif request.answer is None:
                    return None
                else:
                    try:
                        return request.answer.parse_text(model.typed)
                    except BadValue as err:
                        # Shown under the prompt; the operator types again.
                        model.prompt_error = f"{model.typed!r}: {err}"
                        model.typed = ""
        finally:
            # Also on cancellation (a hold): nothing of the prompt may stay behind.
            self._keys = None
            model.clear_prompt()

    async def confirm_step(self, pause: StepPaused) -> StepChoice:
        """Enter runs the step, s skips it, c continues to the end, a aborts; other keys wait."""
        self.model.pause = pause
        self._keys = asyncio.Queue()
        try:
            while (choice := _CHOICES.get(await self._key())) is None:
                pass
            return choice
        finally:
            self._keys = None
            self.model.pause = None
