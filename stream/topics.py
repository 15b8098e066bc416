"""The topics glintstream uses: reaching the brokers, creating topics, reading in batches.

Works against any Kafka-protocol broker (the embedded one or a real cluster).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic
from pydantic import BaseModel, ValidationError

from stream.framing import payload
from stream.settings import Settings

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

ADMIN_TIMEOUT_S = 10.0
BROKER_WAIT_S = 60.0  # `make demo` starts the broker and the worker at once
# The changelog's name before it followed worker_app_id: a cluster that still has it holds the
# state of workers that have not been told to keep it (README, "Two deployments on one cluster, and upgrading").
LEGACY_CHANGELOG = "glintstream-user-state"


class BrokerUnreachable(RuntimeError):
    """No broker answered at the configured bootstrap servers."""


class BrokerRefused(BrokerUnreachable):
    """A broker answered, and refused this client's credentials or its TLS handshake."""


# librdkafka's errors that mean "it answered, and said no" rather than "nobody there"
REFUSALS = {KafkaError._AUTHENTICATION, KafkaError._SSL}


def ensure_reachable(settings: Settings) -> None:
    """Raise ``BrokerUnreachable`` (``BrokerRefused``) with one line that names the servers, or
    return.

    librdkafka's own connection errors are silenced here: a closed port would otherwise print
    a line per retry while the caller waits.
    """
    refusals: list[KafkaError] = []

    def on_error(error: KafkaError) -> None:
        if error.code() in REFUSALS:
            refusals.append(error)

    config = {**settings.kafka.confluent_config(), "log_level": 0, "error_cb": on_error}
    admin = AdminClient(config)
    servers, timeout_s = settings.kafka.bootstrap_servers, settings.kafka.connect_timeout_s
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException as e:
        admin.poll(0)  # serves the error callbacks
        if refusals:
            raise BrokerRefused(
                f"the Kafka broker at {servers} refused this client: {refusals[0].str()}; "
                "check the kafka_sasl_* and kafka_ssl_* settings (README, Configuration)"
            ) from None
        raise BrokerUnreachable(
            f"no Kafka broker answered at {servers} within "
            f"{timeout_s:.0f} s ({e.args[0].str() if e.args else e}); start the embedded one "
            "with `glintstream broker`, or set KAFKA_BOOTSTRAP_SERVERS"
        ) from None


def ensure_topics(
    config: Settings | Mapping[str, Any],
    names: Iterable[str],
    partitions: int = 4,
    topic_config: Mapping[str, str] | None = None,
) -> None:
    """Create missing topics. Existing ones are left alone: Tansu cannot add partitions, and
    another client may have won the race to create one."""
    conf: dict[str, Any] = (
        config.kafka.confluent_config() if isinstance(config, Settings) else dict(config)
    )
    admin = AdminClient(conf)
    existing = admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics
    new = [
        NewTopic(n, num_partitions=partitions, config=dict(topic_config or {}))
        for n in names
        if n not in existing
    ]
    for name, future in admin.create_topics(new).items() if new else ():
        try:
            future.result()
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            log.debug("topic %s already exists", name)


def partition_count(settings: Settings, topic: str) -> int:
    admin = AdminClient(settings.kafka.confluent_config())
    return len(admin.list_topics(topic, timeout=ADMIN_TIMEOUT_S).topics[topic].partitions)


def ensure_control_topics(settings: Settings) -> None:
    """`model-updates` and `worker-status`: one partition (one order of versions; a few
    statuses), compacted where the broker compacts (only the last record per key matters)."""
    topics = [settings.topics.model_updates, settings.topics.worker_status]
    ensure_topics(settings, topics, 1, {"cleanup.policy": "compact"})


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
    ensure_control_topics(settings)
    # Compacted: only the last record per user matters. Partitioned like the clicks as they
    # are (they may predate this worker), which the check below insists on.
    n_clicks = partition_count(settings, settings.topics.clicks)
    changelog = settings.topics.state_changelog
    _warn_of_legacy_changelog(settings)
    ensure_topics(settings, [changelog], n_clicks, {"cleanup.policy": "compact"})
    n_changelog = partition_count(settings, changelog)
    if n_clicks != n_changelog:
        raise RuntimeError(
            f"{settings.topics.clicks} has {n_clicks} partitions but the state changelog "
            f"{settings.topics.state_changelog} has {n_changelog}: they must match"
        )


