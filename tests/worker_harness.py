"""Helpers for the worker tests: real `glintstream worker` processes driven with confluent-kafka."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from confluent_kafka import Consumer, Producer, TopicPartition

from model.glintru import GlintRU
from stream.state import UserRecord

GLINTSTREAM = str(Path(sys.executable).parent / "glintstream")
READY_LINE = "[^Worker]: Ready"
POLL_S = 0.2


class WorkerProcess:
    """One `glintstream worker` subprocess with its log file."""

    def __init__(self, env: dict[str, str], worker_id: str, log_dir: Path) -> None:
        self.env = env
        self.worker_id = worker_id
        self.log_path = log_dir / f"{worker_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    def start(self) -> WorkerProcess:
        # Each run appends; searches only look at this run's part of the log.
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [GLINTSTREAM, "worker", "--worker-id", self.worker_id],
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
    histories: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    junk: dict[tuple[int, int], bytes | None] = field(default_factory=dict)


class ClickProducer:
    def __init__(self, bootstrap: str, topic: str, vocab: list[str], ledger: Ledger) -> None:
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
        self.topic = topic
        self.vocab = vocab
        self.ledger = ledger

    def _send(self, key: bytes | None, value: bytes | None, on_done: Callable) -> None:
        def report(err: Any, msg: Any) -> None:
            assert err is None, err
            on_done((msg.partition(), msg.offset()))

        self.producer.produce(self.topic, value, key, on_delivery=report)
        self.producer.poll(0)

    def click(self, user: str, item: int, ts: float) -> None:
        history = self.ledger.histories[user]
        t = len(history)
        history.append(item)  # before delivery: the next click of the user is t + 1
        value = json.dumps({"user_id": user, "item_id": self.vocab[item], "ts": ts}).encode()
        self._send(user.encode(), value, lambda tp: self.ledger.clicks.__setitem__(tp, (user, t)))

    def junk(self, key: bytes | None, value: bytes | None) -> None:
        self._send(key, value, lambda tp: self.ledger.junk.__setitem__(tp, value))

    def flush(self) -> None:
        assert self.producer.flush(30) == 0


class TopicReader:
    """Reads a topic from the beginning, incrementally, across all its partitions."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "test-reader", "enable.auto.commit": False}
        )
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        self.consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        self.messages: list[Any] = []

    def read_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            for msg in self.consumer.consume(1000, POLL_S):
                if msg.error() is None:
                    self.messages.append(msg)

    def close(self) -> None:
        self.consumer.close()


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


def worker_env(**values: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLINTSTREAM_")}
    env.update({k: str(v) for k, v in values.items()})
    return env
