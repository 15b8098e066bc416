"""Confluent Schema Registry framing: what glintstream writes with a registry, what its readers
take. The registry is confluent-kafka's in-process one (``mock://``): no registry server
installs on this machine; the framing and the serializers are confluent-kafka's own."""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import ExitStack
from pathlib import Path

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from conftest import Contract
from test_worker import make_checkpoint

from model.data import synthetic
from stream.broker import free_port
from stream.clicks import Click, Rejection, parse_click
from stream.framing import Framing, FramingError, payload, unframe
from stream.messages import RejectReason
from stream.produce import produce_clicks
from stream.publisher import DeliveryError, Publisher
from stream.schemas import schema_text
from stream.settings import Settings, load_settings
from stream.tail import format_recommendation
from stream.testkit import GLINTSTREAM, TopicReader, WorkerProcess, private_worker_env

MAX_BYTES = 4096
CLICK = {"user_id": "u1", "item_id": "i7", "ts": 12.5, "event_id": "e-1"}


def confluent_framed(document: dict, topic: str = "clicks") -> bytes:
    """``document`` as a producer using Confluent's own JSON serializer writes it."""
    client = SchemaRegistryClient.new_client({"url": "mock://producer"})
    serializer = JSONSerializer(schema_text("click"), client)
    framed = serializer(document, SerializationContext(topic, MessageField.VALUE))
    assert framed is not None
    return framed


def with_registry(settings: Settings, url: str = "mock://glintstream") -> Settings:
    return settings.with_overrides(kafka_schema_registry_url=url)


def test_unframe_strips_a_confluent_header_and_leaves_json_alone() -> None:
    framed = confluent_framed(CLICK)
    assert framed[:1] == b"\x00" and json.loads(unframe(framed)) == CLICK
    plain = json.dumps(CLICK).encode()
    assert unframe(plain) is plain
    with pytest.raises(FramingError, match="Schema Registry header"):
        unframe(b"\x00\x00\x01")  # cut short inside the schema id
    assert payload(b"\x00\x00\x01") == b"\x00\x00\x01"  # left for the reader's validation
    assert payload(None) == b""


def test_a_click_framed_by_confluents_serializer_is_a_click() -> None:
    assert parse_click(confluent_framed(CLICK), b"u1", MAX_BYTES) == Click("u1", "i7", 12.5, "e-1")
    rejected = parse_click(b"\x01short", b"u1", MAX_BYTES)
    assert isinstance(rejected, Rejection)
    assert rejected.reason is RejectReason.INVALID_JSON
    assert "Schema Registry header" in rejected.detail


def test_without_a_registry_nothing_is_framed(settings: Settings) -> None:
    framing = Framing(settings)
    assert framing.registry is None
    value = b'{"a": 1}'
    assert framing(settings.topics.recommendations, value) is value


def test_with_a_registry_each_topic_gets_its_schema_and_confluent_reads_it_back(
    settings: Settings,
) -> None:
    settings = with_registry(settings)
    framing = Framing(settings)
    topics = settings.topics
    value = json.dumps({"user_id": "u1"}).encode()
    framed = framing(topics.recommendations, value)
    assert framed[:1] == b"\x00" and unframe(framed) == value
    # a topic that carries no message (the state changelog) is written as it is
    assert framing(topics.state_changelog, value) is value
    registry = framing.registry
    assert registry is not None
    assert f"{topics.recommendations}-value" in registry.get_subjects()
    registered = registry.get_latest_version(f"{topics.recommendations}-value").schema
    assert registered.schema_str is not None
    assert json.loads(registered.schema_str) == json.loads(schema_text("recommendation"))
    # the message named explicitly: clicks to a topic of the producer's choice
    clicks = framing("my-clicks", json.dumps(CLICK).encode(), "click")
    assert "my-clicks-value" in registry.get_subjects()
    reader = JSONDeserializer(None, schema_registry_client=registry)
    read = reader(clicks, SerializationContext("my-clicks", MessageField.VALUE))
    assert read == CLICK  # Confluent's reader, with the writer's schema from the registry


@pytest.mark.timeout(120)
def test_a_worker_with_a_registry_reads_framed_clicks_and_frames_what_it_writes(
    bootstrap_servers: str, tmp_path: Path, unique_name, contract: Contract
) -> None:
    data = synthetic(num_users=6, num_items=15, min_len=2, max_len=4, seed=2)
    assert data.timestamps is not None
    make_checkpoint(tmp_path / "checkpoint", data.vocab, seed=0)
    suffix = unique_name("framing")
    env, topics = private_worker_env(
        bootstrap_servers,
        tmp_path,
        lambda prefix: f"{prefix}-{suffix}",
        KAFKA_SCHEMA_REGISTRY_URL="mock://worker",
        GLINTSTREAM_WORKER_STATUS_INTERVAL_S=1,
    )
    with ExitStack() as cleanup:
        worker = WorkerProcess(env, "a", tmp_path).start()
        cleanup.callback(worker.stop_quietly)
        worker.wait_ready()  # it creates the topics the readers subscribe to
        recs = TopicReader(bootstrap_servers, topics["recommendations"])
        cleanup.callback(recs.close)
        statuses = TopicReader(bootstrap_servers, topics["worker_status"])
        cleanup.callback(statuses.close)
        clicks = [
            Click(user, data.vocab[int(item)], float(ts))
            for user, sequence, stamps in zip(data.users, data.sequences, data.timestamps)
            for item, ts in zip(sequence, stamps)
        ]
        producing = with_registry(load_settings(kafka_bootstrap_servers=bootstrap_servers))
        report = produce_clicks(producing, iter(clicks), topic=topics["clicks"], progress=False)
        assert report.delivered == len(clicks) and report.failed == 0
        recs.read_until(lambda: len(recs.messages) >= len(clicks), 60, "recommendations")
        statuses.read_until(lambda: len(statuses.messages) >= 1, 30, "a worker status")
        for msg in recs.messages:
            value = msg.value()
            assert value[:1] == b"\x00", "a recommendation written without its registry header"
            contract("recommendation", unframe(value))
            assert "MALFORMED" not in format_recommendation(value, msg.key())
        assert len(recs.messages) == len(clicks)  # every framed click was read as a click
        for msg in statuses.messages:
            assert msg.value()[:1] == b"\x00"
            contract("worker-status", unframe(msg.value()))


def test_an_unreachable_registry_is_a_delivery_failure(settings: Settings) -> None:
    """The worker retries a batch whose messages cannot be framed, as one the broker refused."""
    unreachable = with_registry(settings, f"http://127.0.0.1:{free_port()}")
    publisher = Publisher(unreachable)
    try:
        with pytest.raises(DeliveryError, match="schema registry"):
            publisher.send(unreachable.topics.recommendations, b"u1", b'{"user_id": "u1"}')
    finally:
        publisher.close()


def test_produce_with_an_unreachable_registry_fails_in_one_line(bootstrap_servers: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.run(
        [
            *(GLINTSTREAM, "--bootstrap-servers", bootstrap_servers),
            *("produce", "--dataset", "synthetic", "--limit", "3", "--no-progress"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KAFKA_SCHEMA_REGISTRY_URL": url},
    )
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: the schema registry at " + url), proc.stderr
