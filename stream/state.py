"""Per-user state: the record, its RocksDB home and its changelog, as one unit.

A worker keeps one RocksDB per `clicks` partition (so a partition's state moves as a unit) and
mirrors each into the same partition of a compacted changelog topic. A batch's new records are
sent to the changelog (``ChangelogWriter``) and, once the broker acked them, written to RocksDB
with the partition's applied offset in one atomic batch (``StateStore.commit``). On every
assignment ``ChangelogReader.catch_up`` reads each partition's changelog from the offset its
database already holds to the end, so a restart reads (almost) nothing and a partition moving to
another worker brings its state; a database whose changelog is gone (an in-memory broker was
restarted) is discarded and rebuilt from the topic.

A database holds each user's record (``stream.user_record``) under the user id, and two
bookkeeping keys, written with the records: the last applied `clicks` offset and the
last changelog offset it contains; and, per user, the last recommendation published for them
(``LATEST_PREFIX`` + user id: the message as sent), which ``GET /users/{id}/recommendations``
answers from (``stream.lookup``) and which travels with the changelog like the records. User ids
are printable (``stream.clicks``), so keys starting with NUL never collide with them.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import rocksdict
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from stream.settings import RocksDBSettings, Settings
from stream.topics import poll_batch
from stream.user_record import UserRecord

log = logging.getLogger(__name__)

APPLIED_KEY = b"\x00applied"  # last `clicks` offset applied in this partition
CHANGELOG_KEY = b"\x00changelog"  # last changelog offset folded into this database
LATEST_PREFIX = b"\x00latest:"  # + user id: the last recommendation published for the user
NOTHING = -1  # offset meaning "none yet"
MIB = 1024 * 1024
RESTORE_CHUNK = 5000  # records per RocksDB write batch while restoring
POLL_S = 0.5


def rocksdb_options(options: RocksDBSettings, cache: rocksdict.Cache) -> rocksdict.Options:
    """Raw-bytes databases whose memory is bounded: small memtables, and index and filter blocks
    charged to ``cache`` (faust's default would be a 2 GiB block cache per partition)."""
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_write_buffer_size(options.write_buffer_mb * MIB)
    opts.set_max_write_buffer_number(options.max_write_buffers)
    table = rocksdict.BlockBasedOptions()
    table.set_block_cache(cache)
    table.set_bloom_filter(10, False)  # 10 bits per key: ~1% false positives on misses
    table.set_cache_index_and_filter_blocks(True)
    opts.set_block_based_table_factory(table)
    return opts


class PartitionStore:
    """One partition's RocksDB: user records + the two bookkeeping offsets."""

    def __init__(self, path: Path, options: rocksdict.Options, partition: int) -> None:
        self.path = path
        self.partition = partition
        self._options = options
        # Lookups read from the endpoint thread: the lock keeps them off a database being
        # wiped or closed (RocksDB itself takes concurrent reads and writes).
        self._lock = threading.Lock()
        self._db = rocksdict.Rdict(str(path), options=options)
        self.applied_offset = self._read_offset(APPLIED_KEY)
        self.changelog_offset = self._read_offset(CHANGELOG_KEY)

    def _read_offset(self, key: bytes) -> int:
        raw = self._db.get(key)
        return NOTHING if raw is None else int(raw)

    def size(self) -> tuple[int, int]:
        """(estimated keys, bytes in SST files + memtables): RocksDB's own cheap figures."""
        keys = self._db.property_int_value("rocksdb.estimate-num-keys") or 0
        disk = self._db.property_int_value("rocksdb.total-sst-files-size") or 0
        memory = self._db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0
        return keys, disk + memory

    def get(self, user_id: str) -> UserRecord | None:
        raw = self._db.get(user_id.encode())
        return None if raw is None else UserRecord.decode(raw)

    def latest(self, user_id: str) -> bytes | None:
        """The last recommendation published for the user (from any thread)."""
        with self._lock:
            value = self._db.get(LATEST_PREFIX + user_id.encode())
        assert value is None or isinstance(value, bytes)  # raw mode
        return value

    def records(self) -> Iterator[tuple[str, UserRecord]]:
        """Every user record (not the bookkeeping keys), in key order."""
        for key, value in self._db.items():
            assert isinstance(key, bytes) and isinstance(value, bytes)  # raw mode
            if not key.startswith(b"\x00"):
                yield key.decode(), UserRecord.decode(value)

    def write(
        self,
        records: dict[bytes, bytes],
        *,
        applied_offset: int | None = None,
        changelog_offset: int | None = None,
    ) -> None:
        """Records and offsets in one atomic batch: a crash keeps all of it or none."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in records.items():
            batch.put(key, value)
        if applied_offset is not None:
            batch.put(APPLIED_KEY, str(applied_offset).encode())
        if changelog_offset is not None:
            batch.put(CHANGELOG_KEY, str(changelog_offset).encode())
        self._db.write(batch)
        if applied_offset is not None:
            self.applied_offset = applied_offset
        if changelog_offset is not None:
            self.changelog_offset = changelog_offset

    def wipe(self) -> None:
        """Drop everything (the changelog it mirrored is gone); reopen empty."""
        with self._lock:
            self._db.close()
            shutil.rmtree(self.path)
            self._db = rocksdict.Rdict(str(self.path), options=self._options)
        self.applied_offset = self.changelog_offset = NOTHING

    def close(self) -> None:
        with self._lock:
            self._db.close()


Records = dict[tuple[int, str], UserRecord]  # (partition, user id) -> record
Latest = dict[tuple[int, str], bytes]  # (partition, user id) -> last recommendation sent


class StateStore:
    """All partition databases of one worker under ``root``, opened on first use, sharing one
    block cache: memory stays bounded however many partitions this worker holds."""

    def __init__(self, root: Path, options: RocksDBSettings) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._options = rocksdb_options(options, rocksdict.Cache(options.block_cache_mb * MIB))
        self._partitions: dict[int, PartitionStore] = {}

    def partition(self, partition: int) -> PartitionStore:
        store = self._partitions.get(partition)
        if store is None:
            path = self.root / f"p{partition:04d}"
            store = self._partitions[partition] = PartitionStore(path, self._options, partition)
        return store

    def get(self, partition: int, user_id: str) -> UserRecord | None:
        return self.partition(partition).get(user_id)

    def latest(self, partition: int, user_id: str) -> bytes | None:
        """The user's last recommendation, from a partition already open (any thread: it never
        opens one)."""
        store = self._partitions.get(partition)
        return None if store is None else store.latest(user_id)

    def commit(
        self, records: Records, latest: Latest, applied: dict[int, int], changelog: dict[int, int]
    ) -> None:
        """After the changelog acked them: each partition's records, latest recommendations
        and offsets, atomically."""
        by_partition: dict[int, dict[bytes, bytes]] = defaultdict(dict)
        for (partition, user), record in records.items():
            by_partition[partition][user.encode()] = record.encode()
        for (partition, user), recommendation in latest.items():
            by_partition[partition][LATEST_PREFIX + user.encode()] = recommendation
        for partition, offset in applied.items():
            self.partition(partition).write(
                by_partition[partition],
                applied_offset=offset,
                changelog_offset=changelog[partition],
            )

    def sizes(self) -> dict[int, tuple[int, int]]:
        """{partition: (estimated keys, bytes)} of the partition databases opened so far."""
        return {partition: store.size() for partition, store in self._partitions.items()}

    def close(self) -> None:
        for store in self._partitions.values():
            store.close()
        self._partitions.clear()


class Sender(Protocol):
    def send(
        self, topic: str, key: bytes | None, value: bytes, partition: int | None = None
    ) -> None: ...


class ChangelogWriter:
    """Sends a batch's records and the partitions' applied offsets to the changelog: partition p
    of the changelog mirrors the database of `clicks` partition p, key for key."""

    def __init__(self, topic: str, sender: Sender) -> None:
        self.topic = topic
        self._sender = sender

    def send(
        self, records: Records, latest: Latest, applied: dict[int, int], with_vec: bool
    ) -> None:
        for (partition, user), record in records.items():
            value = record.encode(with_vec=with_vec)
            self._sender.send(self.topic, user.encode(), value, partition=partition)
        for (partition, user), recommendation in latest.items():
            key = LATEST_PREFIX + user.encode()
            self._sender.send(self.topic, key, recommendation, partition=partition)
        # the applied offsets too, so a new owner knows where to resume
        for partition, offset in applied.items():
            self._sender.send(self.topic, APPLIED_KEY, str(offset).encode(), partition=partition)


class RestoreError(RuntimeError):
    """The changelog could not be read to its end in time."""


class _Restore:
    """One read of some partitions' changelog to its end: pending records per partition, written
    to RocksDB in chunks; partitions whose changelog ends before their local offset are lost."""

    def __init__(self, stores: list[PartitionStore]) -> None:
        self.stores = {s.partition: s for s in stores}
        self.pending: dict[int, dict[bytes, bytes]] = {p: {} for p in self.stores}
        self.last = {p: s.changelog_offset for p, s in self.stores.items()}
        self.open = set(self.stores)
        self.lost: list[PartitionStore] = []
        self.applied = 0

    def take(self, msg: Any) -> None:
        p, err = msg.partition(), msg.error()
        if err is None:
            self.pending[p][msg.key()] = msg.value()
            self.last[p] = msg.offset()
            if len(self.pending[p]) >= RESTORE_CHUNK:
                self.flush(p)
        elif err.code() == KafkaError._PARTITION_EOF and p in self.open:
            self.open.discard(p)
            if msg.offset() <= self.stores[p].changelog_offset:
                self.lost.append(self.stores[p])
            else:
                self.flush(p)
        elif err.code() == KafkaError._AUTO_OFFSET_RESET:  # the broker lost the topic
            self.open.discard(p)
            self.lost.append(self.stores[p])
        elif err.code() != KafkaError._PARTITION_EOF:
            raise KafkaException(err)

    def flush(self, p: int) -> None:
        store, pending, last = self.stores[p], self.pending[p], self.last[p]
        if last == store.changelog_offset:
            return
        self.applied += len(pending)
        applied = pending.pop(APPLIED_KEY, None)
        store.write(
            pending, applied_offset=None if applied is None else int(applied), changelog_offset=last
        )
        pending.clear()


class ChangelogReader:
    """Brings partitions' RocksDBs up to the end of their changelog partitions."""

    def __init__(self, topic: str, timeout_s: float, consumer: Callable[[], Any]) -> None:
        self.topic = topic
        self._timeout_s = timeout_s
        self._consumer = consumer  # a fresh, group-less confluent-kafka consumer per read

    @classmethod
    def from_settings(cls, settings: Settings) -> ChangelogReader:
        def consumer() -> Consumer:
            conf = settings.kafka.confluent_consumer_config(
                f"{settings.worker.app_id}-restore-{uuid.uuid4().hex[:8]}",  # never commits
                **{
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                    # an offset past the end means the broker lost the topic: say so, don't guess
                    "auto.offset.reset": "error",
                    "fetch.wait.max.ms": settings.worker.restore_fetch_max_wait_ms,
                },
            )
            return Consumer(conf)

        return cls(settings.topics.state_changelog, settings.worker.restore_timeout_s, consumer)

    def catch_up(self, stores: list[PartitionStore]) -> int:
        """Apply each partition's changelog after its ``changelog_offset``; the records applied."""
        first = self._read(stores)
        for store in first.lost:
            # This database mirrors a changelog that no longer exists (e.g. an in-memory broker
            # was restarted): its offsets mean nothing now. Start it over from the topic.
            log.warning(
                "changelog %s[%d] ends before offset %d held locally (the broker lost it): "
                "discarding the local state of partition %d",
                self.topic,
                store.partition,
                store.changelog_offset,
                store.partition,
            )
            store.wipe()
        return first.applied + (self._read(first.lost).applied if first.lost else 0)

    def _read(self, stores: list[PartitionStore]) -> _Restore:
        """Read every store's partition to its end (librdkafka's partition EOF, which follows the
        Fetch high watermark, not the ListOffsets the embedded broker under-reports)."""
        restore = _Restore(stores)
        deadline = time.monotonic() + self._timeout_s
        consumer = self._consumer()
        try:
            consumer.assign(
                [  # the first offset may be compacted away: from the beginning, not offset 0
                    TopicPartition(self.topic, p, s.changelog_offset + 1)
                    if s.changelog_offset >= 0
                    else TopicPartition(self.topic, p, OFFSET_BEGINNING)
                    for p, s in restore.stores.items()
                ]
            )
            while restore.open:
                if time.monotonic() > deadline:
                    raise RestoreError(
                        f"changelog {self.topic} partitions {sorted(restore.open)} not read "
                        f"to their end in {self._timeout_s}s"
                    )
                for msg in poll_batch(consumer, RESTORE_CHUNK, POLL_S):
                    restore.take(msg)
        finally:
            consumer.close()
        return restore
