"""What every surface of `cellctl serve` shares: the roles, the requests a caller can make,
the answer to each (accepted, or refused with its reason and kind), the status snapshot, and
the OPC UA address space's names (the server builds it, the remote CLI and tests read it).

The command layer (cellctl.service.core) takes `(Caller, Request) -> Accepted | Refused`; the
OPC UA methods, the remote CLI (through them) and the web view all go through it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cellctl.cell import Cell
from cellctl.control.machine import Command, Mode
from cellctl.service.defaults import DEFAULT_ENDPOINT as DEFAULT_ENDPOINT
from cellctl.values import TagValue

# -- roles -----------------------------------------------------------------------------------


class Role(enum.IntEnum):
    """A user's role; each one may do what the roles below it may."""

    VIEWER = 1  # reads: status, tags, browse, subscribe
    OPERATOR = 2  # the nine commands, load released recipes, answer prompts, acknowledge
    ENGINEER = 3  # modes, step, breakpoints, force and unforce
    ADMIN = 4  # users

    @property
    def label(self) -> str:
        """The role's name as the users file and messages write it."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        """The role named `text` (viewer, operator, engineer, admin); ValueError otherwise."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(r.label for r in cls)
            raise ValueError(f"unknown role {text!r} (roles: {names})") from None


@dataclass(frozen=True)
class Caller:
    """Who asks: the user's name (None: anonymous), the role the service gave them, and where
    from (the surface and peer, for the record)."""

    user: str | None
    role: Role
    via: str = "opcua"
    peer: str = ""

    @property
    def name(self) -> str:
        """The user as records name them."""
        return self.user or "anonymous"


# -- requests --------------------------------------------------------------------------------


class Action(enum.StrEnum):
    """Every kind of request, as roles allow them and records name them."""

    COMMAND = "command"  # one of the nine PackML commands
    MODE = "mode"
    LOAD = "load"
    ANSWER = "answer"
    STEP = "step"
    BREAK_ADD = "break_add"
    BREAK_RM = "break_rm"
    ACK = "ack"
    FORCE = "force"
    UNFORCE = "unforce"


#: The least role each action needs.
REQUIRED_ROLE: Mapping[Action, Role] = {
    Action.COMMAND: Role.OPERATOR,
    Action.LOAD: Role.OPERATOR,
    Action.ANSWER: Role.OPERATOR,
    Action.ACK: Role.OPERATOR,
    Action.MODE: Role.ENGINEER,
    Action.STEP: Role.ENGINEER,
    Action.BREAK_ADD: Role.ENGINEER,
    Action.BREAK_RM: Role.ENGINEER,
    Action.FORCE: Role.ENGINEER,
    Action.UNFORCE: Role.ENGINEER,
}


@dataclass(frozen=True)
class Request:
    """One request: its action and arguments, all as text the way a caller types them
    (checked by the command layer, which names what is wrong).

    - COMMAND: `command`; Unhold may carry `choice` (retry, skip) for a failed step
    - MODE: `value` (Production, Maintenance, Manual)
    - LOAD: `name` (a released recipe's name), `parameters` (NAME=VALUE texts)
    - ANSWER: `name` (the prompt's step id), `value`
    - STEP: `value` (run, skip, continue, abort; default run)
    - BREAK_ADD / BREAK_RM: `name` (a step id)
    - ACK: nothing
    - FORCE: `name` (a tag), `value`; UNFORCE: `name`
    """

    action: Action
    command: Command | None = None
    name: str = ""
    value: str = ""
    choice: str = ""
    parameters: tuple[str, ...] = ()

    def describe(self) -> str:
        """The request as a person writes it (records, messages): `Start`, `force x=1`."""
        if self.action is Action.COMMAND:
            assert self.command is not None
            return f"{self.command}" + (f" ({self.choice})" if self.choice else "")
        text = self.action.value.replace("_", " ")
        if self.action is Action.LOAD:
            return " ".join([text, self.name, *self.parameters])
        if self.action in (Action.ANSWER, Action.FORCE):
            return f"{text} {self.name}={self.value}"
        return " ".join(p for p in (text, self.name, self.value) if p)


