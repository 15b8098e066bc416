"""`glintstream bench broker`: the embedded broker's Fetch as a partition accumulates batches.

A paced producer (one click per request, as a user's client sends them at low rates) appends
one record batch per message. This probe fills one partition of a private broker with such
batches, step by step, and after each step times, on that partition:

- a produce acknowledged by the broker (acks=all);
- produce -> consume for a consumer polling the tail with the worker's fetch wait;
- the Fetch of the last record by a fresh consumer, with the worker's fetch wait and with a
  long one.

On the embedded broker (Tansu 0.6, memory engine) a Fetch that finds new data in a partition
lists every record batch the partition holds (~1 us each) and gives up, returning nothing,
when that takes longer than the consumer's fetch wait: the long wait shows the linear cost, the
worker's wait shows where a consumer stops receiving anything (README, "Embedded broker").
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, Producer, TopicPartition

from stream.broker import Broker
from stream.settings import WorkerSettings
from stream.topics import ensure_topics

TOPIC = "broker-latency"
PAYLOAD = b"x" * 100  # about a click
WORKER_FETCH_WAIT_MS = WorkerSettings.model_fields["fetch_max_wait_ms"].default
LONG_FETCH_WAIT_MS = 1000
FETCH_TIMEOUT_S = 10.0  # a fetch not answered in this long counts as "nothing received"
FILL_FLUSH_EVERY = 100  # one-record batches queued before waiting for their acks
QUANTILES = (50, 99)


@dataclass(frozen=True)
class Step:
    batches: int  # record batches in the partition when measured
    ack_ms: tuple[float, ...]  # produce -> broker ack, at QUANTILES
    e2e_ms: tuple[float, ...] | None  # produce -> consumed, at QUANTILES; None: nothing came
    fetch_ms: dict[int, float | None]  # fetch wait (ms) -> last record fetched in; None: never


def _quantiles(seconds: list[float]) -> tuple[float, ...]:
    return tuple(float(np.percentile(1000 * np.array(seconds), q)) for q in QUANTILES)


def _consumer(bootstrap: str, wait_ms: int) -> Consumer:
    return Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "unused", "fetch.wait.max.ms": wait_ms}
    )


def fetch_last(bootstrap: str, offset: int, wait_ms: int) -> float | None:
    """Seconds for a fresh consumer to receive the record at ``offset``; None if it never does."""
    consumer = _consumer(bootstrap, wait_ms)
    consumer.assign([TopicPartition(TOPIC, 0, offset)])  # no group: Tansu's joins take seconds
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < FETCH_TIMEOUT_S:
            msg = consumer.poll(0.05)
            if msg is not None and msg.error() is None:
                return time.perf_counter() - started
        return None
    finally:
        consumer.close()


def probe(bootstrap: str, steps: int, batches_per_step: int, samples: int) -> Iterator[Step]:
    ensure_topics({"bootstrap.servers": bootstrap}, [TOPIC], partitions=1)
    # one message per request: batch.num.messages=1 even when the fill queues many
    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0, "batch.num.messages": 1}
    )
    tail = _consumer(bootstrap, WORKER_FETCH_WAIT_MS)
    tail.assign([TopicPartition(TOPIC, 0, 0)])
    batches = 0
    try:
        for step in range(steps + 1):
            if step:
                for i in range(batches_per_step):
                    producer.produce(TOPIC, PAYLOAD)
                    if i % FILL_FLUSH_EVERY == FILL_FLUSH_EVERY - 1:
                        producer.flush()
                producer.flush()
                batches += batches_per_step
            acks = []
            for _ in range(samples):
                started = time.perf_counter()
                producer.produce(TOPIC, PAYLOAD)
                producer.flush()
                acks.append(time.perf_counter() - started)
            batches += samples
            fetch_ms = {}
            for wait in (WORKER_FETCH_WAIT_MS, LONG_FETCH_WAIT_MS):
                seconds = fetch_last(bootstrap, batches - 1, wait)
                fetch_ms[wait] = None if seconds is None else 1000 * seconds
            tail.assign([TopicPartition(TOPIC, 0, batches)])  # skip the fill: only new clicks
            e2e: list[float] = []
            stalled = False
            for _ in range(samples):
                batches += 1
                started = time.perf_counter()
                producer.produce(TOPIC, PAYLOAD)
                producer.poll(0)
                msg = None
                while msg is None and time.perf_counter() - started < FETCH_TIMEOUT_S:
                    msg = tail.poll(0.05)
                if msg is None:
                    stalled = True  # the tail stopped receiving: the cut-off
                    break
                e2e.append(time.perf_counter() - started)
            producer.flush()
            yield Step(batches, _quantiles(acks), None if stalled else _quantiles(e2e), fetch_ms)
    finally:
        tail.close()
        producer.flush()


def run(work_dir: Path, steps: int, batches_per_step: int, samples: int) -> Iterator[Step]:
    with Broker(port=0, run_dir=work_dir) as broker:
        yield from probe(broker.bootstrap_servers, steps, batches_per_step, samples)
