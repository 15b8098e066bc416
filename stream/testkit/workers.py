"""Drive real `glintstream worker` processes from Python: start, kill and restart them, produce
clicks and junk with a ledger of what was acked, read topics and stored states back.

For integration tests of a deployment (the project's own tests use it) and for the benchmarks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from model.glintru import GlintRU
from stream.settings import RocksDBSettings, env_name, flat_names
from stream.state import StateStore
from stream.user_record import UserRecord

GLINTSTREAM = str(Path(sys.executable).parent / "glintstream")
READY_LINE = "[^Worker]: Ready"
POLL_S = 0.2
# for reading a stopped worker's state: small memory
SMALL_STORE = RocksDBSettings(block_cache_mb=8, write_buffer_mb=1, max_write_buffers=2)


class WorkerProcess:
    """One `glintstream worker` subprocess (or another ``command``) with its log file."""

    def __init__(
        self,
        env: dict[str, str],
        worker_id: str,
        log_dir: Path,
        command: list[str] | None = None,
        lookup_port: int = 0,
    ) -> None:
        """``lookup_port``: where it answers lookups; 0 = as ``env`` says."""
        self.env = (
            {**env, "GLINTSTREAM_WORKER_LOOKUP_PORT": str(lookup_port)} if lookup_port else env
        )
        self.lookup_port = lookup_port
        self.worker_id = worker_id
        self.log_path = log_dir / f"{worker_id}.log"
        self.command = command or [GLINTSTREAM, "worker", "--worker-id", worker_id]
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    def start(self) -> WorkerProcess:
        # Each run appends; searches only look at this run's part of the log.
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def log(self) -> str:
        with self.log_path.open("rb") as f:
            f.seek(self._log_start)
            return f.read().decode(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited rc={self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in {timeout}s:\n{self.tail()}")
            time.sleep(POLL_S)

    def wait_ready(self, timeout: float = 60) -> WorkerProcess:
        self.wait_for(READY_LINE, timeout)
        return self

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop_quietly(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Ledger:
    """What the test produced, by (partition, offset) of the `clicks` topic."""

    clicks: dict[tuple[int, int], tuple[str, int]] = field(default_factory=dict)  # -> user, t
    values: dict[tuple[int, int], bytes] = field(default_factory=dict)  # each click as sent
    # every acked click as (user, value): a broker that loses its log re-uses offsets, and the
    # maps above keep only the last click acked at an offset
    sent: list[tuple[str, bytes]] = field(default_factory=list)
    histories: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    junk: dict[tuple[int, int], bytes | None] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)  # deliveries the broker never acked


class ClickProducer:
    """Produces clicks and junk, recording each acked one in the ledger by (partition, offset).

    With ``strict`` a delivery error fails the caller at once (tests); without it the error is
    recorded in ``ledger.failed`` (the chaos benchmark counts only acked clicks).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        vocab: list[str],
        ledger: Ledger,
        strict: bool = True,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, **(config or {})})
        self.topic = topic
        self.vocab = vocab
        self.ledger = ledger
        self.strict = strict

    def _send(self, key: bytes | None, value: bytes | None, on_done: Callable) -> None:
        def report(err: Any, msg: Any) -> None:
            if err is not None:
                assert not self.strict, err
                self.ledger.failed.append(str(err))
                return
            on_done((msg.partition(), msg.offset()))

        self.producer.produce(self.topic, value, key, on_delivery=report)
        self.producer.poll(0)

    def click(self, user: str, item: int, ts: float) -> None:
        history = self.ledger.histories[user]
        t = len(history)
        history.append(item)  # before delivery: the next click of the user is t + 1
        value = json.dumps({"user_id": user, "item_id": self.vocab[item], "ts": ts}).encode()

        def acked(tp: tuple[int, int]) -> None:
            self.ledger.clicks[tp] = (user, t)
            self.ledger.values[tp] = value
            self.ledger.sent.append((user, value))

        self._send(user.encode(), value, acked)

    def junk(self, key: bytes | None, value: bytes | None) -> None:
        self._send(key, value, lambda tp: self.ledger.junk.__setitem__(tp, value))

    def flush(self, timeout: float = 30) -> int:
        """Wait for the acks; returns how many messages are still unacked (0 when strict)."""
        left = int(self.producer.flush(timeout))
        assert left == 0 or not self.strict, f"{left} messages not acked in {timeout}s"
        return left


class TopicReader:
    """Reads a topic from the beginning, incrementally, across all its partitions."""

    def __init__(self, bootstrap: str, topic: str, config: dict[str, Any] | None = None) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "test-reader",
                "enable.auto.commit": False,
                # if a restarted broker answers "out of range", read again rather than skip
                "auto.offset.reset": "earliest",
                **(config or {}),  # e.g. how to reach a broker behind TLS
            }
        )
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        self.messages: list[Any] = []

    def read_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            self.poll()

    def poll(self, timeout: float = POLL_S) -> list[Any]:
        """Read what arrived within ``timeout``; returns (and keeps) the new messages."""
        new = [msg for msg in self.consumer.consume(1000, timeout) if msg.error() is None]
        self.messages += new
        return new

    def close(self) -> None:
        self.consumer.close()