class RefusalKind(enum.StrEnum):
    """Why a request was refused, as a status code says it (OPC UA: see STATUS_OF)."""

    ROLE = "role"  # the caller's role may not (BadUserAccessDenied)
    STATE = "state"  # not now: the state, a trip, nothing loaded (BadInvalidState)
    INPUT = "input"  # a bad argument: unknown tag, value out of range (BadInvalidArgument)
    INTERNAL = "internal"  # a fault of the service's own, in its log (BadInternalError)


@dataclass(frozen=True)
class Accepted:
    """The request was carried out: what it led to, in words (`Resetting`, `loaded …`)."""

    result: str


@dataclass(frozen=True)
class Refused:
    """The request was refused and nothing changed: why, naming the state or missing role."""

    reason: str
    kind: RefusalKind


Answer = Accepted | Refused


# -- the status snapshot ------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    """A prompt waiting for an answer: its step id, text and what it takes."""

    step_id: str
    text: str
    wants: str  # "any text", "int 1..5", "one of: a, b"


@dataclass(frozen=True)
class ServiceStatus:
    """Everything a client shows of the service now (immutable: handed across threads)."""

    cell: str
    state: str
    mode: str
    legal: tuple[str, ...]
    security: str
    batch: str = ""
    recipe: str = ""
    recipe_version: int = 0
    recipe_sha256: str = ""
    parameters: Mapping[str, str] = field(default_factory=dict)
    step: str = ""  # the step running now: "3.2 press (set)"
    produced: int = 0
    rejected: int = 0
    stop_reason: str = ""
    trips: tuple[str, ...] = ()
    prompt: Prompt | None = None
    paused: str = ""  # a step that stepping or a breakpoint paused before: "3.2 press"
    breakpoints: tuple[str, ...] = ()
    forced: Mapping[str, str] = field(default_factory=dict)
    recipes: tuple[str, ...] = ()  # the released recipes a caller may load
    seq: int = 0  # grows with every change


# -- the OPC UA address space ------------------------------------------------------------------

#: The namespace of every node of the service (its index is found by this URI, never assumed).
NAMESPACE = "urn:cellctl:service"
#: The PackML object (Objects/PackML) and the folder of the cell's tags (Objects/Tags).
PACKML = "PackML"
TAGS = "Tags"

#: The PackML object's variables: browse name -> what it holds (NodeId string: "PackML.<name>").
STATUS_VARIABLES: Mapping[str, str] = {
    "Cell": "String: the cell's name",
    "State": "String: the PackML state (Idle, Execute, Held, ...)",
    "StateCurrent": "Int32: the state's PackML number (OPC 30050: Stopped=2 ... Execute=6)",
    "Mode": "String: Production, Maintenance or Manual",
    "UnitModeCurrent": "Int32: 1 Production, 2 Maintenance, 3 Manual",
    "LegalCommands": "String[]: the commands legal now",
    "BatchId": "String: the batch loaded or running ('' before the first load)",
    "Recipe": "String: the recipe loaded",
    "RecipeVersion": "Int32",
    "RecipeSha256": "String",
    "Parameters": "String[]: NAME=VALUE",
    "CurrentStep": "String: the step running now",
    "Produced": "Int64: parts made this batch",
    "Rejected": "Int64: parts rejected this batch",
    "StopReason": "String: why the last batch held, stopped or aborted",
    "ActiveTrips": "String[]: the interlocks and devices tripped now",
    "Prompt": "String: the prompt waiting for an answer: 'STEP_ID: text (wants)', or ''",
    "Paused": "String: the step stepping or a breakpoint paused before, or ''",
    "Breakpoints": "String[]: the step ids with a breakpoint",
    "Forced": "String[]: TAG=VALUE for each forced tag",
    "Recipes": "String[]: the released recipes that may be loaded",
    "Security": "String: the channel security the server offers, and who may do what",
    "LastRefusal": "String: why this session's last refused call was refused",
}

