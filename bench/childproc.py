"""A benchmark's side in a child process (`python -m bench.<module> ...`), so that what it costs is
measured apart from the simulators: the parent reads its stdout line by line, and ends it by
closing its stdin."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

#: The folder that holds the bench package: the child imports it from there.
ROOT = Path(__file__).resolve().parent.parent
#: Bytes one line of a child may hold (a result with every cycle's time is long).
LINE_LIMIT = 64 * 1024 * 1024
#: Seconds a child has to end once its stdin is closed, before it is killed.
END_WAIT = 30.0


class ChildFailed(RuntimeError):
    """A benchmark child ended early, said something unexpected, or did not end in time."""


class Child:
    """One running `python -m MODULE ARGS`; its stderr goes to a file named in every error."""

    def __init__(self, process: asyncio.subprocess.Process, errors: Path, what: str) -> None:
        self.process = process
        self.errors = errors
        self.what = what

    @classmethod
    async def start(cls, module: str, args: list[str], errors: Path) -> Child:
        """Start the child; its stderr is written to `errors`."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), _path()])))
        with errors.open("wb") as err:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                module,
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                cwd=ROOT,
                env=env,
                limit=LINE_LIMIT,
            )
        return cls(process, errors, f"{module} {' '.join(args[:1])}")

    def _failed(self, why: str) -> ChildFailed:
        tail = self.errors.read_text(encoding="utf-8", errors="replace")[-3000:]
        return ChildFailed(f"{self.what}: {why}; its stderr ({self.errors}):\n{tail}")

    async def line(self, within: float) -> str:
        """The child's next stdout line (without the newline); ChildFailed at its end or after
        `within` seconds."""
        assert self.process.stdout is not None
        try:
            async with asyncio.timeout(within):
                raw = await self.process.stdout.readline()
        except TimeoutError:
            raise self._failed(f"said nothing within {within} s") from None
        if not raw:
            await self.process.wait()
            raise self._failed(f"ended with exit code {self.process.returncode}")
        return raw.decode().rstrip("\n")

    async def expect(self, word: str, within: float) -> None:
        """Wait for the line `word`; ChildFailed for another line, the child's end or a timeout."""
        said = await self.line(within)
        if said != word:
            raise self._failed(f"said {said!r} where {word!r} was expected")

    async def finish(self, within: float = END_WAIT) -> list[str]:
        """Close its stdin (the child's cue to end), and return the lines it printed until it
        ended; ChildFailed (after killing it) when it does not end in time or fails."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        try:
            async with asyncio.timeout(within):
                rest = await self.process.stdout.read()
                await self.process.wait()
        except TimeoutError:
            self.kill()
            await self.process.wait()
            raise self._failed(f"did not end within {within} s") from None
        if self.process.returncode != 0:
            raise self._failed(f"ended with exit code {self.process.returncode}")
        return rest.decode().splitlines()

    def kill(self) -> None:
        """Kill the child if it still runs (a benchmark that failed half-way)."""
        with contextlib.suppress(ProcessLookupError):
            if self.process.returncode is None:
                self.process.kill()


@contextlib.asynccontextmanager
async def running(module: str, args: list[str], errors: Path) -> AsyncIterator[Child]:
    """A child for the block; killed afterwards if the block left it running (a failure)."""
    child = await Child.start(module, args, errors)
    try:
        yield child
    finally:
        if child.process.returncode is None:
            child.kill()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(END_WAIT):
                    await child.process.wait()


@contextlib.contextmanager
def quiet_pymodbus() -> Iterator[None]:
    """Silence pymodbus in the simulators' process for the block: a child that ends while a
    poll is on the wire makes its server log (and print) what it could not send."""
    logger = logging.getLogger("pymodbus")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _path() -> str:
    return os.environ.get("PYTHONPATH", "")


async def stdin_closed() -> None:
    """In a child: returns once the parent closes our stdin (or writes a line)."""
    await asyncio.to_thread(sys.stdin.readline)


def say(line: str) -> None:
    """In a child: one line to the parent, at once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
