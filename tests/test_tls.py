"""TLS and mutual TLS for real: `glintstream broker` terminating TLS in front of Tansu (which
cannot serve it), clients of both libraries connecting with the kafka_ssl_* settings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from certs import client_settings
from confluent_kafka import Consumer, TopicPartition
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from test_cli import glintstream_exe

from stream.broker import Broker
from stream.finetune import FinetuneJob
from stream.settings import Settings, env_name, load_settings
from stream.topics import BrokerRefused, BrokerUnreachable, ensure_reachable


def client_env(servers: str, pki: dict[str, Path], who: str = "client") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GLINTSTREAM_", "KAFKA_"))}
    tls = {env_name(name): value for name, value in client_settings(pki, who).items()}
    return {**env, **tls, "KAFKA_BOOTSTRAP_SERVERS": servers}


def glintstream(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [glintstream_exe(), *args], capture_output=True, text=True, timeout=90, env=env
    )


def client(broker: Broker, pki: dict[str, Path], who: str = "client", **more: object) -> Settings:
    return load_settings(
        kafka_bootstrap_servers=broker.bootstrap_servers, **{**client_settings(pki, who), **more}
    )


def test_produce_and_tail_over_mutual_tls(
    tls_broker: Broker, pki: dict[str, Path], unique_name
) -> None:
    env, topic = client_env(tls_broker.bootstrap_servers, pki), unique_name("clicks")
    produced = glintstream(
        env, "produce", "--dataset", "synthetic", "--limit", "40", "--topic", topic, "--no-progress"
    )
    assert produced.returncode == 0, produced.stderr
    assert "40 delivered, 0 failed" in produced.stderr
    # tail prints any record; clicks are not recommendations, so each is a MALFORMED line
    tailed = glintstream(env, "tail", "--topic", topic, "--from-beginning", "--limit", "40")
    assert tailed.returncode == 0, tailed.stderr
    assert len(tailed.stdout.splitlines()) == 40
    # and the fine-tune job's kind of client: a group consumer from the settings
    settings = client(tls_broker, pki)
    consumer = Consumer(settings.kafka.confluent_consumer_config(unique_name("g")))
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.topics.partitions)])
        got = []
        while len(got) < 40:
            got += [m for m in consumer.consume(40, timeout=5) if m.error() is None] or [None]
            assert None not in got, f"{len(got)} of 40 read"
    finally:
        consumer.close()


def test_the_finetune_job_consumes_over_mutual_tls(
    tls_broker: Broker, pki: dict[str, Path], tmp_path: Path, unique_name
) -> None:
    """The job's own consumer loop (``FinetuneJob.consume``) stores every click sent over TLS."""
    env, topic = client_env(tls_broker.bootstrap_servers, pki), unique_name("clicks")
    produced = glintstream(
        env, "produce", "--dataset", "synthetic", "--limit", "40", "--topic", topic, "--no-progress"
    )
    assert produced.returncode == 0, produced.stderr
    settings = client(
        tls_broker,
        pki,
        topic_clicks=topic,
        state_dir=tmp_path / "state",
        registry_dir=tmp_path / "registry",
        finetune_group_id=unique_name("finetune"),
        finetune_every_clicks=1_000_000,  # store only: no run in this test
        finetune_every_s=3600.0,
        device="cpu",
    )
    job = FinetuneJob(settings)
    deadline = time.monotonic() + 60
    try:
        job.consume(lambda: job.store.tick >= 40 or time.monotonic() > deadline)
        assert job.store.tick == 40 and len(job.store) > 0
        assert sum(job.store.offset(p) + 1 for p in range(settings.topics.partitions)) == 40
    finally:
        job.close()


async def test_the_workers_faust_clients_over_mutual_tls(
    tls_broker: Broker, pki: dict[str, Path], unique_name
) -> None:
    """aiokafka with what faust hands it from ``faust_credentials()``, as in the worker."""
    settings = client(tls_broker, pki)
    auth = credentials_to_aiokafka_auth(settings.kafka.faust_credentials())
    assert auth["security_protocol"] == "SSL"
    topic = unique_name("status")
    producer = AIOKafkaProducer(bootstrap_servers=tls_broker.bootstrap_servers, **auth)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"over tls", key=b"w1")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=tls_broker.bootstrap_servers, auto_offset_reset="earliest", **auth
    )
    await consumer.start()
    try:
        message = await consumer.getone()
        assert (message.key, message.value) == (b"w1", b"over tls")
    finally:
        await consumer.stop()


def test_clients_the_tls_handshake_fails_for_are_told_so(
    tls_broker: Broker, pki: dict[str, Path]
) -> None:
    """What the commands print in one line (tests/test_cli.py: BrokerUnreachable and its
    subclass BrokerRefused become one line)."""
    # a client that does not trust the broker's certificate: refused, and told why
    other_ca = str(pki["other_cert"])
    distrustful = client(tls_broker, pki, kafka_ssl_cafile=other_ca, kafka_connect_timeout_s=1)
    with pytest.raises(BrokerRefused, match="certificate verify failed") as refused:
        ensure_reachable(distrustful)
    assert f"the Kafka broker at {tls_broker.bootstrap_servers} refused this client" in str(
        refused.value
    )
    # a client whose certificate the broker does not trust: TLS 1.3 rejects it after the
    # client's side of the handshake, so librdkafka sees only a closed connection
    stranger = client(tls_broker, pki, "other", kafka_connect_timeout_s=1)
    with pytest.raises(BrokerUnreachable, match="no Kafka broker answered") as unreachable:
        ensure_reachable(stranger)
    assert not isinstance(unreachable.value, BrokerRefused)


def test_glintstream_broker_serves_mutual_tls_to_the_command_it_wraps(
    pki: dict[str, Path], tmp_path: Path
) -> None:
    tls = {
        "broker_tls_certfile": pki["server_cert"],
        "broker_tls_keyfile": pki["server_key"],
        "broker_tls_client_cafile": pki["client_cert"],
    }
    sets = [arg for name, value in tls.items() for arg in ("--set", f"{name}={value}")]
    inner = (
        "from stream.settings import load_settings\n"
        "from stream.topics import ensure_reachable\n"
        "settings = load_settings()\n"
        "ensure_reachable(settings)\n"
        "print('inner', settings.kafka.bootstrap_servers, settings.kafka.security_protocol)\n"
    )
    env = client_env("unused:1", pki)  # `broker` gives the command its bootstrap servers
    wrapped = glintstream(
        env,
        *sets,
        "broker",
        "--port",
        "0",
        "--run-dir",
        str(tmp_path),
        "--",
        sys.executable,
        "-c",
        inner,
    )
    assert wrapped.returncode == 0, wrapped.stderr
    assert wrapped.stdout.startswith("inner 127.0.0.1:") and wrapped.stdout.strip().endswith("SSL")
    with pytest.raises(ValueError, match="go together"):
        load_settings(broker_tls_certfile=pki["server_cert"])