def read_log(
    bootstrap: str, topic: str, timeout: float
) -> tuple[dict[tuple[int, int], bytes | None], int]:
    """Every record the broker still holds in ``topic``, by (partition, offset), and how many
    offsets below the high watermarks hold none (holes: records the broker lost).

    Reads to the end of each partition (librdkafka's partition EOF), or for at most ``timeout``
    seconds: a log whose high watermark lies past its last record never reports an EOF.
    Compaction and transaction markers also leave holes; the worker's topics have neither
    within a benchmark run.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "log-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    out: dict[tuple[int, int], bytes | None] = {}
    open_parts = set(parts)
    deadline = time.monotonic() + timeout
    try:
        while open_parts and time.monotonic() < deadline:
            for msg in consumer.consume(1000, POLL_S):
                err, partition, offset = msg.error(), msg.partition(), msg.offset()
                assert partition is not None and offset is not None
                if err is None:
                    out[(partition, offset)] = msg.value()
                elif err.code() == KafkaError._PARTITION_EOF:
                    open_parts.discard(partition)
        holes = 0
        for p in parts:
            # the high watermark of the last Fetch (ListOffsets under-reports it on Tansu)
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
            held = sum(1 for partition, _ in out if partition == p)
            holes += max(0, high - max(low, 0) - held) if high >= 0 else 0
    finally:
        consumer.close()
    return out, holes


def offline_top_k(model: GlintRU, history: list[int], k: int) -> tuple[list[int], list[float]]:
    """The offline model's top-K after `history` (full forward on the window, seen masked)."""
    window = history[-model.config.max_len :]
    with torch.no_grad():
        user = model.forward(torch.tensor([window]), torch.tensor([len(window)]))
        scores = model.logits(user)[0]
    scores[torch.tensor(window)] = float("-inf")
    values, indices = scores.topk(k)
    return indices.tolist(), values.tolist()


def latest_records(messages: Iterable[Any]) -> dict[str, UserRecord]:
    """The last changelog record per user."""
    out: dict[str, UserRecord] = {}
    for msg in messages:
        if not msg.key().startswith(b"\x00"):
            out[msg.key().decode()] = UserRecord.decode(msg.value())
    return out


def stored_records(
    users_dir: Path, partitions: int, options: RocksDBSettings = SMALL_STORE
) -> dict[str, UserRecord]:
    """Every user record in a stopped worker's RocksDB (`<state_dir>/<worker_id>/users`)."""
    store = StateStore(users_dir, options)
    out: dict[str, UserRecord] = {}
    try:
        for partition in range(partitions):
            out.update(store.partition(partition).records())
    finally:
        store.close()
    return out


def worker_env(**values: Any) -> dict[str, str]:
    """This process's environment without its GLINTSTREAM_ settings, plus ``values``; no
    lookup port unless given (tests and benchmarks run several workers on one host)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLINTSTREAM_")}
    env["GLINTSTREAM_WORKER_LOOKUP_PORT"] = "0"
    env.update({k: str(v) for k, v in values.items()})
    return env


def settings_env(values: Mapping[str, object]) -> dict[str, str]:
    """Settings by flat name (``fresh_share``, ``finetune_steps``) as the environment variables
    a glintstream process reads them from; an unknown name is an error, not ignored."""
    unknown = sorted(set(values) - set(flat_names()))
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(unknown)}")
    return {env_name(name): str(value) for name, value in values.items()}


WORKER_TOPICS = ("clicks", "recommendations", "dlq", "changelog", "model_updates", "worker_status")


def private_worker_env(
    bootstrap: str, root: Path, name: Callable[[str], str], **settings: Any
) -> tuple[dict[str, str], dict[str, str]]:
    """(environment, topic names) of a CPU worker on its own topics, consumer group and
    directories under ``root``, serving the checkpoint in ``root / "checkpoint"``; ``settings``
    are more environment values (``GLINTSTREAM_TOP_K=5``). ``name(prefix)`` makes a unique name."""
    topics = {topic: name(topic.replace("_", "-")) for topic in WORKER_TOPICS}
    defaults: dict[str, Any] = dict(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        GLINTSTREAM_TOPIC_CLICKS=topics["clicks"],
        GLINTSTREAM_TOPIC_RECOMMENDATIONS=topics["recommendations"],
        GLINTSTREAM_TOPIC_DLQ=topics["dlq"],
        GLINTSTREAM_TOPIC_STATE_CHANGELOG=topics["changelog"],
        GLINTSTREAM_TOPIC_MODEL_UPDATES=topics["model_updates"],
        GLINTSTREAM_TOPIC_WORKER_STATUS=topics["worker_status"],
        GLINTSTREAM_WORKER_APP_ID=name("worker"),
        GLINTSTREAM_STATE_DIR=root / "state",
        GLINTSTREAM_REGISTRY_DIR=root / "registry",
        GLINTSTREAM_CHECKPOINT_DIR=root / "checkpoint",
        GLINTSTREAM_METRICS_PORT=0,
        GLINTSTREAM_WORKER_SESSION_TIMEOUT_S=6,  # Tansu holds a JoinGroup for half of it
        GLINTSTREAM_DEVICE="cpu",
    )
    return worker_env(**{**defaults, **settings}), topics


def alive(pid: int) -> bool:
    """The process runs; a zombie waiting for its parent to reap it counts as stopped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def gone_within(pid: int, seconds: float) -> bool:
    """Whether the process stops within ``seconds``."""
    deadline = time.monotonic() + seconds
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)
