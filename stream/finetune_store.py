"""The fine-tune job's own RocksDB: the recent clicks of recent users, bounded.

RocksDB allows one writer process per database, so the job cannot read the worker's state store;
it keeps its own under ``<state_dir>/finetune``. Per user it keeps the last ``max_clicks`` item
ids (external ids, not indices: the vocabulary grows between runs) and at most ``max_users``
users, evicting the least recently active. One small block cache bounds its memory.

Keys: the user id -> JSON ``{"tick": n, "items": [...]}`` (``tick`` orders users by their last
click, so the LRU order survives a restart), plus bookkeeping keys starting with NUL (user ids
are printable, see ``stream.clicks``, so they cannot collide): the last tick and, per partition
of `clicks`, the last stored offset. Redelivered clicks (at-least-once) at or below it are
skipped, so a restart never stores a click twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import rocksdict

from stream.settings import RocksDBSettings
from stream.state import MIB, rocksdb_options

TICK_KEY = b"\x00tick"
OFFSET_PREFIX = b"\x00offset:"
NOTHING = -1  # offset meaning "nothing stored yet"


@dataclass(frozen=True, slots=True)
class StoredClick:
    partition: int
    offset: int
    user_id: str
    item_id: str


def _offset_key(partition: int) -> bytes:
    return OFFSET_PREFIX + str(partition).encode()


class RecentClicks:
    def __init__(
        self, path: Path, max_clicks: int, max_users: int, options: RocksDBSettings
    ) -> None:
        if max_clicks < 2 or max_users < 1:
            raise ValueError("keep at least 2 clicks per user (history + target) and 1 user")
        self.max_clicks = max_clicks
        self.max_users = max_users
        path.mkdir(parents=True, exist_ok=True)
        cache = rocksdict.Cache(options.block_cache_mb * MIB)
        self._db = rocksdict.Rdict(str(path), options=rocksdb_options(options, cache))
        raw_tick = self._db.get(TICK_KEY)
        self._tick = 0 if raw_tick is None else int(raw_tick)
        self._offsets: dict[int, int] = {}
        ticks: dict[str, int] = {}
        for key, value in self._db.items():
            assert isinstance(key, bytes) and isinstance(value, bytes)  # raw mode
            if key.startswith(OFFSET_PREFIX):
                self._offsets[int(key[len(OFFSET_PREFIX) :])] = int(value)
            elif not key.startswith(b"\x00"):
                ticks[key.decode()] = json.loads(value)["tick"]
        # insertion order = least recently active first
        self._lru: dict[str, int] = dict(sorted(ticks.items(), key=lambda kv: kv[1]))

    def __len__(self) -> int:
        return len(self._lru)

    def offset(self, partition: int) -> int:
        return self._offsets.get(partition, NOTHING)

    def _items(self, user_id: str) -> list[str]:
        raw = self._db.get(user_id.encode())
        return [] if raw is None else json.loads(raw)["items"]

    def add(self, clicks: list[StoredClick]) -> tuple[int, int]:
        """Append clicks (in consumption order) in one atomic write; (stored, duplicates)."""
        users: dict[str, list[str]] = {}
        offsets: dict[int, int] = {}
        duplicates = 0
        for click in clicks:
            if click.offset <= offsets.get(click.partition, self.offset(click.partition)):
                duplicates += 1
                continue
            offsets[click.partition] = click.offset
            self._append(users, click.user_id, click.item_id)
        self._write(users, offsets)
        return len(clicks) - duplicates, duplicates

    def add_history(self, histories: list[tuple[str, list[str]]]) -> None:
        """Clicks from before the stream (no Kafka position), user by user, least recently active
        first: a store that starts as if the job had been running."""
        users: dict[str, list[str]] = {}
        for user_id, items in histories:
            for item in items[-self.max_clicks :]:
                self._append(users, user_id, item)
        self._write(users, {})

    def _append(self, users: dict[str, list[str]], user_id: str, item_id: str) -> None:
        items = users.get(user_id)
        if items is None:
            items = users[user_id] = self._items(user_id)
        items.append(item_id)
        del items[: -self.max_clicks]
        self._tick += 1
        self._lru.pop(user_id, None)
        self._lru[user_id] = self._tick

    def _write(self, users: dict[str, list[str]], offsets: dict[int, int]) -> None:
        batch = rocksdict.WriteBatch(raw_mode=True)
        for user, items in users.items():
            record = {"tick": self._lru[user], "items": items}
            batch.put(user.encode(), json.dumps(record, separators=(",", ":")).encode())
        while len(self._lru) > self.max_users:
            evicted = next(iter(self._lru))
            del self._lru[evicted]
            batch.delete(evicted.encode())
        for partition, offset in offsets.items():
            batch.put(_offset_key(partition), str(offset).encode())
        batch.put(TICK_KEY, str(self._tick).encode())
        self._db.write(batch)
        self._offsets.update(offsets)

    @property
    def tick(self) -> int:
        """Clicks stored so far (a clock: each user remembers the tick of their last click)."""
        return self._tick

    def active_since(self, tick: int) -> int:
        """Users whose last click came after ``tick``: the last ones of ``sequences()``."""
        return sum(1 for t in self._lru.values() if t > tick)

    def sequences(self) -> list[tuple[str, list[str]]]:
        """(user id, item ids oldest first) per user, least recently active user first."""
        return [(user, self._items(user)) for user in self._lru]

    def close(self) -> None:
        self._db.close()
