"""User records round-trip through bytes; the RocksDB store keeps records and offsets together."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from stream.settings import RocksDBSettings
from stream.state import NOTHING, StateStore, UserRecord

OPTIONS = RocksDBSettings(block_cache_mb=8, write_buffer_mb=1, max_write_buffers=2)


def make_record(with_vec: bool = True) -> UserRecord:
    ring = np.arange(5, dtype=np.int32)
    vec = np.linspace(-1, 1, 7, dtype=np.float32) if with_vec else None
    return UserRecord(model_version=3, partition=2, offset=41, n=9, ring=ring, vec=vec)


def test_record_round_trip_with_and_without_vector() -> None:
    rec = make_record()
    back = UserRecord.decode(rec.encode())
    assert (back.model_version, back.partition, back.offset, back.n) == (3, 2, 41, 9)
    np.testing.assert_array_equal(back.ring, rec.ring)
    np.testing.assert_array_equal(back.vec, rec.vec)
    compact = UserRecord.decode(rec.encode(with_vec=False))
    assert compact.vec is None
    np.testing.assert_array_equal(compact.ring, rec.ring)


@pytest.mark.parametrize("raw", [b"", b"XX" + b"\0" * 40, make_record().encode()[:-1]])
def test_garbage_records_are_refused(raw: bytes) -> None:
    with pytest.raises((ValueError, struct.error)):
        UserRecord.decode(raw)


def test_store_persists_records_and_offsets_across_reopen(tmp_path: Path) -> None:
    store = StateStore(tmp_path, OPTIONS)
    part = store.partition(2)
    assert (part.applied_offset, part.changelog_offset) == (NOTHING, NOTHING)
    part.write({b"u1": make_record().encode()}, applied_offset=41, changelog_offset=7)
    store.close()

    store = StateStore(tmp_path, OPTIONS)
    part = store.partition(2)
    assert (part.applied_offset, part.changelog_offset) == (41, 7)
    got = part.get("u1")
    assert got is not None and got.n == 9
    assert part.get("u2") is None
    assert [user for user, _ in part.records()] == ["u1"]  # not the bookkeeping offsets
    assert store.partition(0).applied_offset == NOTHING  # partitions are separate databases
    part.wipe()
    assert part.get("u1") is None and part.applied_offset == NOTHING
    store.close()
