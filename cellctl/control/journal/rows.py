"""A journal row, its kinds, the canonical JSON of its body and its chained hash.

The row hash is SHA-256 (lower-case hex) over the UTF-8 bytes of seven lines joined by a single
LF (no trailing LF):

    cellctl-journal-v1
    PREV        the previous row's hash (64 hex digits; GENESIS, 64 zeros, for row 1)
    SEQ         the row's seq in decimal
    BATCH       '=' followed by the batch id, or '-' when the row belongs to no batch
    AT          the UTC time stamp, e.g. 2026-12-06T13:45:01.123456Z
    KIND        the row kind, e.g. step_started
    BODY        the body exactly as stored (canonical JSON: never holds a raw LF)

No field may hold an LF (the writer refuses one, `verify` calls such a row malformed), so the
seven lines are unambiguous. With a key, `mac` is HMAC-SHA256(key, the 64 hex characters of the
hash as ASCII), in hex. An auditor recomputes row 17's hash with the sqlite3 shell:

    printf '%s' "$(sqlite3 journal.sqlite "SELECT 'cellctl-journal-v1' || char(10) || prev
      || char(10) || seq || char(10) || coalesce('=' || batch, '-') || char(10) || at
      || char(10) || kind || char(10) || body FROM rows WHERE seq = 17")" | sha256sum

and compares it with `SELECT hash FROM rows WHERE seq = 17` (and row 18's `prev`).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

#: The `prev` of the first row.
GENESIS = "0" * 64
#: The first line of every hashed row text: names the encoding, so a later one can differ.
HASH_VERSION = "cellctl-journal-v1"
#: A row's time stamp: UTC, microseconds, 'Z'.
AT_PATTERN = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")
#: A hash or a mac: 64 lower-case hex digits.
HEX64 = re.compile(r"[0-9a-f]{64}\Z")


class Kind(enum.StrEnum):
    """The kinds of row the recorder writes."""

    BATCH_STARTED = "batch_started"
    STATE = "state"
    MODE = "mode"
    STEP_STARTED = "step_started"
    STEP_ENDED = "step_ended"
    INTENT = "intent"  # a recipe write, on disk before it leaves for the device
    CONFIRMED = "confirmed"  # what the device answered to a write
    CALL_INTENT = "call_intent"  # a recipe's call of a device method, on disk before it is made
    CALL = "call"  # the call's answer (its failure: a `confirmed` row naming its intent)
    COMMAND = "command"  # an operator command, and who gave it
    REFUSED = "refused"
    TRIP = "trip"
    TRIP_CLEARED = "trip_cleared"
    SAFE_STATE = "safe_state"
    PROMPT = "prompt"
    ANSWER = "answer"
    NOTICE = "notice"
    BATCH_ENDED = "batch_ended"
    WRITE = "write"  # a `cellctl write` outside a batch


@dataclass(frozen=True)
class JournalRow:
    """One stored row: `body` is its canonical JSON text as stored, `prev` the hash of the row
    before it (the chain is global across batches), `mac` the keyed hash or None."""

    seq: int
    batch: str | None
    at: str
    kind: str
    body: str
    prev: str
    hash: str
    mac: str | None

    def data(self) -> Any:
        """The body parsed."""
        return json.loads(self.body)


def _plain(value: Any) -> Any:
    """`value` as plain JSON data: non-finite floats as {"float": ...}, tuples as lists, enums
    by value; raises TypeError on anything else that JSON cannot hold (a bug of the caller)."""
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, Mapping):
        plain: dict[str, Any] = {}
        for key, item in value.items():
            if isinstance(key, enum.Enum):
                key = key.value
            if not isinstance(key, str):
                raise TypeError(f"a journal body key must be a string, not {key!r}")
            plain[key] = _plain(item)
        return plain
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    raise TypeError(f"{type(value).__name__} cannot go into a journal body: {value!r}")


#: The encoder of canonical_json: keys sorted, no spaces, UTF-8 as is, no NaN or Infinity.
_ENCODE = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode
#: Value types that hold no key: a dict holding only these needs no look inside them.
_LEAVES = frozenset({str, int, float, bool, type(None)})


def _str_keys(value: dict[Any, Any]) -> bool:
    """Whether every key of `value`, and of the dicts inside it, is a str (the JSON encoder
    would turn an int or None key into text, which _plain refuses)."""
    try:
        "".join(value)  # TypeError for a key that is not a str, without a Python loop
    except TypeError:
        return False
    if _LEAVES.issuperset(map(type, value.values())):
        return True
    return all(_nested_str_keys(item) for item in value.values())


def _nested_str_keys(value: Any) -> bool:
    if isinstance(value, dict):
        return _str_keys(value)
    if isinstance(value, list | tuple):
        return all(_nested_str_keys(item) for item in value)
    return True


def canonical_json(obj: Any) -> str:
    """The one JSON text of `obj`: keys sorted, no spaces, UTF-8 as is, non-finite floats as
    {"float": "nan"|"inf"|"-inf"}; TypeError for anything JSON cannot hold."""
    # Fast path: the encoder alone gives the same text as _plain's copy for the usual body (a
    # dict of str keys, no non-finite float; str and int enums are encoded by their value).
    # Anything else it refuses (a NaN, a plain Enum, an unknown type) or would accept where
    # _plain refuses (a non-str key) takes _plain's path, which spells out or refuses it.
    if type(obj) is dict and _str_keys(obj):
        try:
            return _ENCODE(obj)
        except (TypeError, ValueError):
            pass
    return _ENCODE(_plain(obj))


def hashed_text(prev: str, seq: int, batch: str | None, at: str, kind: str, body: str) -> str:
    """The text a row's hash is taken over (see the module docstring)."""
    batch_field = "-" if batch is None else "=" + batch
    return "\n".join((HASH_VERSION, prev, str(seq), batch_field, at, kind, body))


