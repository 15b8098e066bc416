"""The `model-updates` topic: the model version every worker serves.

One partition, one key: the last record names the version to serve, so every worker, however
long it was away, ends up serving the same one. A publisher (the fine-tune job, the `model`
commands) copies the version to the model store first and announces it after; a worker follows
the partition from its beginning and loads what the last record names from the store.

The embedded broker never compacts, and lists every record batch of a partition per Fetch
(README, Embedded broker), so readers wait long per Fetch: ``READ_FETCH_WAIT_MS`` covers
400,000 announcements or more, most of a year at one a minute.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from pydantic import ValidationError

from model.registry import VersionInfo
from stream.framing import Framing, payload
from stream.messages import MODEL_UPDATE_KEY, ModelUpdate, UpdateEvent
from stream.settings import Settings
from stream.topics import ensure_control_topics, read_messages

log = logging.getLogger(__name__)

PARTITION = 0
READ_FETCH_WAIT_MS = 1000
READ_TIMEOUT_S = 60.0
ANNOUNCE_TIMEOUT_S = 30.0  # for the broker to acknowledge an announcement


class AnnounceError(RuntimeError):
    """The broker did not acknowledge an announcement: workers keep serving what they serve."""


def update_for(info: VersionInfo, event: UpdateEvent, num_items: int) -> ModelUpdate:
    return ModelUpdate(
        event=event,
        version=info.version,
        parent=info.parent,
        created=info.created,
        num_items=num_items,
        figures=info.gate or {},
        announced=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def announce(settings: Settings, update: ModelUpdate) -> None:
    """Write ``update`` and wait for the broker's acknowledgement; ``AnnounceError`` if none."""
    topic = settings.topics.model_updates
    ensure_control_topics(settings)
    producer = Producer({**settings.kafka.confluent_config(), "acks": "all", "log_level": 0})
    errors: list[KafkaError] = []
    producer.produce(
        topic,
        Framing(settings)(topic, update.to_bytes()),
        MODEL_UPDATE_KEY,
        partition=PARTITION,
        on_delivery=lambda err, _msg: errors.append(err) if err else None,
    )
    left = producer.flush(ANNOUNCE_TIMEOUT_S)
    if errors or left:
        why = errors[0].str() if errors else f"no acknowledgement in {ANNOUNCE_TIMEOUT_S:.0f} s"
        raise AnnounceError(
            f"cannot announce version {update.version} on {topic} at "
            f"{settings.kafka.bootstrap_servers}: {why}"
        )


def read_latest(settings: Settings) -> ModelUpdate | None:
    """The last valid announcement (None: none), read once to the end."""
    topic, wait = settings.topics.model_updates, {"fetch.wait.max.ms": READ_FETCH_WAIT_MS}
    updates = [u for _, u in read_messages(settings, topic, ModelUpdate, READ_TIMEOUT_S, **wait)]
    return updates[-1] if updates else None


class Announcements:
    """Follows `model-updates` from its beginning; ``latest`` never blocks.

    The consumer is made on the first call, so a worker waiting for its broker does not log
    librdkafka's connection errors meanwhile."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._consumer: Consumer | None = None
        self._latest: ModelUpdate | None = None
        self._error: str | None = None  # the last read error logged, so each is logged once

    def _follow(self) -> Consumer:
        topic = self.settings.topics.model_updates
        consumer = Consumer(
            self.settings.kafka.confluent_consumer_config(
                f"{self.settings.worker.app_id}-model-updates",  # assigned, never committed
                **{"enable.auto.commit": False, "fetch.wait.max.ms": READ_FETCH_WAIT_MS},
            )
        )
        consumer.assign([TopicPartition(topic, PARTITION, OFFSET_BEGINNING)])
        return consumer

    def latest(self) -> ModelUpdate | None:
        """The last announcement read so far (None: none yet)."""
        if self._consumer is None:
            self._consumer = self._follow()
        while (msg := self._consumer.poll(0)) is not None:
            if (error := msg.error()) is not None:
                if error.str() != self._error:
                    log.warning("reading %s: %s", self.settings.topics.model_updates, error.str())
                    self._error = error.str()
                continue
            try:
                self._latest = ModelUpdate.model_validate_json(payload(msg.value()))
            except ValidationError as e:
                log.error(
                    "ignoring a malformed announcement at %s@%d: %s",
                    msg.topic(),
                    msg.offset(),
                    e.errors()[0]["msg"],
                )
        return self._latest

    def latest_version(self) -> int | None:
        update = self.latest()
        return None if update is None else update.version

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
