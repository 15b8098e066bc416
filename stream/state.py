"""The per-user state record and its RocksDB home, one database per `clicks` partition.

A record is a fixed header followed by the model state of one user::

    magic "GS" | format u8 | flags u8 | model_version i32 | partition i32 | offset i64 |
    n i64 | ring_len u32 | vec_len u32 | ring (ring_len x int32) | vec (vec_len x float32)

``offset`` is the last click applied to this user (in ``partition``), ``n`` the number of
clicks applied, ``ring`` the last item indices (most recent last, 0 = empty slot) and ``vec`` the
recurrent state of the model ``model_version``. ``vec_len == 0`` means "no vector": the changelog
may ship records without it (the faithful model's vector is a function of the ring), and the
scorer rebuilds it from the ring, exactly as after a model change.

Each partition database also holds two bookkeeping keys, written in the same batch as the
records: the last applied `clicks` offset of the partition and the last changelog offset whose
records it contains. User ids are printable (see ``stream.clicks``), so keys starting with NUL
can never collide with them.
"""

from __future__ import annotations

import logging
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rocksdict

log = logging.getLogger(__name__)

MAGIC = b"GS"
FORMAT = 1
_HEADER = struct.Struct("<2sBBiiqqII")
APPLIED_KEY = b"\x00applied"  # last `clicks` offset applied in this partition
CHANGELOG_KEY = b"\x00changelog"  # last changelog offset folded into this database
NOTHING = -1  # offset meaning "none yet"
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class UserRecord:
    model_version: int
    partition: int
    offset: int
    n: int
    ring: np.ndarray  # int32 (ring_len,)
    vec: np.ndarray | None  # float32 (vec_len,); None = rebuild from the ring

    def encode(self, with_vec: bool = True) -> bytes:
        vec = self.vec if with_vec and self.vec is not None else None
        header = _HEADER.pack(
            MAGIC,
            FORMAT,
            0,
            self.model_version,
            self.partition,
            self.offset,
            self.n,
            len(self.ring),
            0 if vec is None else len(vec),
        )
        ring = np.ascontiguousarray(self.ring, dtype="<i4").tobytes()
        return header + ring + (b"" if vec is None else np.ascontiguousarray(vec, "<f4").tobytes())

    @staticmethod
    def decode(raw: bytes) -> UserRecord:
        magic, fmt, _, version, partition, offset, n, ring_len, vec_len = _HEADER.unpack_from(raw)
        if magic != MAGIC or fmt != FORMAT:
            raise ValueError(f"not a user record (magic {magic!r}, format {fmt})")
        expected = _HEADER.size + 4 * (ring_len + vec_len)
        if len(raw) != expected:
            raise ValueError(f"user record has {len(raw)} bytes, expected {expected}")
        ring = np.frombuffer(raw, "<i4", ring_len, _HEADER.size)
        vec = np.frombuffer(raw, "<f4", vec_len, _HEADER.size + 4 * ring_len) if vec_len else None
        return UserRecord(version, partition, offset, n, ring, vec)


@dataclass(frozen=True)
class StoreOptions:
    block_cache_mb: int
    write_buffer_mb: int
    max_write_buffers: int


def _encode_offset(offset: int) -> bytes:
    return str(offset).encode()


class PartitionStore:
    """One partition's RocksDB: user records + the two bookkeeping offsets."""

    def __init__(self, path: Path, options: rocksdict.Options, partition: int) -> None:
        self.path = path
        self.partition = partition
        self._options = options
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
            batch.put(APPLIED_KEY, _encode_offset(applied_offset))
        if changelog_offset is not None:
            batch.put(CHANGELOG_KEY, _encode_offset(changelog_offset))
        self._db.write(batch)
        if applied_offset is not None:
            self.applied_offset = applied_offset
        if changelog_offset is not None:
            self.changelog_offset = changelog_offset

    def wipe(self) -> None:
        """Drop everything (the changelog it mirrored is gone); reopen empty."""
        self._db.close()
        shutil.rmtree(self.path)
        self._db = rocksdict.Rdict(str(self.path), options=self._options)
        self.applied_offset = self.changelog_offset = NOTHING

    def close(self) -> None:
        self._db.close()


class StateStore:
    """All partition databases of one worker under ``root``, opened on first use.

    The block cache is shared by every partition database, and memtables are small and few, so
    memory stays bounded however many partitions this worker holds.
    """

    def __init__(self, root: Path, options: StoreOptions) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._cache = rocksdict.Cache(options.block_cache_mb * MIB)
        self._options = self._db_options(options)
        self._partitions: dict[int, PartitionStore] = {}

    def _db_options(self, options: StoreOptions) -> rocksdict.Options:
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_write_buffer_size(options.write_buffer_mb * MIB)
        opts.set_max_write_buffer_number(options.max_write_buffers)
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(self._cache)
        table.set_bloom_filter(10, False)  # 10 bits per key: ~1% false positives on misses
        # index and filter blocks live in (and are bounded by) the shared cache
        table.set_cache_index_and_filter_blocks(True)
        opts.set_block_based_table_factory(table)
        return opts

    def partition(self, partition: int) -> PartitionStore:
        store = self._partitions.get(partition)
        if store is None:
            path = self.root / f"p{partition:04d}"
            store = self._partitions[partition] = PartitionStore(path, self._options, partition)
        return store

    def sizes(self) -> dict[int, tuple[int, int]]:
        """{partition: (estimated keys, bytes)} of the partition databases opened so far."""
        return {partition: store.size() for partition, store in self._partitions.items()}

    def close(self) -> None:
        for store in self._partitions.values():
            store.close()
        self._partitions.clear()
