"""One micro-batch of raw clicks in, recommendations + DLQ records + new user states out.

``ClickProcessor.process`` is synchronous and runs in the worker's batch process
(``stream.batch_process``), one call at a time, never on faust's event loop. Per batch, in this
order:

1. admit each message by offset: every `clicks` partition is applied strictly in offset order,
   exactly once, against the partition's stored *applied offset* (see ``PartitionCursor``);
2. parse admitted messages; rejects and unknown items go to the DLQ;
3. run the model (one batched step per round, see ``stream.scoring``);
4. send recommendations and DLQ records and wait for their acks, then the changelog (acked too);
5. only then write the new user states and applied offsets to RocksDB (one batch per partition).

A crash before 5 re-applies the batch after restart and republishes the same recommendations
(same state, same model, same content except ``published_ts``); a crash after 5 finds the clicks
already applied and skips them. The applied offsets, not Kafka's committed offsets, decide what
is applied: faust may commit past clicks it never delivered (faust-streaming issue #596), so a
partition that jumps ahead is seeked back to its first unapplied offset.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from enum import Enum

from stream import metrics
from stream.changelog import ChangelogReader
from stream.clicks import UNKNOWN_ITEM, Click, Rejection, parse_click
from stream.publisher import DeliveryError, Publisher
from stream.scoring import ModelSource, Scorer
from stream.settings import Settings
from stream.state import APPLIED_KEY, StateStore, UserRecord

log = logging.getLogger(__name__)

REASON_HEADER = "reason"


@dataclass(frozen=True, slots=True)
class RawClick:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    # For the latency metrics only: the record's Kafka timestamp (unix seconds) and when the
    # worker received it (time.monotonic()); None where unknown.
    timestamp: float | None = None
    read_at: float | None = None


class Admit(Enum):
    APPLY = "apply"
    DUPLICATE = "duplicate"  # at or below the applied offset: applied before
    SEEK = "seek"  # offsets were skipped: re-read from the first unapplied one
    OUT_OF_ORDER = "out_of_order"  # fetched before the seek took effect: dropped


class PartitionCursor:
    """Admits a partition's offsets strictly in order after the last applied one.

    When a message arrives past ``applied + 1``, the messages in between were lost in flight
    (faust-streaming #596) or never fetched: ask for a seek back and drop everything until the
    re-read arrives. If the re-read starts later than asked, the log really has no such offsets
    (compaction, transaction markers): accept the gap once.
    """

    def __init__(self, applied: int) -> None:
        self.applied = applied
        self._pending: int | None = None  # first offset seen past a gap, while seeking back

    def admit(self, offset: int) -> Admit:
        expected = self.applied + 1
        if offset < expected:
            return Admit.DUPLICATE
        if offset > expected:
            if self._pending is None:
                self._pending = offset
                return Admit.SEEK
            if offset > self._pending:  # still the stream from before the seek
                return Admit.OUT_OF_ORDER
            log.warning("offsets %d..%d do not exist in this partition", expected, offset - 1)
        self._pending = None
        self.applied = offset
        return Admit.APPLY


@dataclass(frozen=True, slots=True)
class _Valid:
    message: RawClick
    click: Click
    item: int  # item index in the served model's vocabulary


class ClickProcessor:
    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        publisher: Publisher,
        changelog: ChangelogReader,
        models: ModelSource,
    ) -> None:
        self.settings = settings
        self.store = store
        self.publisher = publisher
        self.changelog = changelog
        self.models = models
        self.scorer: Scorer = models.load()
        metrics.MODEL_VERSION.set(self.scorer.version)
        self._cursors: dict[int, PartitionCursor] = {}

    def close(self) -> None:
        self.publisher.close()
        self.store.close()

    # ------------------------------------------------------------------ admission
    def prepare(self, partitions: set[int]) -> dict[int, int]:
        """After a rebalance: catch the partitions up with their changelogs (another worker may
        have written them meanwhile) and return where each must resume, {partition: offset}.

        The stored applied offset decides, not Kafka's committed offset: faust may commit
        clicks it never delivered (#596), or commit behind what was applied (a crash between
        persist and commit), and both are fixed by resuming right after the last applied click.
        """
        started = time.monotonic()
        stores = [self.store.partition(p) for p in sorted(partitions)]
        restored = self.changelog.catch_up(stores)
        for store in stores:
            self._cursors[store.partition] = PartitionCursor(store.applied_offset)
        log.info(
            "partitions %s ready in %.2fs (%d changelog records); applied offsets %s",
            sorted(partitions),
            time.monotonic() - started,
            restored,
            {s.partition: s.applied_offset for s in stores},
        )
        return {s.partition: s.applied_offset + 1 for s in stores}

    def _cursor(self, partition: int) -> PartitionCursor:
        cursor = self._cursors.get(partition)
        if cursor is None:  # a partition faust did not announce through a seek: be safe
            self.prepare({partition})
            cursor = self._cursors[partition]
        return cursor

    def _admit(
        self, batch: list[RawClick], assigned: set[int]
    ) -> tuple[list[RawClick], dict[int, int]]:
        admitted: list[RawClick] = []
        seeks: dict[int, int] = {}
        for message in batch:
            if message.partition not in assigned:  # queued before a rebalance took it away
                metrics.CLICKS.labels("out_of_order").inc()
                continue
            cursor = self._cursor(message.partition)
            decision = cursor.admit(message.offset)
            if decision is Admit.APPLY:
                admitted.append(message)
            elif decision is Admit.SEEK:
                seeks[message.partition] = cursor.applied + 1
                metrics.GAPS.inc()
                log.warning(
                    "partition %d jumped to offset %d, expected %d: seeking back",
                    message.partition,
                    message.offset,
                    cursor.applied + 1,
                )
            else:
                metrics.CLICKS.labels(decision.value).inc()
        return admitted, seeks

    # ------------------------------------------------------------------ the batch
    def refresh_model(self) -> None:
        """Swap in the registry's new current version, if any (between batches)."""
        new_scorer = self.models.poll(self.scorer)
        if new_scorer is not None:
            self.scorer = new_scorer
            metrics.MODEL_SWAPS.inc()
            metrics.MODEL_VERSION.set(new_scorer.version)

    def applied_offsets(self) -> dict[int, int]:
        """{partition: last applied offset}."""
        return {partition: cursor.applied for partition, cursor in self._cursors.items()}

    def update_store_metrics(self) -> None:
        """Publish the state store's size; between batches, like every store access."""
        for partition, (keys, size) in self.store.sizes().items():
            metrics.STATE_KEYS.labels(str(partition)).set(keys)
            metrics.STATE_BYTES.labels(str(partition)).set(size)

    def process(self, batch: list[RawClick], assigned: set[int]) -> dict[int, int]:
        """Apply a batch; return the seeks {partition: offset} the consumer must perform."""
        started = time.monotonic()
        metrics.BATCH_CLICKS.observe(len(batch))
        admitted, seeks = self._admit(batch, assigned)
        if admitted:
            self._apply_with_retries(admitted)
        metrics.BATCH_SECONDS.observe(time.monotonic() - started)
        return seeks

    def _apply_with_retries(self, admitted: list[RawClick]) -> None:
        """Apply; if the broker does not ack the outputs, retry with a new producer.

        Safe because nothing local changes before every output is acked: a retry reads the
        same stored states and republishes the same content (consumers may see it twice).
        """
        attempts = self.settings.worker.delivery_attempts
        for attempt in range(1, attempts + 1):
            try:
                self._apply(admitted)
                return
            except DeliveryError as e:
                metrics.DELIVERY_FAILURES.inc()
                if attempt == attempts:
                    raise
                backoff = min(2.0 ** (attempt - 1), self.settings.worker.delivery_backoff_max_s)
                log.warning(
                    "batch of %d clicks not delivered (attempt %d of %d): %s; retrying in %.0fs "
                    "with a new producer",
                    len(admitted),
                    attempt,
                    attempts,
                    e,
                    backoff,
                )
                time.sleep(backoff)
                self.publisher.reset()

    def _apply(self, admitted: list[RawClick]) -> None:
        valid: list[_Valid] = []
        for message in admitted:
            parsed = parse_click(message.value, message.key, self.settings.worker.max_click_bytes)
            if isinstance(parsed, Click):
                item = self.scorer.item_index(parsed.item_id)
                if item is not None:
                    valid.append(_Valid(message, parsed, item))
                    continue
                # Unknown item: no model step (it has no embedding), the click is counted and
                # recorded in the DLQ; the user's state and recommendations stay as they were.
                parsed = Rejection(
                    UNKNOWN_ITEM,
                    f"item {parsed.item_id!r} is not in model version {self.scorer.version}",
                )
            self._dead_letter(message, parsed)

        records = self._score(valid) if valid else {}
        # Outputs first: the changelog says "applied", and a worker restored from it never
        # re-sends, so a kill -9 between the two must find the outputs already acked.
        waited = time.monotonic()
        self.publisher.wait()
        waiting = time.monotonic() - waited
        with_vec = not self.scorer.ring_is_enough
        for (partition, user), record in records.items():
            self.publisher.send(
                self.settings.topics.state_changelog,
                user.encode(),
                record.encode(with_vec=with_vec),
                partition=partition,
            )
        # The applied offsets go to the changelog too, so a new owner knows where to resume.
        applied: dict[int, int] = {}
        for message in admitted:
            applied[message.partition] = message.offset
        for partition, offset in applied.items():
            self.publisher.send(
                self.settings.topics.state_changelog,
                APPLIED_KEY,
                str(offset).encode(),
                partition=partition,
            )
        waited = time.monotonic()
        delivered = self.publisher.wait()  # everything above acked by the broker, or raise
        metrics.DELIVERY_WAIT_SECONDS.observe(waiting + time.monotonic() - waited)
        # Published = acked: from here on consumers can read the recommendations.
        metrics.observe_published(
            time.time(), time.monotonic(), ((v.message.timestamp, v.message.read_at) for v in valid)
        )
        self._persist(applied, records, delivered)
        metrics.CLICKS.labels("applied").inc(len(valid))
        metrics.RECOMMENDATIONS.inc(len(valid))

    def _score(self, valid: list[_Valid]) -> dict[tuple[int, str], UserRecord]:
        """Run the model, send one recommendation per click; the users' new records."""
        scorer = self.scorer
        slots: dict[tuple[int, str], int] = {}
        for v in valid:
            slots.setdefault((v.message.partition, v.click.user_id), len(slots))
        users = list(slots)
        stored = [self.store.partition(p).get(u) for p, u in users]
        clicks = [(slots[(v.message.partition, v.click.user_id)], v.item) for v in valid]
        started = time.monotonic()
        states, tops = scorer.run(stored, clicks)
        metrics.MODEL_SECONDS.observe(time.monotonic() - started)

        last_offset: dict[int, int] = {}
        topic = self.settings.topics.clicks
        for v, top in zip(valid, tops):
            slot = slots[(v.message.partition, v.click.user_id)]
            last_offset[slot] = v.message.offset
            # all items may be masked as seen in a tiny catalogue: -inf is not JSON
            kept = [(i, s) for i, s in zip(top.items, top.scores) if s != float("-inf")]
            output = {
                "user_id": v.click.user_id,
                "items": [scorer.vocab[i] for i, _ in kept],
                "scores": [s for _, s in kept],
                "model_version": scorer.version,
                "click": {
                    "topic": topic,
                    "partition": v.message.partition,
                    "offset": v.message.offset,
                },
                "click_ts": v.click.ts,
                "published_ts": time.time(),
            }
            self.publisher.send(
                self.settings.topics.recommendations,
                v.message.key,
                json.dumps(output, separators=(",", ":")).encode(),
            )
        records: dict[tuple[int, str], UserRecord] = {}
        for (partition, user), slot in slots.items():
            state = states[slot]
            record = UserRecord(
                scorer.version, partition, last_offset[slot], state.n, state.ring, state.vec
            )
            records[(partition, user)] = record
        return records

    def _dead_letter(self, message: RawClick, rejection: Rejection) -> None:
        metrics.REJECTED.labels(rejection.reason).inc()
        metrics.CLICKS.labels("rejected").inc()
        value = message.value
        record = {
            "reason": rejection.reason,
            "detail": rejection.detail,
            "click": {
                "topic": self.settings.topics.clicks,
                "partition": message.partition,
                "offset": message.offset,
            },
            "value_b64": None if value is None else base64.b64encode(value).decode(),
            "worker_id": self.settings.worker.id,
            "ts": time.time(),
        }
        self.publisher.send(
            self.settings.topics.dlq,
            message.key,
            json.dumps(record).encode(),
            headers=[(REASON_HEADER, rejection.reason.encode())],
        )

    def _persist(
        self,
        applied: dict[int, int],
        records: dict[tuple[int, str], UserRecord],
        delivered: dict[tuple[str, int], int],
    ) -> None:
        by_partition: dict[int, dict[bytes, bytes]] = defaultdict(dict)
        for (partition, user), record in records.items():
            by_partition[partition][user.encode()] = record.encode()
        changelog = self.settings.topics.state_changelog
        for partition, offset in applied.items():
            self.store.partition(partition).write(
                by_partition[partition],
                applied_offset=offset,
                changelog_offset=delivered[(changelog, partition)],
            )
