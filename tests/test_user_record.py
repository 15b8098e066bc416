"""User records round-trip through bytes, old formats included; garbage is refused."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from stream.user_record import UserRecord


def make_record(with_vec: bool = True, ring: list[str] | None = None) -> UserRecord:
    ring = ["1196", "é-ü", "sku:42", "7", "260"] if ring is None else ring
    vec = np.linspace(-1, 1, 7, dtype=np.float32) if with_vec else None
    return UserRecord(model_version=3, partition=2, offset=41, n=9, ring=ring, vec=vec)


def test_record_round_trip_with_and_without_vector() -> None:
    rec = make_record()
    back = UserRecord.decode(rec.encode())
    assert (back.model_version, back.partition, back.offset, back.n) == (3, 2, 41, 9)
    assert back.ring == rec.ring and back.legacy_ring is None
    np.testing.assert_array_equal(back.vec, rec.vec)
    compact = UserRecord.decode(rec.encode(with_vec=False))
    assert compact.vec is None and compact.ring == rec.ring
    assert UserRecord.decode(make_record(ring=[]).encode()).ring == []


def test_format_1_records_keep_their_item_indices() -> None:
    """Records written before rings held item ids: the indices of their own model version."""
    ring = np.array([0, 0, 5, 3], dtype="<i4")
    header = struct.pack("<2sBBiiqqII", b"GS", 1, 0, 3, 2, 41, 2, len(ring), 0)
    old = UserRecord.decode(header + ring.tobytes())
    assert old.ring == [] and old.legacy_ring is not None and old.legacy_ring.tolist() == [5, 3]


@pytest.mark.parametrize("raw", [b"", b"XX" + b"\0" * 40, make_record().encode()[:-1]])
def test_garbage_records_are_refused(raw: bytes) -> None:
    with pytest.raises((ValueError, struct.error)):
        UserRecord.decode(raw)
