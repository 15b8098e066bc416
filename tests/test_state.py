"""The RocksDB store keeps records, latest recommendations and offsets together; the changelog
reader (with a fake consumer) brings a database up to its changelog."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import KafkaError

from stream.settings import RocksDBSettings
from stream.state import (
    APPLIED_KEY,
    NOTHING,
    ChangelogReader,
    RestoreError,
    StateStore,
)
from stream.user_record import UserRecord

OPTIONS = RocksDBSettings(block_cache_mb=8, write_buffer_mb=1, max_write_buffers=2)


RECORD = UserRecord(
    model_version=3, partition=2, offset=41, n=9, ring=["1196", "7"], vec=np.ones(3, "<f4")
)


def test_store_persists_records_and_offsets_across_reopen(tmp_path: Path) -> None:
    store = StateStore(tmp_path, OPTIONS)
    part = store.partition(2)
    assert (part.applied_offset, part.changelog_offset) == (NOTHING, NOTHING)
    part.write({b"u1": RECORD.encode()}, applied_offset=41, changelog_offset=7)
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


def test_latest_recommendations_commit_with_the_records_and_read_from_any_thread(
    tmp_path: Path,
) -> None:
    store = StateStore(tmp_path, OPTIONS)
    assert store.latest(2, "u1") is None  # a partition not open yet is never opened by a read
    store.commit({(2, "u1"): RECORD}, {(2, "u1"): b'{"items": ["7"]}'}, {2: 41}, {2: 8})
    part = store.partition(2)
    assert (part.applied_offset, part.changelog_offset) == (41, 8)
    read: list[bytes | None] = []
    reader = threading.Thread(target=lambda: read.append(store.latest(2, "u1")))
    reader.start()
    reader.join()
    assert read == [b'{"items": ["7"]}']
    assert store.latest(2, "u2") is None
    assert [user for user, _ in part.records()] == ["u1"]  # the latest key is no user
    part.wipe()
    assert store.latest(2, "u1") is None
    store.close()


# ------------------------------------------------------------------ the changelog reader
class FakeError:
    def __init__(self, code: int) -> None:
        self._code = code

    def code(self) -> int:
        return self._code


class FakeMessage:
    def __init__(self, partition: int, offset: int, key: bytes = b"", value: bytes = b"",
                 error: int | None = None) -> None:  # fmt: skip
        self._p, self._o, self._k, self._v = partition, offset, key, value
        self._e = None if error is None else FakeError(error)

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def key(self) -> bytes:
        return self._k

    def value(self) -> bytes:
        return self._v

    def error(self) -> FakeError | None:
        return self._e


class FakeChangelog:
    """A consumer of a changelog held in memory: each read delivers the records after the
    assigned offset, then librdkafka's partition-EOF (at the log end)."""

    def __init__(self, logs: dict[int, list[tuple[bytes, bytes]]]) -> None:
        self.logs = logs
        self.assigned: list[tuple[int, int]] = []
        self._queue: list[FakeMessage] = []

    def __call__(self) -> FakeChangelog:
        return self

    def assign(self, partitions: list) -> None:  # type: ignore[type-arg]
        self.assigned = [(tp.partition, tp.offset) for tp in partitions]
        self._queue = []
        for p, start in self.assigned:
            start = max(start, 0)  # OFFSET_BEGINNING is negative
            records = self.logs.get(p, [])
            self._queue += [
                FakeMessage(p, o, k, v) for o, (k, v) in enumerate(records) if o >= start
            ]
            self._queue.append(FakeMessage(p, len(records), error=KafkaError._PARTITION_EOF))

    def poll(self, timeout: float) -> FakeMessage | None:
        return self._queue.pop(0) if self._queue else None

    def consume(self, n: int, timeout: float) -> list[FakeMessage]:
        out, self._queue = self._queue[:n], self._queue[n:]
        return out

    def close(self) -> None:
        pass


def changelog_of(users: dict[str, int], applied: int) -> list[tuple[bytes, bytes]]:
    records = [(u.encode(), RECORD.encode()) for u in users]
    return [*records, (APPLIED_KEY, str(applied).encode())]


def test_catch_up_reads_only_what_the_database_lacks(tmp_path: Path) -> None:
    store = StateStore(tmp_path, OPTIONS)
    logs = {0: changelog_of({"u1": 1, "u2": 1}, applied=41), 1: []}
    changelog = FakeChangelog(logs)
    reader = ChangelogReader("state", timeout_s=10, consumer=changelog)
    assert reader.catch_up([store.partition(0), store.partition(1)]) == 3
    part = store.partition(0)
    assert part.get("u2") is not None and part.applied_offset == 41
    assert part.changelog_offset == 2
    logs[0] += [(b"u3", RECORD.encode())]
    assert reader.catch_up([part]) == 1  # a restart reads only the new record ...
    assert changelog.assigned == [(0, 3)]  # ... from the offset after the one it holds
    assert reader.catch_up([part]) == 0
    store.close()


def test_a_database_ahead_of_its_changelog_is_discarded_and_rebuilt(tmp_path: Path) -> None:
    """The broker lost the changelog (an in-memory broker restarted): the local offsets mean
    nothing now, so the partition starts over from what the topic holds."""
    store = StateStore(tmp_path, OPTIONS)
    part = store.partition(0)
    part.write({b"old": RECORD.encode()}, applied_offset=99, changelog_offset=50)
    reader = ChangelogReader("state", 10, FakeChangelog({0: changelog_of({"new": 1}, 7)}))
    assert reader.catch_up([part]) == 2
    assert part.get("old") is None and part.get("new") is not None
    assert (part.applied_offset, part.changelog_offset) == (7, 1)
    store.close()


def test_a_changelog_that_never_ends_is_a_restore_error(tmp_path: Path) -> None:
    class Endless(FakeChangelog):
        def poll(self, timeout: float) -> FakeMessage | None:
            return None

    store = StateStore(tmp_path, OPTIONS)
    with pytest.raises(RestoreError, match="not read to their end"):
        ChangelogReader("state", 0.2, Endless({})).catch_up([store.partition(0)])
    store.close()
