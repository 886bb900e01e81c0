"""Options several commands share, and the parameter type their numbers are read with."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cellctl.errors import BadValue
from drivers.points import DataType

# Every command's signature uses these options: what reads their values loads when one is read.
if TYPE_CHECKING:
    from pydantic_core import PydanticCustomError


class Number:
    """A number option's parameter type: the text read by `cellctl.textvalue`, the one parser
    of typed values, then held within [low, high].

    typer's own number reading (pydantic's, like click's INT and FLOAT) takes '1_2' as 12 and
    full-width digits as digits; an operator typing either means no number. A refusal is
    typer's usage error (exit 1), worded as typer words a bad number.
    """

    def __init__(self, kind: type[int] | type[float], low: float, high: float) -> None:
        self.kind = kind
        self.low = low
        self.high = high

    def __call__(self, value: object) -> float:
        """The number of an option's text (or of its default, a number already)."""
        from pydantic_core import PydanticCustomError

        number = self._read(value) if isinstance(value, str) else value
        if not isinstance(number, int | float) or isinstance(number, bool):
            raise self._not_a_number()
        if number < self.low:
            raise PydanticCustomError(
                "greater_than_equal",
                "Input should be greater than or equal to {ge}",
                {"ge": self.low},
            )
        if number > self.high:
            raise PydanticCustomError(
                "less_than_equal", "Input should be less than or equal to {le}", {"le": self.high}
            )
        return number

    def _read(self, text: str) -> float:
        from cellctl import textvalue

        datatype = DataType.INT64 if self.kind is int else DataType.FLOAT64
        try:
            number = textvalue.parse(text, datatype)
        except BadValue:
            raise self._not_a_number() from None
        assert isinstance(number, int | float)
        return number

    def _not_a_number(self) -> PydanticCustomError:
        from pydantic_core import PydanticCustomError

        if self.kind is int:
            return PydanticCustomError(
                "int_parsing",
                "Input should be a valid integer, unable to parse string as an integer",
            )
        return PydanticCustomError(
            "float_parsing", "Input should be a valid number, unable to parse string as a number"
        )


def number_option(
    *names: str, low: float, high: float, kind: type[int] | type[float] = float, **kw: Any
) -> Any:
    """A typer Option for a number in [low, high], read by `Number` (its help shows the range)."""
    return typer.Option(*names, min=low, max=high, parser=Number(kind, low, high), **kw)


def speed_option(help: str) -> Any:
    """--speed, the simulators' time factor: a hundredth of real time to a thousand times it."""
    return number_option("--speed", low=0.01, high=1000, help=help)


#: --cell of the commands on tags: the cell file, required.
CellOption = Annotated[
    Path, typer.Option("--cell", "-c", help="the cell file (recipes/<cell>/cell.yaml)")
]

#: The recipe file a command runs or plans.
RecipeArgument = Annotated[Path, typer.Argument(metavar="RECIPE", help="the recipe file")]

#: --cell beside a recipe: the cell file, by default cell.yaml in the recipe's folder.
RecipeCellOption = Annotated[
    Path | None,
    typer.Option("--cell", "-c", help="the cell file (default: cell.yaml beside the recipe)"),
]

#: -p NAME=VALUE, a recipe parameter, repeatable.
ParamOption = Annotated[
    list[str] | None,
    typer.Option("--param", "-p", metavar="NAME=VALUE", help="a recipe parameter (repeatable)"),
]


def _operator_name(name: str | None) -> str | None:
    """--operator as given; bad input when it is empty or not UTF-8 text (it is recorded)."""
    if name is None:
        return None
    from cellctl.textvalue import check_utf8

    if not name.strip():
        raise BadValue("--operator: give a name (it is recorded with every action)")
    check_utf8(name, "--operator")
    return name


def operator_option(help: str) -> Any:
    """--operator NAME (recorded), checked as bad input before anything runs."""
    return typer.Option("--operator", help=help, callback=_operator_name)


#: --safe-wait: how long a run waits for its safe state to be confirmed.
DEFAULT_SAFE_WAIT = "5m"
SafeWaitOption = Annotated[
    str,
    typer.Option(
        "--safe-wait",
        metavar="DURATION",
        help="once the batch ended, how long to wait for the safe state to be confirmed "
        "(exit 5 past it)",
    ),
]


def safe_wait_seconds(text: str) -> float:
    """--safe-wait as seconds; a bad duration is bad input naming the option."""
    from cellctl.durations import DurationError, parse_duration

    try:
        seconds = parse_duration(text)
    except DurationError as error:
        raise BadValue(f"--safe-wait {text}: {error}") from None
    if seconds <= 0:  # no time to read the safe state back: every batch would end unconfirmed
        raise BadValue(f"--safe-wait {text}: give a duration above zero (e.g. 30s, 5m)")
    return seconds
