"""Everything the worker writes to Kafka goes through one librdkafka producer.

faust's own (aiokafka) producer costs tens of microseconds of event-loop time per message;
librdkafka batches in C on its own threads, and ``wait`` can block the executor thread (never
the event loop) until every message of a batch is acknowledged by the broker (acks=all).
"""

from __future__ import annotations

from collections.abc import Sequence

from confluent_kafka import KafkaError, Message, Producer

from stream.settings import Settings

LINGER_MS = 2  # a batch is produced in one go: a short linger is enough to fill requests
POLL_S = 0.05  # how long to serve delivery callbacks while the local queue is full


class DeliveryError(RuntimeError):
    """A message was not acknowledged: the batch must not be persisted as applied."""


class Publisher:
    def __init__(self, settings: Settings) -> None:
        self._producer = Producer(
            {
                **settings.confluent_config(),
                "acks": "all",
                # no duplicates from librdkafka's own retries (works on Tansu, unlike aiokafka's)
                "enable.idempotence": True,
                "linger.ms": LINGER_MS,
            }
        )
        self._timeout_s = settings.worker_delivery_timeout_s
        self._errors: list[KafkaError] = []
        self._last_offset: dict[tuple[str, int], int] = {}

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(err)
            return
        tp = (msg.topic(), msg.partition())
        self._last_offset[tp] = max(self._last_offset.get(tp, -1), msg.offset())

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        kwargs = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(
                    topic, value, key, on_delivery=self._on_delivery, headers=headers, **kwargs
                )
                return
            except BufferError:  # local queue full: let deliveries drain it
                self._producer.poll(POLL_S)

    def wait(self) -> dict[tuple[str, int], int]:
        """Block until everything sent is acknowledged; the last offset per (topic, partition).

        Raises ``DeliveryError`` if anything failed or timed out.
        """
        remaining = self._producer.flush(self._timeout_s)
        errors, self._errors = self._errors, []
        offsets, self._last_offset = self._last_offset, {}
        if remaining:
            raise DeliveryError(f"{remaining} messages not delivered in {self._timeout_s}s")
        if errors:
            raise DeliveryError(f"{len(errors)} messages failed, first: {errors[0]}")
        return offsets

    def close(self) -> None:
        self._producer.flush(self._timeout_s)
