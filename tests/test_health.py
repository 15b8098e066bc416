"""A worker's /healthz and /readyz (and /metrics beside them), over real HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter
from pydantic import SecretStr

from stream import endpoints
from stream.broker import free_port
from stream.health import WorkerHealth
from stream.messages import StallReason as Reason
from stream.settings import MetricsSettings


class Child:
    alive = True

    def __call__(self) -> bool:
        return self.alive


LOOPBACK = MetricsSettings(host="127.0.0.1")


def get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture
def served() -> Iterator[tuple[int, WorkerHealth, Child]]:
    child = Child()
    health = WorkerHealth(heartbeat_timeout_s=10.0, batch_process_alive=child)
    registry = CollectorRegistry()
    Counter("glintstream_test_total", "A counter, to see /metrics served.", registry=registry)
    port = endpoints.serve(
        LOOPBACK, free_port(), registry, {"/healthz": health.live, "/readyz": health.ready}
    )
    assert port is not None
    yield port, health, child


def test_readiness_follows_the_worker_lifecycle(served: tuple[int, WorkerHealth, Child]) -> None:
    port, health, child = served
    assert get(port, "/healthz")[0] == 200
    status, body = get(port, "/readyz")
    assert status == 503
    reasons = json.loads(body)["reasons"]
    assert "no model loaded" in reasons and "no partitions assigned yet" in reasons

    health.model_loaded(3)
    health.assigned({0, 1})
    status, body = get(port, "/readyz")
    assert status == 503 and json.loads(body)["reasons"] == ["restoring partitions [0, 1]"]
    health.restored({0, 1})
    status, body = get(port, "/readyz")
    assert status == 200 and json.loads(body)["model_version"] == 3

    health.stalled({1: Reason.NO_PROGRESS})
    status, body = get(port, "/readyz")
    assert status == 503 and json.loads(body)["stalled"] == {"1": "no_progress"}
    health.stalled({})
    assert get(port, "/readyz")[0] == 200

    health.assigned({2})  # a rebalance: not ready until the new partition is restored
    assert get(port, "/readyz")[0] == 503


def test_a_dead_batch_process_fails_liveness_and_readiness(
    served: tuple[int, WorkerHealth, Child],
) -> None:
    port, health, child = served
    health.model_loaded(0)
    health.assigned(set())
    assert get(port, "/readyz")[0] == 200  # a member with no partitions is ready
    child.alive = False
    status, body = get(port, "/healthz")
    assert status == 503 and json.loads(body)["batch_process_alive"] is False
    assert get(port, "/readyz")[0] == 503


def test_metrics_are_served_beside_the_routes(served: tuple[int, WorkerHealth, Child]) -> None:
    port, _, _ = served
    status, body = get(port, "/metrics")
    assert status == 200 and b"glintstream_test_total 0.0" in body


def test_a_busy_port_is_not_fatal() -> None:
    registry = CollectorRegistry()
    port = endpoints.serve(LOOPBACK, free_port(), registry)
    assert port is not None
    assert endpoints.serve(LOOPBACK, port, registry) is None
    assert endpoints.serve(LOOPBACK, 0, registry) is None  # 0 = off


def test_with_a_token_every_path_needs_it() -> None:
    registry = CollectorRegistry()
    where = MetricsSettings(host="127.0.0.1", token=SecretStr("s3cret"))
    port = endpoints.serve(where, free_port(), registry, {"/healthz": lambda: (True, {})})
    assert port is not None
    for path in ("/metrics", "/healthz"):
        assert get(port, path)[0] == 401
        assert get(port, path, token="wrong")[0] == 401
        assert get(port, path, token="s3cret")[0] == 200
