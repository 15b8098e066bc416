"""Everything the worker writes to Kafka goes through one librdkafka producer.

faust's own (aiokafka) producer costs tens of microseconds of event-loop time per message;
librdkafka batches in C on its own threads, and ``wait`` blocks the batch process (never faust's
event loop) until every message of a batch is acknowledged by the broker (acks=all).

An idempotent producer that hits a fatal error (e.g. the broker forgot its sequence numbers
after a restart: OUT_OF_ORDER_SEQUENCE_NUMBER) can never send again; ``reset`` replaces it, so
the caller can retry the batch in the same process.
"""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from stream.framing import Framing, RegistryError
from stream.settings import Settings

log = logging.getLogger(__name__)

# Every batch ends with wait() = flush(), which sends at once whatever the linger; a linger
# longer than producing a batch takes spares librdkafka's sender a wake-up meanwhile.
LINGER_MS = 100
POLL_S = 0.05  # how long to serve delivery callbacks while the local queue is full


class DeliveryError(RuntimeError):
    """A message was not acknowledged: the batch must not be persisted as applied."""


class Publisher:
    def __init__(self, settings: Settings) -> None:
        self._config = {
            **settings.kafka.confluent_config(),
            "acks": "all",
            # no duplicates from librdkafka's own retries (works on Tansu, unlike aiokafka's)
            "enable.idempotence": True,
            "linger.ms": LINGER_MS,
        }
        self._producer = Producer(self._config)
        self._frame = Framing(settings)  # a registry's framing on message topics, if any
        self._timeout_s = settings.worker.delivery_timeout_s
        self._errors: list[str] = []  # why messages of the batch in flight were not delivered
        self._last_offset: dict[tuple[str, int], int] = {}

    def reset(self) -> None:
        """Drop everything unacknowledged and start over with a new producer."""
        old = self._producer
        self._producer = Producer(self._config)
        self._errors, self._last_offset = [], {}
        try:
            old.purge()
            old.flush(0)  # serves the purge's callbacks, which go to the discarded lists above
        except Exception:  # a producer in a fatal state may refuse even this: it is dropped
            log.debug("purging the old producer failed", exc_info=True)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(str(err))
            return
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        if topic is None or partition is None or offset is None or offset < 0:
            # seen from the embedded broker's s3:// engine just after a restart: an ack without
            # an offset cannot say where the changelog stands, so the batch is sent again
            self._errors.append(f"acknowledged without an offset: {topic}[{partition}]")
            return
        tp = (topic, partition)
        self._last_offset[tp] = max(self._last_offset.get(tp, -1), offset)

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        try:
            value = self._frame(topic, value)
        except RegistryError as e:  # a delivery failure like the broker's: retried, counted
            raise DeliveryError(str(e)) from e
        while True:
            try:
                if partition is None:
                    self._producer.produce(
                        topic, value, key, on_delivery=self._on_delivery, headers=headers
                    )
                else:
                    self._producer.produce(
                        topic,
                        value,
                        key,
                        partition,
                        on_delivery=self._on_delivery,
                        headers=headers,
                    )
                return
            except BufferError:  # local queue full: let deliveries drain it
                self._producer.poll(POLL_S)
            except (KafkaException, SystemError) as e:
                # a producer in a fatal state refuses every message; confluent-kafka 2.x has
                # been seen to raise a SystemError instead of the KafkaException here
                raise DeliveryError(f"the producer refused a message: {e!r}") from e

    def wait(self) -> dict[tuple[str, int], int]:
        """Block until everything sent is acknowledged; the last offset per (topic, partition).

        Raises ``DeliveryError`` if anything failed or timed out.
        """
        try:
            remaining = self._producer.flush(self._timeout_s)
        except (KafkaException, SystemError) as e:
            raise DeliveryError(f"flush failed: {e!r}") from e
        errors, self._errors = self._errors, []
        offsets, self._last_offset = self._last_offset, {}
        if remaining:
            raise DeliveryError(f"{remaining} messages not delivered in {self._timeout_s}s")
        if errors:
            raise DeliveryError(f"{len(errors)} messages failed, first: {errors[0]}")
        return offsets

    def close(self) -> None:
        self._producer.flush(self._timeout_s)
