"""The worker's publisher survives a broker restart by replacing its idempotent producer."""

from __future__ import annotations

from pathlib import Path

from confluent_kafka import Consumer

from stream.broker import Broker
from stream.publisher import DeliveryError, Publisher
from stream.settings import load_settings
from stream.topics import ensure_topics

BATCH = 50


def read_values(bootstrap: str, topic: str, n: int) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic}-reader",
            "session.timeout.ms": 6000,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    try:
        for _ in range(200):
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                values.append(msg.value())
            if len(values) >= n:
                break
    finally:
        consumer.close()
    return values


def test_a_batch_is_delivered_after_the_broker_restarts(tmp_path: Path) -> None:
    broker = Broker(port=0, run_dir=tmp_path / "broker").start()
    port = broker.port
    settings = load_settings(
        kafka_bootstrap_servers=broker.bootstrap_servers, worker_delivery_timeout_s=3.0
    )
    publisher = Publisher(settings)
    try:
        ensure_topics(settings, ["out"], 1)
        for i in range(BATCH):
            publisher.send("out", b"k", b"before-%d" % i, partition=0)
        assert publisher.wait() == {("out", 0): BATCH - 1}

        # The memory engine forgets the log and the producer's sequence numbers: the old
        # idempotent producer cannot continue (measured: nothing acked within the timeout).
        broker.stop()
        broker = Broker(port=port, run_dir=tmp_path / "broker").start()
        ensure_topics(settings, ["out"], 1)
        batch = [b"after-%d" % i for i in range(BATCH)]
        delivered = None
        for _ in range(3):  # what ClickProcessor does: resend the whole batch after a reset
            for value in batch:
                publisher.send("out", b"k", value, partition=0)
            try:
                delivered = publisher.wait()
                break
            except DeliveryError:
                publisher.reset()
        assert delivered is not None, "the batch was never delivered"
        assert set(batch) <= set(read_values(broker.bootstrap_servers, "out", BATCH))
    finally:
        publisher.close()
        broker.stop()


class AckWithoutOffset:
    """What librdkafka hands the delivery callback for an ack that carries no offset."""

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return 0

    def offset(self) -> None:
        return None


def test_an_ack_without_an_offset_fails_the_batch_for_a_retry() -> None:
    publisher = Publisher(load_settings(kafka_bootstrap_servers="127.0.0.1:1"))
    publisher._on_delivery(None, AckWithoutOffset())  # type: ignore[arg-type]
    try:
        publisher.wait()
    except DeliveryError as e:
        assert "acknowledged without an offset: t[0]" in str(e)
    else:
        raise AssertionError("an ack without an offset was taken as delivered")
    finally:
        publisher.close()