#: The PackML object's methods: browse name -> (input argument names, the request it makes).
#: Every input is a String (a String[] for Parameters); every method has one String output,
#: Result. A refused call answers a Bad status (see STATUS_OF) and its reason is in LastRefusal.
METHODS: Mapping[str, tuple[tuple[str, ...], Action]] = {
    **{c.value: ((), Action.COMMAND) for c in Command if c is not Command.UNHOLD},
    Command.UNHOLD.value: (("Choice",), Action.COMMAND),
    "SetMode": (("Mode",), Action.MODE),
    "LoadRecipe": (("Name", "Parameters"), Action.LOAD),
    "AnswerPrompt": (("StepId", "Value"), Action.ANSWER),
    "Step": (("Choice",), Action.STEP),
    "AddBreakpoint": (("StepId",), Action.BREAK_ADD),
    "RemoveBreakpoint": (("StepId",), Action.BREAK_RM),
    "Acknowledge": ((), Action.ACK),
    "Force": (("Tag", "Value"), Action.FORCE),
    "Unforce": (("Tag",), Action.UNFORCE),
}

#: The OPC UA status code name each kind of refusal answers with.
STATUS_OF: Mapping[RefusalKind, str] = {
    RefusalKind.ROLE: "BadUserAccessDenied",
    RefusalKind.STATE: "BadInvalidState",
    RefusalKind.INPUT: "BadInvalidArgument",
    RefusalKind.INTERNAL: "BadInternalError",
}

#: PackML state numbers (OPC 30050 / ISA-TR88.00.02 StateCurrent).
STATE_NUMBERS: Mapping[str, int] = {
    "Clearing": 1,
    "Stopped": 2,
    "Starting": 3,
    "Idle": 4,
    "Suspended": 5,
    "Execute": 6,
    "Stopping": 7,
    "Aborting": 8,
    "Aborted": 9,
    "Holding": 10,
    "Held": 11,
    "Unholding": 12,
    "Suspending": 13,
    "Unsuspending": 14,
    "Resetting": 15,
    "Completing": 16,
    "Complete": 17,
}
#: PackML unit mode numbers (UnitModeCurrent).
MODE_NUMBERS: Mapping[str, int] = {
    Mode.PRODUCTION.value: 1,
    Mode.MAINTENANCE.value: 2,
    Mode.MANUAL.value: 3,
}


# -- what a surface needs of the service ---------------------------------------------------------


class Backend(Protocol):
    """The service as its surfaces see it. Every method is called on the control loop (a surface
    on a thread of its own marshals its calls there and its listeners' calls back)."""

    cell: Cell

    def status(self) -> ServiceStatus:
        """The status now."""
        ...

    def tag_values(self) -> Mapping[str, TagValue]:
        """The latest value of every tag of the cell that has one."""
        ...

    def listen(
        self,
        on_status: Callable[[ServiceStatus], None],
        on_tags: Callable[[Mapping[str, TagValue]], None],
    ) -> Callable[[], None]:
        """Be told of every new status and of changed tag values (coalesced, a few times a
        second at most); returns the function that stops it."""
        ...

    async def submit(self, caller: Caller, request: Request) -> Accepted | Refused:
        """Carry a request out for a caller, or refuse it; both are on record with the user."""
        ...

    def security_refused(self, what: str, who: str, peer: str, reason: str) -> None:
        """Record a refused login or certificate (`what`: login, certificate)."""
        ...

    def batch_detail(self) -> dict[str, Any] | None:
        """The loaded batch's step tree with each step's state, its wait, its last safe
        state (cellctl.service.detail.BatchDetail as JSON), or None before any load."""
        ...

    def recipes_info(self) -> list[dict[str, Any]]:
        """The released recipes with their parameters (type, range, choices, unit, default)."""
        ...
