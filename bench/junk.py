"""Malformed `clicks` messages of every kind the worker must dead-letter, each with its reason.

Every message is checked against the worker's own parser when it is made, so the expected
reason is the one the worker must report (``unknown_item`` passes the parser: only the scorer's
vocabulary can reject it).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from stream.clicks import MAX_ID_CHARS, MAX_INT_ID, MAX_TS, Rejection, parse_click
from stream.messages import RejectReason

TS = 1_600_000_000.0  # a valid timestamp for the fields that are not under test
MAX_RANDOM_BYTES = 64


@dataclass(frozen=True, slots=True)
class Junk:
    key: bytes | None
    value: bytes | None
    reason: str  # what the worker must put in the DLQ record


def _dump(obj: object) -> bytes:
    return json.dumps(obj).encode()


def _bad_id(rng: random.Random) -> object:
    """An id the parser refuses: wrong type, out of range, empty, too long, non-printable."""
    return rng.choice(
        [
            -rng.randint(1, 10**6),
            MAX_INT_ID + rng.randint(1, 10**6),
            True,
            rng.random() * 100,
            [1, 2],
            {"id": 1},
            None,
            "",
            "x" * (MAX_ID_CHARS + 1),
            "bad\nid",
        ]
    )


class JunkMaker:
    """Seeded junk about real users and items (so it lands in the partitions being served)."""

    def __init__(self, users: list[str], items: list[str], max_click_bytes: int, seed: int):
        self.rng = random.Random(seed)
        self.users = users
        self.items = items
        self.max_click_bytes = max_click_bytes
        self._kinds: list[Callable[[], Junk]] = [
            self._invalid_json,
            self._not_an_object,
            self._missing_field,
            self._bad_user_id,
            self._bad_item_id,
            self._bad_ts,
            self._bad_event_id,
            self._key_mismatch,
            self._oversized,
            self._unknown_item,
        ]
        self._unknown = 0

    def make(self, count: int) -> list[Junk]:
        """``count`` messages, the kinds in turn (equal shares), each checked against the parser."""
        out = [self._kinds[i % len(self._kinds)]() for i in range(count)]
        for junk in out:
            parsed = parse_click(junk.value, junk.key, self.max_click_bytes)
            got = parsed.reason if isinstance(parsed, Rejection) else RejectReason.UNKNOWN_ITEM
            assert got == junk.reason, (junk, parsed)
            assert isinstance(parsed, Rejection) or parsed.item_id not in self.items
        return out

    def _click(self, **fields: object) -> tuple[bytes, dict[str, object]]:
        user = self.rng.choice(self.users)
        click: dict[str, object] = {"user_id": user, "item_id": self.rng.choice(self.items)}
        click["ts"] = TS
        click.update(fields)
        return user.encode(), click

    def _invalid_json(self) -> Junk:
        key, click = self._click()
        text = _dump(click)
        value = self.rng.choice(
            [
                None,  # a tombstone
                text[: self.rng.randint(1, len(text) - 1)],  # truncated
                b"\xff" + self.rng.randbytes(self.rng.randint(0, MAX_RANDOM_BYTES)),  # not UTF-8
                text.replace(str(TS).encode(), b"NaN"),  # not JSON
                b"{'user_id': 1}",
            ]
        )
        return Junk(key, value, RejectReason.INVALID_JSON)

    def _not_an_object(self) -> Junk:
        key, click = self._click()
        value = self.rng.choice([list(click.values()), 42, "click", None, 1.5])
        return Junk(key, _dump(value), RejectReason.NOT_AN_OBJECT)

    def _missing_field(self) -> Junk:
        key, click = self._click()
        if self.rng.random() < 0.5:
            del click[self.rng.choice(["user_id", "item_id", "ts"])]
        else:  # the wrong keys altogether
            click = {"user": click["user_id"], "item": click["item_id"], "time": TS}
        return Junk(key, _dump(click), RejectReason.MISSING_FIELD)

    def _bad_user_id(self) -> Junk:
        key, click = self._click(user_id=_bad_id(self.rng))
        return Junk(key, _dump(click), RejectReason.BAD_USER_ID)

    def _bad_item_id(self) -> Junk:
        key, click = self._click(item_id=_bad_id(self.rng))
        return Junk(key, _dump(click), RejectReason.BAD_ITEM_ID)

    def _bad_ts(self) -> Junk:
        ts = self.rng.choice(["yesterday", -1, MAX_TS * 1000, True, None, [TS]])
        key, click = self._click(ts=ts)
        return Junk(key, _dump(click), RejectReason.BAD_TS)

    def _bad_event_id(self) -> Junk:
        key, click = self._click(event_id=_bad_id(self.rng))
        if click["event_id"] is None:  # an explicit null means "no event id": valid
            click["event_id"] = -1
        return Junk(key, _dump(click), RejectReason.BAD_EVENT_ID)

    def _key_mismatch(self) -> Junk:
        key, click = self._click()
        wrong = self.rng.choice([None, b"", b"someone-else", key + b"x"])
        return Junk(wrong, _dump(click), RejectReason.KEY_MISMATCH)

    def _oversized(self) -> Junk:
        key, click = self._click(padding="x" * self.max_click_bytes)
        return Junk(key, _dump(click), RejectReason.OVERSIZED)

    def _unknown_item(self) -> Junk:
        self._unknown += 1
        key, click = self._click(item_id=f"no-such-item-{self._unknown}")
        return Junk(key, _dump(click), RejectReason.UNKNOWN_ITEM)
