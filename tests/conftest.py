"""Shared fixtures: every Kafka test talks to a real (Tansu) broker."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from stream.broker import Broker
from stream.schemas import MESSAGES, load_schema
from stream.settings import Settings, load_settings

PUBLISHED_SCHEMAS = Path(__file__).resolve().parents[1] / "deploy" / "schemas"
Contract = Callable[[str, "bytes | dict[str, Any]"], None]


@pytest.fixture(scope="session")
def contract() -> Contract:
    """``contract(name, message)`` fails the test unless the message (its bytes or its decoded
    JSON) matches the published schema deploy/schemas/<name>.schema.json."""
    validators = {
        name: Draft202012Validator(load_schema(PUBLISHED_SCHEMAS, name)) for name in MESSAGES
    }

    def check(name: str, message: bytes | dict[str, Any]) -> None:
        document = json.loads(message) if isinstance(message, bytes) else message
        errors = [e.message for e in validators[name].iter_errors(document)]
        assert not errors, f"{name} {document!r} breaks its schema: {errors}"

    return check


@pytest.fixture(scope="session")
def bootstrap_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`make test` runs the suite inside `glintstream broker -- ...`; otherwise start our own."""
    if servers := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield servers
        return
    with Broker(port=0, run_dir=tmp_path_factory.mktemp("broker")) as broker:
        yield broker.bootstrap_servers


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Self-signed certificates: the broker's, a client's and a stranger's (tests/certs.py)."""
    from certs import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def tls_broker(pki: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """An embedded broker behind mutual TLS: only clients with the client certificate get in."""
    from stream.tls_listener import server_context

    context = server_context(pki["server_cert"], pki["server_key"], pki["client_cert"])
    with Broker(port=0, run_dir=tmp_path_factory.mktemp("tls-broker"), tls=context) as broker:
        yield broker


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
