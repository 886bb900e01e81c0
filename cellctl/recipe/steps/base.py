"""What every step kind is built on: the keys all steps share, and the three small protocols
through which a kind checks itself against the cell, plans itself and runs.

A kind's module holds its model, its checks, its plan line and its execution; what it needs
of the checker, the planner and the controller comes in through CheckContext, PlanContext and
StepContext, so the recipe layer never imports the controller (which implements StepContext).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Annotated, Any, ClassVar, Protocol

from pydantic import BaseModel, Field

from cellctl import expr
from cellctl.cell import Cell, Tag
from cellctl.recipe.fields import MaybeExpr, Model, StepId, given
from cellctl.recipe.ranges import Block, Loc, Scope, Span, Target
from cellctl.recipe.steps.parts import OnErrorField, Wait
from cellctl.recipe.steps.planning import PlanContext, PlanPart
from cellctl.recipe.typed import Answer
from cellctl.values import TagValue
from drivers.base import Value

__all__ = [
    "At",
    "CheckContext",
    "StepBase",
    "StepContext",
    "StepError",
    "raw_items",
    "tags_read",
]


class StepBase(Model):
    """The keys every step has (`id`, `if`, `on_error`) and the hooks each kind fills in."""

    id: StepId | None = None
    if_: MaybeExpr = Field(None, alias="if")
    on_error: Annotated[OnErrorField | None, given("action", "empty")] = None

    #: The kind's key in a recipe: a step holds exactly one kind's key.
    KIND: ClassVar[str] = ""
    #: Other kinds' keys this kind may carry besides its own (a set may carry a wait).
    CARRIES: ClassVar[tuple[str, ...]] = ()
    #: Keys that hold nested steps, each with True when it is a list of branches.
    NESTS: ClassVar[tuple[tuple[str, bool], ...]] = ()
    #: Where in the step's YAML a name is bound for later steps (key paths).
    BINDS: ClassVar[tuple[tuple[str, ...], ...]] = ()
    #: Keys that map names to values, and how messages name one item ('args' -> 'arg').
    ITEMS: ClassVar[Mapping[str, str]] = {}
    #: Keys written as a mapping of their own, and its model (for "did you mean" hints).
    PARTS: ClassVar[Mapping[str, type[BaseModel]]] = {}
    #: What a list under a key holds, in words (one, many), for "needs at least ...".
    WORDS: ClassVar[Mapping[str, tuple[str, str]]] = {}

    @property
    def kind(self) -> str:
        """The step kind: set, wait, call, delay, repeat, parallel or prompt."""
        return self.KIND

    @property
    def may_skip(self) -> bool:
        """True when the step may not run: it has an `if`, or on_error skip."""
        return self.if_ is not None or (
            self.on_error is not None and self.on_error.action == "skip"
        )

    @property
    def is_block(self) -> bool:
        """True for a step that runs nested steps (its own steps are not one action)."""
        return bool(self.NESTS)

    def label(self, path: str) -> str:
        """How messages name the step: "step 'press'", or 'step #2.1' when it has no id."""
        return f"step {self.id!r}" if self.id else f"step #{path}"

    def blocks(self) -> list[tuple[Sequence[StepBase], str]]:
        """The nested blocks with the path part each adds ('' for a repeat body)."""
        return []

    def written(self) -> tuple[str, ...]:
        """The tags the step itself writes, in order."""
        return ()

    @property
    def uses_default_timeout(self) -> bool:
        """True when the recipe's default timeout bounds the step if it gives none."""
        return False

    def retry_refusal(self) -> str | None:
        """Why on_error retry may not re-run this step, or None when it may."""
        return f"a {self.kind} step is never repeated without the operator"

    def retry_culprit(self, block_writes: AbstractSet[str] | None) -> str | None:
        """What a retry would repeat that it must not, in words, else None; `block_writes`:
        every tag a retried block writes (None: the step is retried alone)."""
        return None

    def check(
        self, c: CheckContext, loc: Loc, path: str, label: str, scope: Scope, done: Block
    ) -> None:
        """Check the step against the cell; record its writes and bound names in `done`."""

    def plan(self, p: PlanContext, path: str) -> PlanPart:
        """What the step does, touches and may take, with the run's parameters."""
        raise NotImplementedError

    async def run(self, ctx: StepContext) -> None:
        """Run the step once; a failure raises StepError."""
        raise NotImplementedError

    async def preview(self, ctx: StepContext) -> list[str]:
        """What the step will do, values resolved now, for the operator stepping through."""
        return []


