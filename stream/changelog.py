"""The state changelog: a compacted topic partitioned like `clicks`, replayed into RocksDB.

Partition p of the changelog mirrors the RocksDB of `clicks` partition p: its keys are the same
keys (user ids and the partition's applied-offset key) and its values the same records (possibly
without the state vector, see ``stream.state``). A worker that gets partition p reads the
changelog from the offset its local database already contains up to the end, so a restart reads
almost nothing and a partition moving to another worker brings its state.

The end is found with librdkafka's partition-EOF event, which comes from the Fetch high
watermark; Tansu's ListOffsets(LATEST), which faust's recovery relies on, under-reports it.
"""

from __future__ import annotations

import logging
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from stream.broker import ensure_topics, poll_batch
from stream.settings import Settings
from stream.state import APPLIED_KEY, PartitionStore

log = logging.getLogger(__name__)

RESTORE_CHUNK = 5000  # records per RocksDB write batch while restoring
POLL_S = 0.5
ADMIN_TIMEOUT_S = 10.0
BROKER_WAIT_S = 60.0


class RestoreError(RuntimeError):
    """The changelog could not be read to its end in time."""


def ensure_worker_topics(settings: Settings) -> None:
    """Create the worker's topics if missing; the changelog must be partitioned like clicks.

    Waits up to ``BROKER_WAIT_S`` for the broker: `make demo` starts both at once.
    """
    deadline = time.monotonic() + BROKER_WAIT_S
    while True:
        try:
            ensure_topics(
                settings,
                [settings.topics.clicks, settings.topics.recommendations, settings.topics.dlq],
                settings.topics.partitions,
            )
            break
        except KafkaException as e:
            if time.monotonic() > deadline:
                raise
            log.info("waiting for the broker at %s: %s", settings.kafka.bootstrap_servers, e)
    admin = AdminClient(settings.kafka.confluent_config())
    topics = admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics
    if settings.topics.state_changelog not in topics:
        # Compacted: only the last record per user matters. If another worker won the race to
        # create it, the partition check below still holds.
        new = NewTopic(
            settings.topics.state_changelog,
            num_partitions=len(topics[settings.topics.clicks].partitions),
            config={"cleanup.policy": "compact"},
        )
        for future in admin.create_topics([new]).values():
            try:
                future.result()
            except KafkaException as e:
                if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
        topics = admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics
    n_clicks = len(topics[settings.topics.clicks].partitions)
    n_changelog = len(topics[settings.topics.state_changelog].partitions)
    if n_clicks != n_changelog:
        raise RuntimeError(
            f"{settings.topics.clicks} has {n_clicks} partitions but the state changelog "
            f"{settings.topics.state_changelog} has {n_changelog}: they must match"
        )


class ChangelogReader:
    """Brings partitions' RocksDBs up to the end of their changelog partitions."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.topic = settings.topics.state_changelog
        self._timeout_s = settings.worker.restore_timeout_s

    def _consumer(self) -> Consumer:
        conf = self._settings.kafka.confluent_consumer_config(
            f"{self._settings.worker.app_id}-restore-{uuid.uuid4().hex[:8]}",  # never commits
            **{
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                # an offset past the end means the broker lost the topic: say so, don't guess
                "auto.offset.reset": "error",
                "fetch.wait.max.ms": self._settings.worker.restore_fetch_max_wait_ms,
            },
        )
        return Consumer(conf)

    def catch_up(self, stores: list[PartitionStore]) -> int:
        """Apply each partition's changelog after its ``changelog_offset``; the records applied."""
        lost = []
        applied = self._read(stores, lost)
        if lost:
            # These databases mirror a changelog that no longer exists (e.g. an in-memory broker
            # was restarted): their offsets mean nothing now. Start them over from the topic.
            for store in lost:
                log.warning(
                    "changelog %s[%d] ends before offset %d held locally (the broker lost it): "
                    "discarding the local state of partition %d",
                    self.topic,
                    store.partition,
                    store.changelog_offset,
                    store.partition,
                )
                store.wipe()
            applied += self._read(lost, [])
        return applied

    def _read(self, stores: list[PartitionStore], lost: list[PartitionStore]) -> int:
        """Read every store's partition to its end; stores whose offset is past it go to lost."""
        if not stores:
            return 0
        by_partition = {s.partition: s for s in stores}
        pending: dict[int, dict[bytes, bytes]] = {p: {} for p in by_partition}
        last = {p: s.changelog_offset for p, s in by_partition.items()}
        open_partitions = set(by_partition)
        deadline = time.monotonic() + self._timeout_s
        applied = 0
        consumer = self._consumer()
        try:
            consumer.assign(
                [
                    TopicPartition(
                        self.topic,
                        p,
                        s.changelog_offset + 1 if s.changelog_offset >= 0 else OFFSET_BEGINNING,
                    )  # the first offset may be compacted away
                    for p, s in by_partition.items()
                ]
            )
            while open_partitions:
                if time.monotonic() > deadline:
                    raise RestoreError(
                        f"changelog {self.topic} partitions {sorted(open_partitions)} not read "
                        f"to their end in {self._timeout_s}s"
                    )
                for msg in poll_batch(consumer, RESTORE_CHUNK, POLL_S):
                    p, err = msg.partition(), msg.error()
                    if err is None:
                        pending[p][msg.key()] = msg.value()
                        last[p] = msg.offset()
                        if len(pending[p]) >= RESTORE_CHUNK:
                            applied += self._flush(by_partition[p], pending[p], last[p])
                    elif err.code() == KafkaError._PARTITION_EOF and p in open_partitions:
                        open_partitions.discard(p)
                        if msg.offset() <= by_partition[p].changelog_offset:
                            lost.append(by_partition[p])
                        else:
                            applied += self._flush(by_partition[p], pending[p], last[p])
                    elif err.code() == KafkaError._AUTO_OFFSET_RESET:
                        open_partitions.discard(p)
                        lost.append(by_partition[p])
                    elif err.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(err)
        finally:
            consumer.close()
        return applied

    @staticmethod
    def _flush(store: PartitionStore, pending: dict[bytes, bytes], last: int) -> int:
        if last == store.changelog_offset:
            return 0
        count = len(pending)
        applied = pending.pop(APPLIED_KEY, None)
        store.write(
            pending,
            applied_offset=None if applied is None else int(applied),
            changelog_offset=last,
        )
        pending.clear()
        return count
