"""One user's stored state: the record a worker keeps in RocksDB and its changelog.

A record is a fixed header followed by the history and the model state of one user::

    magic "GS" | format u8 | flags u8 | model_version i32 | partition i32 | offset i64 |
    n i64 | ring_bytes u32 | vec_len u32 | ring (NUL-separated UTF-8 item ids) |
    vec (vec_len x float32)

``offset`` is the last click applied to this user, ``n`` the clicks applied, ``ring`` the last
items (external ids, most recent last: a model swap can never misread them, whatever order the
new model's vocabulary has) and ``vec`` the recurrent state of the model ``model_version``.
``vec_len == 0`` means "no vector": the changelog ships records without it when the model's
state is a function of the ring, and the scorer rebuilds it from the ring, as after a model
change. Records of format 1 (item indices instead of ids) are still read: their indices are
``legacy_ring``, meaningful only in the vocabulary of their model version.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from model.recommender import StreamState

MAGIC = b"GS"
FORMAT = 2
LEGACY_FORMAT = 1  # rings of item indices
SEPARATOR = "\x00"  # between the ring's item ids (ids are printable: never in one)
_HEADER = struct.Struct("<2sBBiiqqII")


@dataclass(frozen=True, slots=True)
class UserRecord:
    model_version: int
    partition: int
    offset: int
    n: int
    ring: list[str]  # the last items, external ids, most recent last
    vec: np.ndarray | None  # float32 (vec_len,); None = rebuild from the ring
    legacy_ring: np.ndarray | None = None  # format 1: item indices of ``model_version``

    def encode(self, with_vec: bool = True) -> bytes:
        vec = self.vec if with_vec and self.vec is not None else None
        ring = SEPARATOR.join(self.ring).encode()
        header = _HEADER.pack(
            MAGIC,
            FORMAT,
            0,
            self.model_version,
            self.partition,
            self.offset,
            self.n,
            len(ring),
            0 if vec is None else len(vec),
        )
        return header + ring + (b"" if vec is None else np.ascontiguousarray(vec, "<f4").tobytes())

    @staticmethod
    def from_state(
        state: StreamState,
        slot: int,
        vocab: list[str],
        version: int,
        partition: int,
        offset: int,
        with_vec: bool,
    ) -> UserRecord:
        """User ``slot`` of a batched state on the CPU; its ring as item ids of ``vocab``."""
        ring = [vocab[i] for i in state.ring[slot].tolist() if i > 0]
        vec = state.vec[slot].numpy() if with_vec else None
        return UserRecord(version, partition, offset, int(state.n[slot]), ring, vec)

    @staticmethod
    def decode(raw: bytes) -> UserRecord:
        magic, fmt, _, version, partition, offset, n, ring_len, vec_len = _HEADER.unpack_from(raw)
        if magic != MAGIC or fmt not in (LEGACY_FORMAT, FORMAT):
            raise ValueError(f"not a user record (magic {magic!r}, format {fmt})")
        ring_bytes = 4 * ring_len if fmt == LEGACY_FORMAT else ring_len
        expected = _HEADER.size + ring_bytes + 4 * vec_len
        if len(raw) != expected:
            raise ValueError(f"user record has {len(raw)} bytes, expected {expected}")
        end = _HEADER.size + ring_bytes
        vec = np.frombuffer(raw, "<f4", vec_len, end) if vec_len else None
        if fmt == LEGACY_FORMAT:
            indices = np.frombuffer(raw, "<i4", ring_len, _HEADER.size)
            return UserRecord(version, partition, offset, n, [], vec, indices[indices > 0])
        blob = raw[_HEADER.size : end].decode()
        return UserRecord(version, partition, offset, n, blob.split(SEPARATOR) if blob else [], vec)