def tags_read(expression: expr.Expression, cell: Cell) -> list[str]:
    """The cell's tags an expression reads, in name order."""
    return sorted(name for name in expression.names if name in cell.tags)


def raw_items(raw: object, prefix: str) -> Iterator[tuple[int, Any, str]]:
    """(index, item, path) of a raw YAML list; paths count from 1 after `prefix`."""
    if isinstance(raw, list):
        for index, item in enumerate(raw):
            yield index, item, f"{prefix}{index + 1}"


# ---------------------------------------------------------------------------------------------
# Checking


class CheckContext(Protocol):
    """The checker as a step kind sees it: the cell, the names in play, problems to report."""

    @property
    def cell(self) -> Cell | None:
        """The cell, or None when its file is broken (names and types wait for it)."""
        ...

    @property
    def tags(self) -> Mapping[str, Tag]:
        """The cell's tags (empty without a cell)."""
        ...

    @property
    def parameter_names(self) -> set[str]:
        """Every parameter the recipe declares, valid or not."""
        ...

    @property
    def bindable(self) -> Mapping[str, tuple[str, int]]:
        """Every name some step binds: the step's label and the line."""
        ...

    def add(
        self, loc: Loc, code: str, message: str, *, key: bool = False, col_offset: int = 0
    ) -> None:
        """Report a problem located at `loc` (at its key when `key`)."""
        ...

    def line(self, loc: Loc, *, key: bool = False) -> int:
        """The line of `loc` in the recipe file."""
        ...

    def raw(self, loc: Loc) -> Any:
        """The raw YAML value at `loc`, or None."""
        ...

    def expression(
        self, value: expr.Expression, loc: Loc, subject: str, scope: Scope
    ) -> expr.Kind | None:
        """Report unknown names and type errors; the expression's kind, or None when broken."""
        ...

    def condition(self, value: expr.Expression, loc: Loc, subject: str, scope: Scope) -> None:
        """Check an expression that must be true or false."""
        ...

    def value(
        self, value: expr.Expression, loc: Loc, subject: str, scope: Scope, target: Target
    ) -> Span | None:
        """Check a value for its target (kind, whole numbers, range); its span when known."""
        ...

    def bind(self, name: str, loc: Loc, label: str) -> bool:
        """Register a bound name; False (and a problem) when it collides with another name."""
        ...

    def note_range(self, name: str, what: str, low: float | None, high: float | None) -> None:
        """A bound name's range, for messages about values computed from it."""
        ...

    def note_choices(self, name: str, choices: list[str]) -> None:
        """A bound name's choices: a text compared with it must be one of them."""
        ...

    def need_timeout(self, timeout: float | None, loc: Loc, what: str, label: str) -> None:
        """Report a wait or call (`what`, also its key) bounded by no timeout at all."""
        ...

    def block(self, raw: object, loc: Loc, prefix: str, scope: Scope) -> Block:
        """Check a nested list of steps in order (paths after `prefix`)."""
        ...


# ---------------------------------------------------------------------------------------------
# Running


