"""`glintstream tail`: the line format, junk never crashes it, and a round trip on the broker."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

import stream.tail
from stream.settings import Settings
from stream.tail import StallDetector, TailError, TailOptions, format_recommendation, tail
from stream.topics import ensure_topics

SAMPLE = {
    "user_id": "42",
    "items": ["1", "2", "3", "4"],
    "scores": [4.0, 3.0, 2.0, 1.0],
    "model_version": 3,
    "click": {"topic": "clicks", "partition": 1, "offset": 1234},
    "click_ts": 978300760.0,
    "published_ts": 1700000000.25,
}
TITLES = {"1": "Toy Story (1995)", "2": "Jumanji (1995)"}


def test_format_sample() -> None:
    line = format_recommendation(json.dumps(SAMPLE).encode(), b"42", "p1@9", TITLES, top=3)
    assert "user 42" in line and "model v3" in line and "click p1@1234" in line
    assert "Toy Story (1995); Jumanji (1995); item 3 (+1)" in line
    assert not line.startswith("MALFORMED")


def test_format_without_titles() -> None:
    line = format_recommendation(json.dumps({**SAMPLE, "items": ["7", "8"]}).encode(), b"42")
    assert "user 42" in line and "item 7; item 8" in line and "model v3" in line


def test_a_message_missing_fields_is_malformed_and_says_which() -> None:
    line = format_recommendation(json.dumps({"items": ["7"]}).encode(), b"u1", "p0@1")
    assert line.startswith("MALFORMED p0@1") and "user_id: Field required" in line


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"\xff\xfe not utf-8",
        b"{not json",
        b"[1, 2, 3]",
        b'"a string"',
        b"{}",
        b'{"items": "1,2,3"}',
        b'{"items": [1], "click": [1, 2]}',
        b'{"items": [1], "published_ts": "yesterday"}',
        b"x" * 10_000,
    ],
)
def test_format_junk(value: bytes | None) -> None:
    line = format_recommendation(value, b"\x00key", "p0@5", TITLES)
    assert line.startswith("MALFORMED p0@5")
    assert len(line) < 300  # a huge payload is shortened


def test_tail_round_trip(settings: Settings, unique_name) -> None:
    topic = unique_name("recs")
    lines: list[str] = []
    ensure_topics(settings, [topic])  # the worker's job; tail never creates topics
    everything = TailOptions(topic=topic, from_beginning=True, idle_timeout=0.5)
    assert tail(settings, everything, lines.append) == 0
    producer = Producer(settings.kafka.confluent_config())
    producer.produce(topic, key=b"42", value=json.dumps(SAMPLE).encode())
    producer.produce(topic, key=b"7", value=b"junk")
    producer.produce(topic, key=b"42", value=json.dumps({**SAMPLE, "model_version": 4}).encode())
    assert producer.flush(10) == 0
    options = TailOptions(
        topic=topic, from_beginning=True, user="42", limit=2, titles=TITLES, idle_timeout=20
    )
    n = tail(settings, options, lines.append)
    assert n == 2 and len(lines) == 2
    assert {"model v3" in line for line in lines} == {True, False}
    assert all("user 42" in line and "Toy Story" in line for line in lines)
    lines.clear()
    tail(settings, TailOptions(topic, True, limit=3, idle_timeout=20), lines.append)
    assert sum(line.startswith("MALFORMED") for line in lines) == 1


def test_tail_never_creates_the_topic(
    settings: Settings, unique_name, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream.tail, "TOPIC_WAIT_S", 0.5)
    topic = unique_name("missing")
    with pytest.raises(TailError, match=f"topic {topic} does not exist at"):
        tail(settings, TailOptions(topic=topic, idle_timeout=0.5))
    admin = AdminClient(settings.kafka.confluent_config())
    assert topic not in admin.list_topics(timeout=10).topics


def test_stall_detector_reports_waiting_messages_that_never_arrive() -> None:
    detector = StallDetector(timeout_s=30)
    assert detector.stalled({0: 5, 1: 0}, now=0.0) == {}
    detector.arrived(0, 20.0)
    assert detector.stalled({0: 5, 1: 0}, now=49.0) == {}  # 29 s since the last arrival
    assert detector.stalled({0: 5, 1: 0}, now=50.0) == {0: 5}
    assert detector.stalled({0: 0, 1: 0}, now=100.0) == {}  # caught up: never a stall
    assert detector.stalled({0: 1, 1: 0}, now=129.0) == {}  # waiting again, timer restarted
