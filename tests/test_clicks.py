"""Click parsing: valid clicks come out typed, everything else as a Rejection; never an exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream.clicks import Click, Rejection, parse_click
from stream.messages import RejectReason

MAX = 4096


def raw(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_valid_click_string_and_int_ids() -> None:
    c = parse_click(raw({"user_id": "u1", "item_id": 42, "ts": 1600000000}), b"u1", MAX)
    assert c == Click("u1", "42", 1600000000.0, None)
    c = parse_click(raw({"user_id": 7, "item_id": "x", "ts": 1.5, "event_id": "e"}), b"7", MAX)
    assert c == Click("7", "x", 1.5, "e")


@pytest.mark.parametrize(
    ("value", "key", "reason"),
    [
        (b"\xff\xfe", b"u", RejectReason.INVALID_JSON),
        (b"{", b"u", RejectReason.INVALID_JSON),
        (b'{"user_id": "u", "item_id": 1, "ts": NaN}', b"u", RejectReason.INVALID_JSON),
        (None, b"u", RejectReason.INVALID_JSON),
        (raw([1, 2]), b"u", RejectReason.NOT_AN_OBJECT),
        (raw({"user_id": "u", "ts": 1}), b"u", RejectReason.MISSING_FIELD),
        (raw({"user_id": -1, "item_id": 1, "ts": 1}), b"-1", RejectReason.BAD_USER_ID),
        (raw({"user_id": True, "item_id": 1, "ts": 1}), b"True", RejectReason.BAD_USER_ID),
        (raw({"user_id": "", "item_id": 1, "ts": 1}), b"", RejectReason.BAD_USER_ID),
        (raw({"user_id": "a\x00b", "item_id": 1, "ts": 1}), b"a\x00b", RejectReason.BAD_USER_ID),
        (raw({"user_id": "u", "item_id": 2**63, "ts": 1}), b"u", RejectReason.BAD_ITEM_ID),
        (raw({"user_id": "u", "item_id": 3.0, "ts": 1}), b"u", RejectReason.BAD_ITEM_ID),
        (raw({"user_id": "u", "item_id": None, "ts": 1}), b"u", RejectReason.BAD_ITEM_ID),
        (raw({"user_id": "u", "item_id": "x" * 200, "ts": 1}), b"u", RejectReason.BAD_ITEM_ID),
        (raw({"user_id": "u", "item_id": 1, "ts": "now"}), b"u", RejectReason.BAD_TS),
        (raw({"user_id": "u", "item_id": 1, "ts": -5}), b"u", RejectReason.BAD_TS),
        (raw({"user_id": "u", "item_id": 1, "ts": 1.7e12}), b"u", RejectReason.BAD_TS),  # ms
        (raw({"user_id": "u", "item_id": 1, "ts": False}), b"u", RejectReason.BAD_TS),
        (
            raw({"user_id": "u", "item_id": 1, "ts": 1, "event_id": []}),
            b"u",
            RejectReason.BAD_EVENT_ID,
        ),
        (raw({"user_id": "u", "item_id": 1, "ts": 1}), b"v", RejectReason.KEY_MISMATCH),
        (raw({"user_id": "u", "item_id": 1, "ts": 1}), None, RejectReason.KEY_MISMATCH),
        (
            raw({"user_id": "u", "item_id": 1, "ts": 1, "pad": "x" * MAX}),
            b"u",
            RejectReason.OVERSIZED,
        ),
    ],
)
def test_rejections(value: bytes | None, key: bytes | None, reason: str) -> None:
    result = parse_click(value, key, MAX)
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert result.reason in set(RejectReason)


def test_deeply_nested_json_is_rejected_not_raised() -> None:
    result = parse_click(b"[" * 100_000, b"u", 10**6)
    assert isinstance(result, Rejection) and result.reason == RejectReason.INVALID_JSON


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=10,
)


@given(value=st.binary(max_size=512) | json_values.map(raw), key=st.none() | st.binary(max_size=8))
def test_never_raises(value: bytes, key: bytes | None) -> None:
    assert isinstance(parse_click(value, key, MAX), Click | Rejection)


@given(
    user=st.integers(0, 2**63 - 1) | st.text(min_size=1, max_size=20).filter(str.isprintable),
    item=st.integers(0, 2**63 - 1),
    ts=st.floats(0, 1e10),
)
def test_valid_fields_round_trip(user: int | str, item: int, ts: float) -> None:
    click = parse_click(raw({"user_id": user, "item_id": item, "ts": ts}), str(user).encode(), MAX)
    assert click == Click(str(user), str(item), ts, None)