def row_hash(prev: str, seq: int, batch: str | None, at: str, kind: str, body: str) -> str:
    """The SHA-256 hex digest that chains a row to `prev`."""
    text = hashed_text(prev, seq, batch, at, kind, body)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def row_mac(key: bytes, hash_: str) -> str:
    """HMAC-SHA256 of a row's hash under `key`, in hex."""
    return hmac.new(key, hash_.encode("ascii"), hashlib.sha256).hexdigest()


def field_problem(batch: str | None, at: str, kind: str, body: str) -> str | None:
    """Why these fields cannot be hashed unambiguously (an LF, a bad time stamp), or None."""
    if batch is not None and ("\n" in batch or batch == ""):
        return f"batch id {batch!r} is empty or holds a line break"
    if not AT_PATTERN.match(at):
        return f"time stamp {at!r} is not UTC ISO 8601 with microseconds"
    if not kind or "\n" in kind:
        return f"kind {kind!r} is empty or holds a line break"
    if "\n" in body:
        return "body holds a line break (not canonical JSON)"
    return None


#: format_at's last whole second and its text: rows come many a second, strftime is dear.
_last_second: tuple[float, str] = (math.nan, "")


def format_at(timestamp: float) -> str:
    """A time.time() value as a row time stamp: '2026-12-06T13:45:01.123456Z'."""
    global _last_second
    # Rounded to the microsecond as datetime.fromtimestamp does (the fraction times 10**6,
    # half to even, carried into the seconds), so the text is the same as its strftime.
    fraction, whole = math.modf(timestamp)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        micro -= 1_000_000
        whole += 1.0
    elif micro < 0:
        micro += 1_000_000
        whole -= 1.0
    second, text = _last_second
    if whole != second:
        text = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _last_second = (whole, text)  # one tuple: a reader on another thread sees a pair
    return f"{text}.{micro:06d}Z"