class StepError(Exception):
    """A step failed; the message names the step and the cause."""

    def __init__(self, message: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.outcome_unknown = outcome_unknown


class At(enum.Enum):
    """What a checkpoint is about to start: a pause lets some of it go on."""

    OUTPUT = "output"  # a write or a call: the running step finishes them, unless frozen
    WAIT = "wait"  # a wait or a delay: Hold and Suspend cut it, Stop lets it finish
    OPERATOR = "operator"  # a prompt or a stepping question: any pause cuts it


class StepContext(Protocol):
    """One step being run, as its kind sees the controller: fresh reads, confirmed writes,
    calls, the tag board, the operator, nested steps and the clock."""

    #: A set step's writes confirmed in this attempt.
    writes_done: int
    #: The `changed` tags' values when the step started (None: not read yet).
    changed_from: dict[str, Value] | None

    @property
    def path(self) -> str:
        """Where the step is ('2.1')."""
        ...

    @property
    def label(self) -> str:
        """How messages name the step."""
        ...

    @property
    def timeout(self) -> float | None:
        """The step's bound in seconds (its own, else the default where it applies)."""
        ...

    @property
    def cell(self) -> Cell:
        """The cell the recipe runs on."""
        ...

    def deadline(self) -> float | None:
        """The monotonic time at which the step times out when (re)entered now."""
        ...

    def past(self, deadline: float | None) -> bool:
        """True once the monotonic clock is beyond `deadline` (never for None)."""
        ...

    def checkpoint(self, at: At) -> None:
        """Before a write, call, wait or question: stop here when a pause or trip says so."""
        ...

    def started(self, detail: str) -> None:
        """Record the step's start with what it does."""
        ...

    def shown(self, expression: expr.Expression) -> str:
        """An expression's value when it reads no tag, else its text."""
        ...

    def names(self) -> Mapping[str, Value]:
        """The parameters and bound names in scope."""
        ...

    def bind(self, name: str, value: Value) -> None:
        """Bind a name for the steps after this one."""
        ...

    async def read(self, tags: Sequence[str]) -> dict[str, Value]:
        """Fresh values of tags; a BAD one fails the step naming the tag."""
        ...

    async def look(self, tags: Sequence[str]) -> dict[str, TagValue]:
        """Fresh samples of tags, as they are (for the operator's preview)."""
        ...

    async def resolve(
        self, expressions: Mapping[str, expr.Expression], what: str
    ) -> dict[str, Value]:
        """Evaluate expressions with one fresh read of the tags they name."""
        ...

    async def evaluate(self, expression: expr.Expression, what: str) -> Value:
        """One expression's value; `what` names it in a failure ('if', 'set dev.run')."""
        ...

    async def resolved(self, expression: expr.Expression) -> str:
        """An expression's value now, or why it cannot be resolved (never raises)."""
        ...

    async def write(self, tag: str, value: Value) -> None:
        """Write a tag and wait for the device to confirm it; records the write."""
        ...

    async def wait(self, wait: Wait, deadline: float | None) -> None:
        """Wait on the tag board for a wait to be met (against `changed_from`), or time out."""
        ...

    async def call(self, method: str, args: Mapping[str, Value]) -> Value | None:
        """Call a device method; its answer (None: it answered nothing)."""
        ...

    def called(self, method: str, args: Mapping[str, Value], result: Value | None) -> None:
        """Record a call's answer."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait a fixed time; a pause cuts it (the step is re-entered on resume)."""
        ...

    async def ask(self, text: str, answer: Answer | None) -> Value | None:
        """Show a prompt and wait for the operator's answer (a pause cuts it)."""
        ...

    def answered(self, value: Value | None) -> None:
        """Record the operator's accepted answer."""
        ...

    async def run_block(
        self, steps: Sequence[StepBase], prefix: str, round_: int | None, own: Mapping[str, Value]
    ) -> None:
        """Run nested steps in order with names of their own (a round's)."""
        ...

    async def run_branches(self, branches: Sequence[tuple[Sequence[StepBase], str]]) -> None:
        """Run nested blocks (steps, path prefix) together until all have finished."""
        ...