def _warn_of_legacy_changelog(settings: Settings) -> None:
    changelog = settings.topics.state_changelog
    existing = AdminClient(settings.kafka.confluent_config()).list_topics(timeout=ADMIN_TIMEOUT_S)
    if changelog not in existing.topics and LEGACY_CHANGELOG in existing.topics:
        log.warning(
            "creating the state changelog %s, but %s exists: the state of workers from before "
            "the changelog was named after worker_app_id. To restore from it, stop and set "
            "GLINTSTREAM_TOPIC_STATE_CHANGELOG=%s",
            changelog,
            LEGACY_CHANGELOG,
            LEGACY_CHANGELOG,
        )


def poll_batch(consumer: Consumer, max_messages: int, timeout: float) -> list[Message]:
    """Up to ``max_messages`` as soon as one is there, or [] after ``timeout`` seconds.

    confluent-kafka's ``consume(n, timeout)`` returns only when it has n messages or the whole
    timeout is over: a reader of a slow stream would wait the timeout on every call.
    """
    first = consumer.poll(timeout)
    if first is None:
        return []
    return [first, *consumer.consume(max_messages - 1, 0)] if max_messages > 1 else [first]


class TopicMissing(LookupError):
    """The topic does not exist at the configured bootstrap servers."""


READ_CHUNK = 5000
READ_POLL_S = 0.5


def read_to_end(
    settings: Settings, topic: str, timeout_s: float, **consumer_config: Any
) -> Iterator[Message]:
    """Every record of ``topic`` from its beginning to the end each partition had when read;
    no consumer group joined, nothing committed. Stops after ``timeout_s`` whatever is left."""
    consumer = Consumer(
        settings.kafka.confluent_consumer_config(
            f"{settings.worker.app_id}-reader",  # assigned, never committed
            **{"enable.auto.commit": False, "enable.partition.eof": True, **consumer_config},
        )
    )
    try:
        metadata = consumer.list_topics(topic, timeout=ADMIN_TIMEOUT_S).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise TopicMissing(
                f"topic {topic} does not exist at {settings.kafka.bootstrap_servers}"
            )
        open_partitions = set(metadata.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in open_partitions])
        # A partition ends at its EOF or at the high watermark of the first Fetch response that
        # brought its records: one written to all the time may never show an EOF.
        ends: dict[int, int] = {}
        deadline = time.monotonic() + timeout_s
        while open_partitions and time.monotonic() < deadline:
            for msg in poll_batch(consumer, READ_CHUNK, READ_POLL_S):
                err, p, offset = msg.error(), msg.partition(), msg.offset()
                if err is None and p is not None and offset is not None:
                    if p not in ends:
                        tp = TopicPartition(topic, p)
                        ends[p] = consumer.get_watermark_offsets(tp, cached=True)[1]
                    if p in open_partitions:
                        yield msg
                    if offset >= ends[p] - 1:
                        open_partitions.discard(p)
                elif err is not None and err.code() == KafkaError._PARTITION_EOF:
                    open_partitions.discard(p)
        if open_partitions:
            log.warning(
                "%s: partitions %s not read to the end in %.0f s",
                topic,
                sorted(open_partitions),
                timeout_s,
            )
    finally:
        consumer.close()


def read_messages(
    settings: Settings, topic: str, model: type[M], timeout_s: float, **consumer_config: Any
) -> Iterator[tuple[Message, M]]:
    """``read_to_end``'s records that are valid ``model`` messages, with them; the others are
    skipped and counted in one warning."""
    unreadable = 0
    for msg in read_to_end(settings, topic, timeout_s, **consumer_config):
        try:
            yield msg, model.model_validate_json(payload(msg.value()))
        except ValidationError:
            unreadable += 1
    if unreadable:
        log.warning("%d records of %s are not %s messages", unreadable, topic, model.__name__)
