"""`glintstream bench broker`: the broker's own latency as a partition accumulates record batches.

A paced producer (one click per request, as `bench stream` and any low-latency client send them)
appends one record batch per message. This probe fills one partition of a private broker with
such batches, step by step, and after each step times two things on that partition: a produce
acknowledged by the broker (acks=all), and produce -> consume (a consumer polling the tail). On
the embedded broker (Tansu 0.6, memory engine) both grow with the number of batches in the
partition: the worker's latency inherits that growth (docs/benchmarks.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition

from stream.broker import Broker, ensure_topics

TOPIC = "broker-latency"
PAYLOAD = b"x" * 100  # about a click
FETCH_WAIT_MS = 10  # as the worker's consumer (settings.worker_fetch_max_wait_ms)
QUANTILES = (50, 99)


@dataclass(frozen=True)
class Step:
    batches: int  # record batches in the partition when measured
    ack_ms: tuple[float, ...]  # produce -> broker ack, at QUANTILES
    e2e_ms: tuple[float, ...]  # produce -> consumed, at QUANTILES


def _quantiles(seconds: list[float]) -> tuple[float, ...]:
    return tuple(float(np.percentile(1000 * np.array(seconds), q)) for q in QUANTILES)


def probe(bootstrap: str, steps: int, batches_per_step: int, samples: int) -> Iterator[Step]:
    ensure_topics({"bootstrap.servers": bootstrap}, [TOPIC], partitions=1)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0})
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "unused", "fetch.wait.max.ms": FETCH_WAIT_MS}
    )
    consumer.assign([TopicPartition(TOPIC, 0, 0)])  # no group: Tansu's joins take seconds
    batches = 0
    try:
        for step in range(steps + 1):
            if step:
                for _ in range(batches_per_step):  # one batch each: flush before the next
                    producer.produce(TOPIC, PAYLOAD)
                    producer.flush()
                batches += batches_per_step
            acks, e2e = [], []
            for _ in range(samples):
                started = time.perf_counter()
                producer.produce(TOPIC, PAYLOAD)
                producer.flush()
                acks.append(time.perf_counter() - started)
            batches += samples
            while consumer.poll(0.5) is not None:  # catch up with the tail
                pass
            for _ in range(samples):
                started = time.perf_counter()
                producer.produce(TOPIC, PAYLOAD)
                producer.poll(0)
                while consumer.poll(1.0) is None:
                    pass
                e2e.append(time.perf_counter() - started)
            batches += samples
            yield Step(batches, _quantiles(acks), _quantiles(e2e))
    finally:
        consumer.close()
        producer.flush()


def run(work_dir: Path, steps: int, batches_per_step: int, samples: int) -> Iterator[Step]:
    with Broker(port=0, run_dir=work_dir) as broker:
        yield from probe(broker.bootstrap_servers, steps, batches_per_step, samples)
