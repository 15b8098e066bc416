"""Click replay: the ordering function, pacing, and a round trip through the real broker."""

from __future__ import annotations

import json
import time
from collections import defaultdict

import numpy as np
import pytest
from confluent_kafka import Consumer

from model.data import PAD, SequenceData, synthetic
from stream.produce import Pacer, click_order, iter_clicks, produce_clicks
from stream.settings import Settings


def small(timestamps: bool = True) -> SequenceData:
    # ties across users (t=10) and inside a user (b: 20, 20) exercise the stable sort
    stamps = [np.array([10, 30, 50]), np.array([10, 20, 20, 40]), np.array([5, 60])]
    return SequenceData(
        name="small",
        users=["a", "b", "c"],
        sequences=[np.array([1, 2, 3]), np.array([4, 5, 6, 7]), np.array([8, 9])],
        vocab=[PAD] + [f"i{k}" for k in range(1, 10)],
        timestamps=stamps if timestamps else None,
    )


def replay(data: SequenceData, **kwargs) -> list[tuple[str, int]]:
    return [(data.users[u], p) for u, p in click_order(data, **kwargs).tolist()]


def test_global_time_order() -> None:
    order = replay(small())
    assert order == [
        ("c", 0),  # t=5
        ("a", 0),  # t=10, user a before b on the tie
        ("b", 0),
        ("b", 1),  # t=20
        ("b", 2),  # t=20
        ("a", 1),  # t=30
        ("b", 3),
        ("a", 2),
        ("c", 1),
    ]


def test_round_robin_without_timestamps() -> None:
    order = replay(small(timestamps=False))
    assert order == [
        ("a", 0), ("b", 0), ("c", 0),
        ("a", 1), ("b", 1), ("c", 1),
        ("a", 2), ("b", 2),
        ("b", 3),
    ]  # fmt: skip


def test_skip_last_subsets_and_limit() -> None:
    data = small()
    order = replay(data, skip_last=1)
    assert sorted(order) == [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("b", 2), ("c", 0)]
    assert replay(data, skip_last=5) == []
    assert {u for u, _ in replay(data, users=2)} == {"a", "b"}
    assert replay(data, user_ids=["c"]) == [("c", 0), ("c", 1)]
    assert replay(data, limit=3) == replay(data)[:3]
    with pytest.raises(ValueError, match="unknown user"):
        click_order(data, user_ids=["zz"])


def test_synthetic_order_properties() -> None:
    data = synthetic(num_users=50, seed=3)
    order = click_order(data, skip_last=2)
    assert len(order) == data.num_clicks - 2 * len(data.users)
    ts = np.array([data.timestamps[u][p] for u, p in order.tolist()])
    assert (np.diff(ts) >= 0).all()  # global time order
    last: dict[int, int] = {}
    for u, p in order.tolist():  # each user's positions 0, 1, 2, ... in order
        assert p == last.get(u, -1) + 1
        last[u] = p
    assert all(last[u] == len(data.sequences[u]) - 3 for u in range(len(data.users)))


def test_iter_clicks_fields() -> None:
    data = small()
    clicks = list(iter_clicks(data, click_order(data, limit=2)))
    assert clicks[0].user_id == "c" and clicks[0].item_id == "i8" and clicks[0].ts == 5.0
    assert json.loads(clicks[1].to_json()) == {
        "user_id": "a",
        "item_id": "i1",
        "ts": 10.0,
        "event_id": "a:0",
    }
    now = time.time()
    undated = list(iter_clicks(small(timestamps=False), np.array([[1, 3]])))
    assert undated[0].event_id == "b:3" and abs(undated[0].ts - now) < 5


def test_pacer_holds_the_rate() -> None:
    pacer, n = Pacer(5000), 1500
    start = time.monotonic()
    for _ in range(n):
        pacer.wait()
    elapsed = time.monotonic() - start
    # never faster than asked (less the banked burst); generous upper bound for a busy machine
    assert (n - 1) / 5000 - 0.05 <= elapsed < 0.3 + (n / 5000) * 2


def test_produce_round_trip(settings: Settings, unique_name) -> None:
    topic = unique_name("clicks")
    data = synthetic(num_users=40, seed=1)
    order = click_order(data, skip_last=1)
    report = produce_clicks(
        settings, iter_clicks(data, order), topic=topic, total=len(order), progress=False
    )
    assert report.failed == 0 and report.delivered == report.sent == len(order)

    consumer = Consumer(settings.kafka.confluent_consumer_config(unique_name("g")))
    consumer.subscribe([topic])
    got = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < len(order):
            assert time.monotonic() < deadline, f"got {len(got)} of {len(order)}"
            for msg in consumer.consume(500, timeout=0.5):
                assert msg.error() is None, msg.error()
                got.append(msg)
    finally:
        consumer.close()
    assert len(got) == len(order)

    by_partition: dict[tuple[int, str], list[int]] = defaultdict(list)
    partitions_of_user: dict[str, set[int]] = defaultdict(set)
    for msg in got:
        value = json.loads(msg.value())
        user = msg.key().decode()
        assert value["user_id"] == user
        event_user, pos = value["event_id"].rsplit(":", 1)
        u = data.users.index(user)
        assert event_user == user
        assert value["item_id"] == data.vocab[data.sequences[u][int(pos)]]
        assert value["ts"] == float(data.timestamps[u][int(pos)])
        by_partition[msg.partition(), user].append(int(pos))
        partitions_of_user[user].add(msg.partition())
    assert all(len(p) == 1 for p in partitions_of_user.values())  # keyed: one partition each
    assert len(partitions_of_user) == len(data.users)
    for (_, user), positions in by_partition.items():
        expected = len(data.sequences[data.users.index(user)]) - 1
        assert positions == list(range(expected)), user  # in order, none lost or repeated
