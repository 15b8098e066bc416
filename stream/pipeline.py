"""One micro-batch of raw clicks in; recommendations, dead letters and new user states out.

``BatchPipeline.process`` is synchronous and runs in the worker's batch process
(``stream.batch_process``), one call at a time, never on faust's event loop. Per batch:

1. **admit** each message by offset (``stream.admission``): every `clicks` partition is applied
   strictly in offset order, exactly once, after the partition's stored applied offset;
2. **parse** the admitted messages; rejects and unknown items become dead letters;
3. **score**: the model advances the users and ranks the items (``stream.scoring``);
4. **publish** the recommendations and dead letters and wait for their acks, then send the
   changelog records (acked too);
5. **commit** the new user states, their latest recommendations and the applied offsets to
   RocksDB, one batch per partition.

Outputs go first because the changelog says "applied" and a worker restored from it never
re-sends. A crash before 5 re-applies the batch after the restart and republishes the same
recommendations (same state, same model; only ``published_ts`` differs); a crash after 5 finds
the clicks applied and skips them. Outputs the broker does not ack are not a crash: nothing local
has changed yet, so the batch is retried with a new producer.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from stream import metrics
from stream.admission import Admit, PartitionCursor
from stream.clicks import Click, Rejection, parse_click
from stream.messages import (
    DLQ_REASON_HEADER,
    ClickOutcome,
    ClickRef,
    DeadLetter,
    Recommendation,
    RejectReason,
    ScoringMode,
)
from stream.model_source import LoadedModel, LoadFailed, ModelSource
from stream.popularity import Popularity
from stream.publisher import DeliveryError, Publisher
from stream.scoring import Scorer
from stream.settings import Settings
from stream.state import (
    ChangelogReader,
    ChangelogWriter,
    Latest,
    Records,
    StateStore,
)
from stream.user_record import UserRecord

log = logging.getLogger(__name__)


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


@dataclass(frozen=True, slots=True)
class _Valid:
    message: RawClick
    click: Click
    item: int  # item index in the served model's vocabulary


@dataclass
class _Outputs:
    """What a batch sends, then persists."""

    answered: list[RawClick]  # the valid clicks, one recommendation each
    clicked: list[str]  # their item ids
    recommendations: list[tuple[bytes | None, bytes]]  # (key, value)
    dead_letters: list[tuple[bytes | None, bytes, str]]  # (key, value, reason)
    records: Records
    latest: Latest  # each user's last recommendation of the batch
    applied: dict[int, int]  # partition -> last applied offset


class VersionFeed(Protocol):
    def latest_version(self) -> int | None: ...

    def close(self) -> None: ...


class BatchPipeline:
    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        publisher: Publisher,
        changelog: ChangelogReader,
        models: ModelSource,
        announcements: VersionFeed | None = None,
    ) -> None:
        """``announcements``: where the version to serve is announced (`model-updates`); None,
        or none announced yet: the model store's current version."""
        self.settings = settings
        self.store = store
        self.publisher = publisher
        self.changelog = changelog
        self.changelog_writer = ChangelogWriter(settings.topics.state_changelog, publisher)
        self.models = models
        self.announcements = announcements
        self.device = settings.torch_device()
        self.scorer = self._scorer()
        self.popularity = Popularity(settings.worker.popularity_half_life_s, time.time())
        self._cursors: dict[int, PartitionCursor] = {}

    def _scorer(self, loaded: LoadedModel | None = None) -> Scorer:
        w = self.settings.worker
        loaded = loaded or self.models.load(self.device)
        scorer = Scorer(loaded, w.top_k, w.mask_seen, w.scoring_mode, w.fresh_share)
        metrics.MODEL_VERSION.set(scorer.version)
        log.info(
            "serving model version %d from %s on %s (%s)",
            scorer.version,
            loaded.served.path,
            self.device,
            scorer.mode,
        )
        return scorer

    def close(self) -> None:
        if self.announcements is not None:
            self.announcements.close()
        self.publisher.close()
        self.store.close()

    # ------------------------------------------------------------------ around the batches
    def prepare(self, partitions: set[int]) -> dict[int, int]:
        """After a rebalance: catch the partitions up with their changelogs (another worker may
        have written them meanwhile); where each resumes, {partition: offset}."""
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

    def refresh_model(self) -> None:
        """Swap in the version to serve now, if it changed (between batches)."""
        target = None if self.announcements is None else self.announcements.latest_version()
        try:
            loaded = self.models.poll(self.scorer.version, target, self.device)
        except LoadFailed as e:
            metrics.MODEL_LOAD_FAILURES.inc()
            log.error("%s; still serving version %d", e, self.scorer.version)
            return
        if loaded is not None:
            self.scorer = self._scorer(loaded)
            metrics.MODEL_SWAPS.inc()

    def applied_offsets(self) -> dict[int, int]:
        return {partition: cursor.applied for partition, cursor in self._cursors.items()}

    def prepared(self) -> frozenset[int]:
        """The partitions restored so far (any thread)."""
        return frozenset(self._cursors)

    def update_store_metrics(self) -> None:
        """Publish the state store's size; between batches, like every store access."""
        for partition, (keys, size) in self.store.sizes().items():
            metrics.STATE_KEYS.labels(str(partition)).set(keys)
            metrics.STATE_BYTES.labels(str(partition)).set(size)

    # ------------------------------------------------------------------ a batch
    def process(self, batch: list[RawClick], assigned: set[int]) -> dict[int, int]:
        """Apply a batch; return the seeks {partition: offset} the consumer must perform."""
        started = time.monotonic()
        metrics.BATCH_CLICKS.observe(len(batch))
        admitted, seeks = self._admit(batch, assigned)
        if admitted:
            self._apply_with_retries(admitted)
        metrics.BATCH_SECONDS.observe(time.monotonic() - started)
        return seeks

    def _cursor(self, partition: int) -> PartitionCursor:
        if partition not in self._cursors:  # a partition faust did not announce: be safe
            self.prepare({partition})
        return self._cursors[partition]

    def _admit(
        self, batch: list[RawClick], assigned: set[int]
    ) -> tuple[list[RawClick], dict[int, int]]:
        admitted: list[RawClick] = []
        seeks: dict[int, int] = {}
        for message in batch:
            if message.partition not in assigned:  # queued before a rebalance took it away
                metrics.CLICKS.labels(ClickOutcome.OUT_OF_ORDER).inc()
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
                metrics.CLICKS.labels(ClickOutcome(decision.value)).inc()
        return admitted, seeks

    def _apply_with_retries(self, admitted: list[RawClick]) -> None:
        """Apply; if the broker does not ack the outputs, retry with a new producer.

        Safe because nothing local changes before every output is acked: a retry reads the
        same stored states and republishes the same content (consumers may see it twice).
        """
        w = self.settings.worker
        outputs = self._compute(admitted)
        for attempt in range(1, w.delivery_attempts + 1):
            try:
                self._deliver(outputs)
                break
            except DeliveryError as e:
                metrics.DELIVERY_FAILURES.inc()
                if attempt == w.delivery_attempts:
                    raise
                backoff = min(2.0 ** (attempt - 1), w.delivery_backoff_max_s)
                log.warning(
                    "batch of %d clicks not delivered (attempt %d of %d): %s; retrying in %.0fs "
                    "with a new producer",
                    len(admitted),
                    attempt,
                    w.delivery_attempts,
                    e,
                    backoff,
                )
                time.sleep(backoff)
                self.publisher.reset()
        self.popularity.add(outputs.clicked, time.time())
        valid = len(outputs.recommendations)
        rejected = len(outputs.dead_letters)
        metrics.CLICKS.labels(ClickOutcome.APPLIED).inc(valid)
        metrics.CLICKS.labels(ClickOutcome.REJECTED).inc(rejected)
        metrics.RECOMMENDATIONS.inc(valid)
        for _, _, reason in outputs.dead_letters:
            metrics.REJECTED.labels(reason).inc()
        metrics.observe_published(
            time.time(), time.monotonic(), ((m.timestamp, m.read_at) for m in outputs.answered)
        )

    # ------------------------------------------------------------------ compute, then deliver
    def _compute(self, admitted: list[RawClick]) -> _Outputs:
        valid: list[_Valid] = []
        dead: list[tuple[bytes | None, bytes, str]] = []
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
                    RejectReason.UNKNOWN_ITEM,
                    f"item {parsed.item_id!r} is not in model version {self.scorer.version}",
                )
            dead.append((message.key, self._dead_letter(message, parsed), parsed.reason))
        recommendations, records, latest = self._score(valid) if valid else ([], {}, {})
        applied = {m.partition: m.offset for m in admitted}  # in offset order: the last wins
        return _Outputs(
            [v.message for v in valid],
            [v.click.item_id for v in valid],
            recommendations,
            dead,
            records,
            latest,
            applied,
        )

    def _score(
        self, valid: list[_Valid]
    ) -> tuple[list[tuple[bytes | None, bytes]], Records, Latest]:
        """Run the model: one recommendation per click, the users' new records and latest
        recommendations."""
        scorer, topic = self.scorer, self.settings.topics.clicks
        slots: dict[tuple[int, str], int] = {}
        for v in valid:
            slots.setdefault((v.message.partition, v.click.user_id), len(slots))
        stored = [self.store.get(p, u) for p, u in slots]
        clicks = [(slots[(v.message.partition, v.click.user_id)], v.item) for v in valid]
        started = time.monotonic()
        state, tops = scorer.run(stored, clicks)
        metrics.MODEL_SECONDS.observe(time.monotonic() - started)
        last_offset: dict[int, int] = {}
        recommendations = []
        latest: Latest = {}
        for v, top in zip(valid, tops):
            last_offset[slots[(v.message.partition, v.click.user_id)]] = v.message.offset
            # all items may be masked as seen in a tiny catalogue: -inf is not JSON
            kept = [(i, s) for i, s in zip(top.items, top.scores) if s != float("-inf")]
            recommendation = Recommendation(
                user_id=v.click.user_id,
                items=[scorer.vocab[i] for i, _ in kept],
                scores=[s for _, s in kept],
                model_version=scorer.version,
                click=ClickRef(topic=topic, partition=v.message.partition, offset=v.message.offset),
                click_ts=v.click.ts,
                published_ts=time.time(),
                event_id=v.click.event_id,
            )
            value = recommendation.to_bytes()
            recommendations.append((v.message.key, value))
            latest[(v.message.partition, v.click.user_id)] = value  # in offset order
        with_vec = scorer.mode is ScoringMode.STEP  # recompute keeps no state vector
        records = {
            (partition, user): UserRecord.from_state(
                state, slot, scorer.vocab, scorer.version, partition, last_offset[slot], with_vec
            )
            for (partition, user), slot in slots.items()
        }
        return recommendations, records, latest

    def _dead_letter(self, message: RawClick, rejection: Rejection) -> bytes:
        value = message.value
        return DeadLetter(
            reason=rejection.reason,
            detail=rejection.detail,
            click=ClickRef(
                topic=self.settings.topics.clicks,
                partition=message.partition,
                offset=message.offset,
            ),
            value_b64=None if value is None else base64.b64encode(value).decode(),
            worker_id=self.settings.worker.id,
            ts=time.time(),
        ).to_bytes()

    def _deliver(self, outputs: _Outputs) -> None:
        """Outputs acked, then the changelog acked, then the local commit."""
        t = self.settings.topics
        for key, value in outputs.recommendations:
            self.publisher.send(t.recommendations, key, value)
        for key, value, reason in outputs.dead_letters:
            self.publisher.send(t.dlq, key, value, headers=[(DLQ_REASON_HEADER, reason.encode())])
        waited = time.monotonic()
        self.publisher.wait()
        waiting = time.monotonic() - waited
        self.changelog_writer.send(
            outputs.records, outputs.latest, outputs.applied, with_vec=self.scorer.records_need_vec
        )
        waited = time.monotonic()
        delivered = self.publisher.wait()  # everything above acked by the broker, or raise
        metrics.DELIVERY_WAIT_SECONDS.observe(waiting + time.monotonic() - waited)
        changelog = {p: delivered[(t.state_changelog, p)] for p in outputs.applied}
        self.store.commit(outputs.records, outputs.latest, outputs.applied, changelog)
