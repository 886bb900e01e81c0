"""What every rule between entries reads, and how it reports a problem at what is at fault.

The rules run on the raw document as well as on the entries that passed their own validation,
so that a device with a bad port does not hide the problems of its tags.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from cellctl import expr
from cellctl.cell.devices import DRIVERS, Device
from cellctl.cell.model import Method, Tag
from cellctl.errors import did_you_mean
from cellctl.problems import Problems
from cellctl.yamlload import YamlDocument

Loc = tuple[str | int, ...]

_M = TypeVar("_M")


def _valid(section: Any, adapter: TypeAdapter[_M]) -> Iterator[tuple[str, _M]]:
    """The entries of a mapping section that pass their own validation (others were reported)."""
    if not isinstance(section, dict):
        return
    for name, raw in section.items():
        try:
            yield str(name), adapter.validate_python(raw)
        except ValidationError:
            continue


_DEVICE_ADAPTER: TypeAdapter[Any] = TypeAdapter(Device)
_TAG_ADAPTER = TypeAdapter(Tag)
_METHOD_ADAPTER = TypeAdapter(Method)


class Rules(Problems):
    """A cell document under check: its valid entries, the names it declares, the problems found,
    and the conditions parsed on the way (the loaded model keeps them)."""

    def __init__(self, doc: YamlDocument, data: dict[Any, Any]) -> None:
        super().__init__(doc)
        self.data = data
        #: Each condition that parsed, by its text (interlocks' and ready's `when`).
        self.conditions: dict[str, expr.Expression] = {}
        self.devices: dict[str, Any] = dict(_valid(data.get("devices"), _DEVICE_ADAPTER))
        self.tags: dict[str, Tag] = dict(_valid(data.get("tags"), _TAG_ADAPTER))
        self.methods: dict[str, Method] = dict(_valid(data.get("methods"), _METHOD_ADAPTER))
        self.raw_devices = self._names("devices")
        self.raw_tags = self._names("tags")
        # The driver of every device that names a known one, valid or not: tag rules need
        # only the driver, so a device with a bad port does not hide its tags' problems.
        raw_devices = data.get("devices")
        self.drivers: dict[str, str] = {
            str(name): raw["driver"]
            for name, raw in (raw_devices.items() if isinstance(raw_devices, dict) else ())
            if isinstance(raw, dict) and str(raw.get("driver")) in DRIVERS
        }

    def _names(self, section: str) -> set[str]:
        raw = self.data.get(section)
        return {str(name) for name in raw} if isinstance(raw, dict) else set()

    def line(self, loc: Loc) -> int:
        """The line of the entry at `loc`, to point at the first of two that clash."""
        return self.doc.position(loc, key=True)[0]

    def known_device(self, loc: Loc, subject: str, device: str) -> bool:
        """Whether the file declares `device`; when not, the entry at `loc` is reported."""
        if device in self.raw_devices:
            return True
        hint = did_you_mean(device, self.raw_devices)
        self.add((*loc, "device"), "unknown-device", f"{subject}: unknown device {device!r}{hint}")
        return False

    def kinds(self) -> dict[str, expr.Kind | None]:
        """What each tag yields in an expression (None: the tag's own entry is invalid)."""
        kinds: dict[str, expr.Kind | None] = dict.fromkeys(self.raw_tags)
        kinds.update({name: expr.kind_of(tag.datatype) for name, tag in self.tags.items()})
        return kinds

    def check_condition(self, loc: Loc, subject: str, when: object) -> None:
        """A condition over the cell's tags (`when` of an interlock or of `ready`): parsed here,
        once, and kept for the model; its syntax, names and types are checked."""
        if not isinstance(when, str) or not when:
            return  # reported by pydantic
        try:
            parsed = expr.parse(when)
        except expr.ExpressionError as err:
            errors = [err]
        else:
            self.conditions[when] = parsed
            errors = expr.check(parsed, self.kinds(), expect=expr.Kind.BOOL)
        self.add_faults(loc, f"{subject}: when", errors, when)
