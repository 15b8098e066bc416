"""`bench/chaos_case.py` with a fake Kafka producer: what a case does when its producer dies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from bench.chaos_case import CaseRun, ChaosConfig

FATAL = KafkaException(KafkaError(KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, fatal=True))


class FatalOnFlush:
    """A producer that takes every message and then fails fatally while waiting for acks, as
    librdkafka does when the broker forgets an idempotent producer's sequence numbers."""

    def __init__(self) -> None:
        self.produced = 0

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self.produced += 1

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        raise FATAL


def test_a_fatal_error_while_flushing_is_recorded_not_raised(tmp_path: Path) -> None:
    run = CaseRun(
        "fatal", "127.0.0.1:1", tmp_path, tmp_path / "checkpoint", ["a", "b"], ChaosConfig()
    )
    fake = FatalOnFlush()
    run.producer.producer = fake  # type: ignore[assignment]
    run.produce([(1.0, "u1", 0), (2.0, "u1", 1), (3.0, "u2", 0)])
    assert fake.produced == 3
    assert len(run.ledger.failed) == 1
    assert "OUT_OF_ORDER_SEQUENCE_NUMBER" in run.ledger.failed[0], run.ledger.failed
    assert not run.ledger.clicks  # nothing was acked
