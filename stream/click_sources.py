"""Where `train`, `evaluate` and `produce` take clicks from: a built-in dataset, your own file
(``model.click_log``), or the `clicks` topic read from its beginning (the Kafka log as the source
of truth: what the workers served is what a model is trained on)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from model.click_log import ClickColumns, load_click_log, sequences_from_clicks
from model.data import SequenceData, load_dataset
from stream.clicks import Click, parse_click
from stream.settings import Settings
from stream.topics import poll_batch

log = logging.getLogger(__name__)

READ_CHUNK = 5000
POLL_S = 0.5


class ClickSourceError(ValueError):
    """No usable clicks at the source named: one line that says why."""


@dataclass(frozen=True)
class ClickSource:
    """Exactly one of: a built-in ``dataset``, a ``clicks`` file (``columns`` maps its names),
    or ``from_topic`` (the settings' clicks topic)."""

    dataset: str | None = None
    clicks: Path | None = None
    columns: str | None = None
    from_topic: bool = False

    def __post_init__(self) -> None:
        given = sum([self.dataset is not None, self.clicks is not None, self.from_topic])
        if given != 1:
            raise ClickSourceError("give one source: --dataset NAME, --clicks PATH or --from-topic")

    def load(self, settings: Settings) -> SequenceData:
        if self.dataset is not None:
            return load_dataset(self.dataset, settings.paths.data_dir)
        if self.clicks is not None:
            data, unit = load_click_log(self.clicks, ClickColumns.parse(self.columns))
            log.info(
                "%s: %d clicks of %d users on %d items; times read as %s",
                *(self.clicks, data.num_clicks, len(data.users), data.num_items, unit),
            )
            return data
        return read_topic(settings, settings.topics.clicks)


def read_topic(settings: Settings, topic: str, timeout_s: float = 600.0) -> SequenceData:
    """Every valid click of ``topic``, from the beginning to the end of each partition."""
    consumer = Consumer(
        settings.kafka.confluent_consumer_config(
            f"{settings.worker.app_id}-read-clicks",  # assigned, never committed
            **{"enable.auto.commit": False, "enable.partition.eof": True},
        )
    )
    rows: list[Click] = []
    rejected = 0
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise ClickSourceError(
                f"topic {topic} does not exist at {settings.kafka.bootstrap_servers}"
            )
        open_partitions = set(metadata.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in open_partitions])
        deadline = time.monotonic() + timeout_s
        while open_partitions and time.monotonic() < deadline:
            for msg in poll_batch(consumer, READ_CHUNK, POLL_S):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        open_partitions.discard(msg.partition())
                    continue
                parsed = parse_click(msg.value(), msg.key(), settings.worker.max_click_bytes)
                if isinstance(parsed, Click):
                    rows.append(parsed)
                else:
                    rejected += 1
    finally:
        consumer.close()
    if not rows:
        raise ClickSourceError(f"topic {topic} holds no valid clicks")
    log.info(
        "%s: %d valid clicks read (%d rejected, as the worker would)", topic, len(rows), rejected
    )
    return sequences_from_clicks(
        f"topic:{topic}",
        np.array([c.user_id for c in rows]),
        np.array([c.item_id for c in rows]),
        np.array([c.ts for c in rows], dtype=np.float64),
    )
