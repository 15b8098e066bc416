"""Reading a topic to its end finishes even while others keep writing to it."""

from __future__ import annotations

import threading
import time
from typing import Any

from confluent_kafka import Producer

from stream.settings import load_settings
from stream.topics import ensure_topics, read_to_end


def test_read_to_end_ends_on_a_topic_written_to_all_the_time(
    bootstrap_servers: str, unique_name: Any
) -> None:
    settings = load_settings(kafka_bootstrap_servers=bootstrap_servers)
    topic = unique_name("busy")
    ensure_topics(settings, [topic], 2)
    producer = Producer({"bootstrap.servers": bootstrap_servers, "linger.ms": 0})
    for i in range(20):
        producer.produce(topic, str(i).encode(), f"k{i}".encode())
    assert producer.flush(30) == 0
    stop = threading.Event()

    def keep_writing() -> None:  # faster than a long Fetch wait: no empty Fetch, no EOF
        while not stop.is_set():
            producer.produce(topic, b"more", b"k")
            producer.flush(5)
            time.sleep(0.05)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        started = time.monotonic()
        read = list(read_to_end(settings, topic, 60, **{"fetch.wait.max.ms": 5000}))
        took = time.monotonic() - started
    finally:
        stop.set()
        writer.join()
    assert {m.value() for m in read} >= {str(i).encode() for i in range(20)}
    assert took < 20, f"read_to_end took {took:.1f} s: it waited for an EOF that never came"
