"""The four places where stream/worker.py bends faust and aiokafka still fit them.

The worker wraps faust's consumer at ``_thread._create_worker_consumer``, ``commit`` and
``seek_to_committed`` and reads aiokafka's ``last_poll_timestamp``. These tests fail when an
upgrade moves or changes what the wrappers rely on, before any worker misbehaves silently.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import aiokafka
import pytest
from aiokafka.consumer.fetcher import Fetcher
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from stream.health import WorkerHealth
from stream.settings import load_settings
from stream.worker import Worker


class NoBatchProcess:
    """The worker's handle on its batch process, never called here."""

    def applied_offsets(self) -> dict[int, int]:
        return {}

    def alive(self) -> bool:
        return True


@pytest.fixture
def worker(tmp_path: Path) -> Worker:
    settings = load_settings(
        state_dir=tmp_path / "state", worker_fetch_max_wait_ms=37, kafka_bootstrap_servers="x:1"
    )
    health = WorkerHealth(10.0, lambda: True)
    return Worker(settings, NoBatchProcess(), health)  # type: ignore[arg-type]


def source(obj: Any) -> str:
    return inspect.getsource(obj)


def test_seam_1_the_fetch_wait_reaches_aiokafkas_fetch_requests(worker: Worker) -> None:
    thread = worker.app.consumer._thread  # type: ignore[attr-defined]
    assert isinstance(thread, AIOKafkaConsumerThread)
    # faust builds a worker's consumer through this method, which the worker wraps ...
    assert "self._create_worker_consumer(" in source(AIOKafkaConsumerThread._create_consumer)
    assert thread._create_worker_consumer.__name__ == "create_with_wait"
    # ... and aiokafka hands the attribute it sets to the fetcher, which puts it in every Fetch
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in source(aiokafka.AIOKafkaConsumer.start)
    assert "self._fetch_max_wait_ms," in source(Fetcher._get_actions_per_node)


def test_seam_2_every_rebalance_seeks_through_seek_to_committed(worker: Worker) -> None:
    consumer: Any = worker.app.consumer
    assert inspect.iscoroutinefunction(FaustConsumer.seek_to_committed)
    # faust's rebalance path calls it through the instance, where the worker's wrapper sits
    assert "self.seek_to_committed()" in source(FaustConsumer.perform_seek)
    assert consumer.seek_to_committed.__name__ == "seek_to_applied"
    assert inspect.iscoroutinefunction(consumer.seek)


def test_seam_3_commits_go_through_the_instance_and_say_whether_they_committed(
    worker: Worker,
) -> None:
    consumer: Any = worker.app.consumer
    assert consumer.commit.__name__ == "commit_and_record"
    assert inspect.signature(FaustConsumer.commit).return_annotation in (bool, "bool")
    # the commit timer and the shutdown path both call commit through the instance
    assert "await self.commit()" in source(FaustConsumer._commit_handler.fun)
    assert "await self.commit(" in source(FaustConsumer.commit_and_end_transactions)
    assert "self.commit_and_end_transactions()" in source(FaustConsumer.on_stop)


def test_seam_4_aiokafka_stamps_each_fetch_response() -> None:
    assert callable(aiokafka.AIOKafkaConsumer.last_poll_timestamp)
    # every partition of a successful Fetch response gets the time it came back
    assert "tp_state.timestamp = now_ms" in source(Fetcher._proc_fetch_request)
    assert "now_ms = int(1000 * time.time())" in source(Fetcher._proc_fetch_request)
