"""Shared fixtures: every Kafka test talks to a real (Tansu) broker."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from stream.broker import Broker
from stream.settings import Settings, load_settings


@pytest.fixture(scope="session")
def bootstrap_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`make test` runs the suite inside `glintstream broker -- ...`; otherwise start our own."""
    if servers := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield servers
        return
    with Broker(port=0, run_dir=tmp_path_factory.mktemp("broker")) as broker:
        yield broker.bootstrap_servers


@pytest.fixture
def settings(bootstrap_servers: str) -> Settings:
    return load_settings(kafka_bootstrap_servers=bootstrap_servers)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Topic and group names unique per test, so tests never see each other's data."""
    test = request.node.name.replace("[", "-").replace("]", "")[:40]

    def make(prefix: str = "t") -> str:
        return f"{prefix}-{test}-{uuid.uuid4().hex[:8]}"

    return make
