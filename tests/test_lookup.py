"""Lookups: the user's partition is librdkafka's, a worker answers its own users from its store
(or with popular items), forwards the others once to their owner, and refuses what it cannot
answer with a clear status. Real HTTP servers and a real HTTP client over loopback."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from conftest import Contract
from pydantic import SecretStr

from stream import lookup_server
from stream.broker import free_port
from stream.lookup import (
    FORWARDED_HEADER,
    LocalLookup,
    LookupRequest,
    LookupRouter,
    Routes,
    lookup_path,
    match,
    partition_for,
)
from stream.messages import ClickRef, LookupSource, Recommendation
from stream.popularity import Popularity
from stream.settings import MetricsSettings, RocksDBSettings, load_settings
from stream.state import StateStore
from stream.topics import ensure_topics

OPTIONS = RocksDBSettings(block_cache_mb=8, write_buffer_mb=1, max_write_buffers=2)
PARTITIONS = 2
TOKEN = "s3cret"


def test_the_partition_of_a_user_is_the_one_librdkafka_sends_their_clicks_to(
    bootstrap_servers: str, unique_name: Any
) -> None:
    topic, n = unique_name("lookup"), 7
    ensure_topics(load_settings(kafka_bootstrap_servers=bootstrap_servers), [topic], n)
    producer = Producer({"bootstrap.servers": bootstrap_servers})  # the default partitioner
    landed: dict[str, int] = {}
    users = [f"user-{i}" for i in range(200)] + ["é/ü x", "42", "sku:7"]
    for user in users:
        producer.produce(
            topic,
            b"{}",
            user.encode(),
            on_delivery=lambda err, msg: landed.__setitem__(msg.key().decode(), msg.partition()),
        )
    assert producer.flush(30) == 0
    assert landed == {user: partition_for(user, n) for user in users}


@pytest.mark.parametrize("user", ["u1", "a/b", "é ü", "100%", "x/recommendations"])
def test_a_lookup_path_names_its_user_exactly(user: str) -> None:
    assert match(lookup_path(user)) == user
    assert match(lookup_path(user) + "?x=3") == user  # a query is not part of the id
    assert match("/users/a/b/recommendations") == "a/b"  # a "/" the client left unencoded
    assert match("/users//recommendations") is None and match("/metrics") is None


# ------------------------------------------------------------------ two workers over HTTP
@dataclass
class FakeWorker:
    """One worker's lookups as its batch process serves them: its store and the router, on a
    real HTTP server, with the routes a rebalance would hand over."""

    worker_id: str
    partition: int  # the one partition it holds
    store: StateStore
    popularity: Popularity
    url: str = ""

    def local(self) -> LocalLookup:
        return LocalLookup(
            self.store,
            self.popularity,
            lambda: frozenset({self.partition}),
            lambda: 3,
            self.worker_id,
            top_k=2,
        )


def user_in(partition: int) -> str:
    return next(u for u in (f"user-{i}" for i in range(100)) if partition_for(u, 2) == partition)


def recommendation(user: str, partition: int) -> Recommendation:
    return Recommendation(
        user_id=user,
        items=["7", "9"],
        scores=[2.5, 1.0],
        model_version=3,
        click=ClickRef(topic="clicks", partition=partition, offset=41),
        click_ts=1.0,
        published_ts=time.time() - 1.0,
        event_id="e1",
    )


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[dict[str, FakeWorker]]:
    where = MetricsSettings(host="127.0.0.1", token=SecretStr(TOKEN))
    ports = {"a": free_port(), "b": free_port()}
    owners = {0: f"http://127.0.0.1:{ports['a']}", 1: f"http://127.0.0.1:{ports['b']}"}
    out = {}
    for partition, worker_id in enumerate(("a", "b")):
        w = FakeWorker(
            worker_id, partition, StateStore(tmp_path / worker_id, OPTIONS), Popularity(60, 0)
        )
        router = LookupRouter(w.local(), owners[partition], timeout_s=2.0, token=TOKEN)
        router.routes = Routes(PARTITIONS, frozenset({partition}), owners)
        assert lookup_server.serve(where, ports[worker_id], router) == ports[worker_id]
        w.url = owners[partition]
        out[worker_id] = w
    yield out
    for w in out.values():
        w.store.close()


def get(url: str, token: str | None = TOKEN, **headers: str) -> tuple[int, dict[str, Any]]:
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        return e.code, json.loads(body) if body.startswith(b"{") else {"text": body.decode()}


def test_every_worker_answers_for_every_user_from_the_owners_store(
    workers: dict[str, FakeWorker], contract: Contract
) -> None:
    b = workers["b"]
    user = user_in(1)
    sent = recommendation(user, 1)
    b.store.commit({}, {(1, user): sent.to_bytes()}, {1: 41}, {1: 0})
    for asked in workers.values():  # b answers itself; a forwards to b
        status, body = get(asked.url + lookup_path(user))
        assert status == 200, body
        contract("user-recommendations", body)
        assert body["source"] == LookupSource.USER and body["worker_id"] == "b"
        assert (body["items"], body["scores"]) == (sent.items, sent.scores)
        assert body["click"] == sent.click.model_dump() and body["model_version"] == 3
        assert 1.0 <= body["age_s"] < 60


def test_a_user_without_state_gets_the_popular_items(
    workers: dict[str, FakeWorker], contract: Contract
) -> None:
    a = workers["a"]
    user = user_in(0)
    status, body = get(a.url + lookup_path(user))
    assert status == 200 and body["items"] == [] and body["source"] == LookupSource.POPULAR
    a.popularity.add(["5", "5", "6", "7", "5"], now=10.0)
    status, body = get(workers["b"].url + lookup_path(user))  # through b to a
    assert status == 200, body
    contract("user-recommendations", body)
    assert body["source"] == LookupSource.POPULAR and body["worker_id"] == "a"
    assert body["items"] == ["5", "6"] and body["scores"] == pytest.approx([0.6, 0.2])
    assert body["click"] is None and body["model_version"] == 3


def test_what_cannot_be_answered_is_refused_with_a_reason(
    workers: dict[str, FakeWorker], tmp_path: Path
) -> None:
    a, b = workers["a"], workers["b"]
    assert get(a.url + lookup_path(user_in(0)), token=None)[0] == 401
    assert get(a.url + lookup_path(user_in(0)), token="wrong")[0] == 401
    status, body = get(a.url + "/users/%01/recommendations")
    assert status == 400 and "non-printable" in body["error"]
    # a forwarded request is answered by its receiver or refused, never forwarded again
    status, body = get(b.url + lookup_path(user_in(0)), **{FORWARDED_HEADER: "1"})
    assert status == 503 and "not on this worker" in body["error"]
    # a store asked for a partition it has not restored
    status = a.local()(LookupRequest(user_in(1), 1, forwarded=False)).status
    assert status == 503
    # during a rebalance, before the routes are handed over
    router = LookupRouter(a.local(), a.url, timeout_s=1.0, token=TOKEN)
    answer = router(LookupRequest(user_in(0), None, forwarded=False))
    assert answer.status == 503 and b"rebalancing" in answer.body
    # an owner that does not answer
    router.routes = Routes(PARTITIONS, frozenset({0}), {1: f"http://127.0.0.1:{free_port()}"})
    answer = router(LookupRequest(user_in(1), None, forwarded=False))
    assert answer.status == 503 and b"did not answer" in answer.body
    # a partition no worker holds yet
    router.routes = Routes(PARTITIONS, frozenset({0}), {})
    answer = router(LookupRequest(user_in(1), None, forwarded=False))
    assert answer.status == 503 and b"no owner yet" in answer.body


def test_a_lookup_that_breaks_is_answered_503_not_a_500_page() -> None:
    def broken(request: LookupRequest) -> Any:
        raise RuntimeError("the store is closing")

    port = free_port()
    router = LookupRouter(broken, f"http://127.0.0.1:{port}", timeout_s=1.0, token=None)
    router.routes = Routes(1, frozenset({0}), {})
    lookup_server.serve(MetricsSettings(host="127.0.0.1"), port, router)
    status, body = get(f"http://127.0.0.1:{port}{lookup_path('u1')}", token=None)
    assert status == 503 and "the store is closing" in body["error"]
    assert get(f"http://127.0.0.1:{port}/metrics", token=None)[0] == 404  # lookups only
    assert lookup_server.serve(MetricsSettings(host="127.0.0.1"), port, router) is None  # busy


def test_one_connection_carries_many_lookups(workers: dict[str, FakeWorker]) -> None:
    """Keep-alive: a client that keeps its connection pays no handshake per lookup."""
    a = workers["a"]
    user = user_in(0)
    a.store.commit({}, {(0, user): recommendation(user, 0).to_bytes()}, {0: 41}, {0: 0})
    connection = http.client.HTTPConnection("127.0.0.1", int(a.url.rsplit(":", 1)[1]), timeout=5)
    for _ in range(3):
        connection.request("GET", lookup_path(user), headers={"Authorization": f"Bearer {TOKEN}"})
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read())["items"] == ["7", "9"]
    sock = connection.sock
    connection.request("GET", lookup_path(user), headers={"Authorization": f"Bearer {TOKEN}"})
    connection.getresponse().read()
    assert connection.sock is sock  # the same socket throughout: never closed by the server
    connection.close()
