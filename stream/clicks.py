"""Parse and validate one raw click from the `clicks` topic.

The worker reads the topic as raw bytes and parses here, so no payload can crash faust's codec:
anything that is not a valid click becomes a ``Rejection`` (reason + detail) for the DLQ.

A valid click is a JSON object ``{"user_id", "item_id", "ts"[, "event_id"]}`` whose Kafka key is
the user id (the key decides the partition, and with it where the user's state lives):

* ids are non-empty strings of printable characters (at most ``MAX_ID_CHARS``) or integers in
  ``[0, MAX_INT_ID]``; integers are normalised to their decimal string, so ``7`` and ``"7"`` are
  the same id. Booleans, floats (even ``7.0``), negative or larger integers are rejected;
* ``ts`` is unix seconds, a finite non-negative number (not a boolean);
* ``event_id`` is optional and, when present, an id like the others; the recommendation
  echoes it;
* extra fields are ignored.

``ClickContract`` states the same rules as a pydantic model: the published JSON Schema is
generated from it, and a property test holds ``parse_click`` to it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from stream.framing import unframe
from stream.messages import RejectReason

MAX_ID_CHARS = 128
MAX_INT_ID = 2**63 - 1  # an int64: what Kafka-side tooling and numpy can hold
MAX_TS = 1e11  # unix seconds around the year 5138: anything later is a unit mistake (ms, µs)
# What a JSON Schema can say of ``str.isprintable``: no C0/C1 control characters or DEL (Python
# also refuses a few more, such as non-ASCII spaces and unassigned code points).
PRINTABLE_PATTERN = r"^[^\u0000-\u001f\u007f-\u009f]+$"

_StrId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=PRINTABLE_PATTERN)]
_IntId = Annotated[int, Field(ge=0, le=MAX_INT_ID)]


class ClickContract(BaseModel):
    """A click on the `clicks` topic, keyed by its user id (the key must equal ``user_id``)."""

    model_config = ConfigDict(extra="allow", title="Click")

    user_id: _StrId | _IntId
    item_id: _StrId | _IntId
    ts: Annotated[float, Field(ge=0, le=MAX_TS, description="unix seconds")]
    event_id: _StrId | _IntId | None = None


@dataclass(frozen=True, slots=True)
class Click:
    user_id: str
    item_id: str
    ts: float
    event_id: str | None = None

    def to_json(self) -> bytes:
        """The click as a producer sends it (what ``parse_click`` reads back)."""
        value: dict[str, Any] = {"user_id": self.user_id, "item_id": self.item_id, "ts": self.ts}
        if self.event_id is not None:
            value["event_id"] = self.event_id
        return json.dumps(value).encode()


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: RejectReason
    detail: str


class _Invalid(Exception):
    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(reason, detail)
        self.rejection = Rejection(reason, detail)


def _no_constants(name: str) -> Any:
    # json accepts NaN and ±Infinity by default; they are not JSON and never a valid field.
    raise ValueError(f"{name} is not valid JSON")


def _id(value: Any, reason: RejectReason, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _Invalid(
            reason, f"{field} must be a string or an integer, got {type(value).__name__}"
        )
    if isinstance(value, int):
        if not 0 <= value <= MAX_INT_ID:
            raise _Invalid(reason, f"{field} {value} is outside [0, {MAX_INT_ID}]")
        return str(value)
    if not value or len(value) > MAX_ID_CHARS:
        raise _Invalid(reason, f"{field} must have 1 to {MAX_ID_CHARS} characters")
    if not value.isprintable():
        # also keeps ids off the "\x00..." keys the state store reserves for itself
        raise _Invalid(reason, f"{field} contains non-printable characters")
    return value


def user_id_problem(value: str) -> str | None:
    """Why ``value`` can be no user's id (the rules clicks follow), or None."""
    try:
        _id(value, RejectReason.BAD_USER_ID, "user_id")
    except _Invalid as e:
        return e.rejection.detail
    return None


def _ts(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(RejectReason.BAD_TS, f"ts must be a number, got {type(value).__name__}")
    ts = float(value)
    if not math.isfinite(ts) or not 0 <= ts <= MAX_TS:
        raise _Invalid(
            RejectReason.BAD_TS, f"ts {value!r} is not unix seconds in [0, {MAX_TS:.0e}]"
        )
    return ts


def parse_click(value: bytes | None, key: bytes | None, max_bytes: int) -> Click | Rejection:
    """A typed click, or why the message cannot be one. Never raises."""
    if value is None:
        return Rejection(RejectReason.INVALID_JSON, "empty message (tombstone)")
    if len(value) > max_bytes:
        return Rejection(RejectReason.OVERSIZED, f"{len(value)} bytes > {max_bytes}")
    try:
        obj = json.loads(unframe(value), parse_constant=_no_constants)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError, FramingError: ValueErrors
        return Rejection(RejectReason.INVALID_JSON, str(e)[:200])
    if not isinstance(obj, dict):
        return Rejection(
            RejectReason.NOT_AN_OBJECT, f"expected a JSON object, got {type(obj).__name__}"
        )
    missing = [f for f in ("user_id", "item_id", "ts") if f not in obj]
    if missing:
        return Rejection(RejectReason.MISSING_FIELD, f"missing {', '.join(missing)}")
    try:
        user_id = _id(obj["user_id"], RejectReason.BAD_USER_ID, "user_id")
        item_id = _id(obj["item_id"], RejectReason.BAD_ITEM_ID, "item_id")
        ts = _ts(obj["ts"])
        event_id = obj.get("event_id")
        if event_id is not None:
            event_id = _id(event_id, RejectReason.BAD_EVENT_ID, "event_id")
    except _Invalid as e:
        return e.rejection
    # The key picks the partition, and the partition owns the user's state: a click keyed
    # otherwise would be applied to a second, partial copy of the user.
    if key != user_id.encode():
        shown = key[:MAX_ID_CHARS] if key is not None else None
        return Rejection(RejectReason.KEY_MISMATCH, f"key {shown!r} is not the user_id {user_id!r}")
    return Click(user_id, item_id, ts, event_id)
