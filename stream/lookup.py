"""``GET /users/{user_id}/recommendations``: one user's latest recommendations, on request.

Like faust's table views and Kafka Streams' interactive queries, every worker answers for every
user, and the answer comes from the one worker that owns the user's state. Lookups are served by
the worker's batch process, which holds the state, on ``worker.lookup_port`` (one hop: the
faust process, busy with the click loop, is not in the way):

- the user's partition is the one their clicks are keyed to: librdkafka's default partitioner
  (``consistent_random``: CRC-32 of the key modulo the partition count), which every glintstream
  producer and every confluent-kafka/librdkafka client uses by default. Producers with another
  partitioner (Java's murmur2) put users elsewhere; their lookups then find no state;
- a partition this worker holds is answered from its store (``LocalLookup``): the last
  recommendation published for the user (``stream.state``), or, for a user it holds no state
  for, the items clicked most of late (``stream.popularity``);
- any other partition is forwarded once to its owner: after every rebalance the worker hands
  its batch process the ``Routes`` faust spread with the group assignment (each worker
  advertises ``worker.advertised_url``). A forwarded request is never forwarded again, so two
  workers with different views of a rebalance answer 503 instead of bouncing it between them.

Answers are ``UserRecommendations`` (``stream.messages``, schema in deploy/schemas/) with 200;
errors are ``{"error": ...}`` with 400 (not a user id), 503 (partition not ready or owned by
nobody yet, owner unreachable) and the owner's own status when forwarded.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stream.clicks import user_id_problem
from stream.messages import (
    LOOKUP_PATH,
    LookupSource,
    Recommendation,
    UserRecommendations,
)
from stream.settings import Settings

if TYPE_CHECKING:  # the worker's own process answers through its batch process: no store here
    from stream.popularity import Popularity
    from stream.state import StateStore

FORWARDED_HEADER = "X-Glintstream-Forwarded"
ANY_HOST = ("0.0.0.0", "::", "")  # bound to every interface: advertise the host's name
# the raw path with the (percent-encoded) user id captured: greedy, so an id whose "/" a client
# left unencoded still ends before the final "/recommendations"
_PATH = re.compile("^" + re.escape(LOOKUP_PATH).replace(re.escape("{user_id}"), "(.+)") + "$")


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes  # JSON

    @staticmethod
    def error(status: int, message: str) -> Answer:
        return Answer(status, json.dumps({"error": message}).encode())


@dataclass(frozen=True, slots=True)
class Forward:
    """A lookup the owner of the user's partition must answer: GET ``url`` there."""

    url: str


@dataclass(frozen=True, slots=True)
class LookupRequest:
    user_id: str
    partition: int | None  # the user's partition, once the router has worked it out
    forwarded: bool  # came from another worker: answer here or fail, never forward again


Lookup = Callable[[LookupRequest], Answer]


def match(raw_path: str) -> str | None:
    """The user id of a lookup path as sent (percent-encoded, maybe with a query), or None."""
    found = _PATH.match(raw_path.split("?", 1)[0])
    if found is None:
        return None
    return urllib.parse.unquote(found.group(1), errors="replace")


def lookup_path(user_id: str) -> str:
    return LOOKUP_PATH.format(user_id=urllib.parse.quote(user_id, safe=""))


def advertised_url(settings: Settings) -> str:
    """Where the other workers reach this one's lookups."""
    host = settings.metrics.host
    if settings.worker.advertised_url:
        return settings.worker.advertised_url
    return f"http://{socket.getfqdn() if host in ANY_HOST else host}:{settings.worker.lookup_port}"


def partition_for(user_id: str, partitions: int) -> int:
    """The partition librdkafka's default partitioner sends the user's clicks to."""
    return zlib.crc32(user_id.encode()) % partitions


class LocalLookup:
    """Answers for the partitions of this worker, from its store (the batch process)."""

    def __init__(
        self,
        store: StateStore,
        popularity: Popularity,
        prepared: Callable[[], frozenset[int]],
        model_version: Callable[[], int],
        worker_id: str,
        top_k: int,
    ) -> None:
        self._store = store
        self._popularity = popularity
        self._prepared = prepared
        self._model_version = model_version
        self._worker_id = worker_id
        self._top_k = top_k

    def __call__(self, request: LookupRequest) -> Answer:
        partition = request.partition
        if partition is None or partition not in self._prepared():
            return Answer.error(503, f"partition {partition} is not restored on this worker")
        raw = self._store.latest(partition, request.user_id)
        now = time.time()
        if raw is not None:
            recommendation = Recommendation.model_validate_json(raw)
            answer = UserRecommendations.from_recommendation(recommendation, self._worker_id, now)
        else:
            popular = self._popularity.top(self._top_k)
            answer = UserRecommendations(
                user_id=request.user_id,
                source=LookupSource.POPULAR,
                items=[item for item, _ in popular],
                scores=[share for _, share in popular],
                model_version=self._model_version(),
                click=None,
                click_ts=None,
                published_ts=None,
                age_s=None,
                worker_id=self._worker_id,
            )
        return Answer(200, answer.to_bytes())


@dataclass(frozen=True, slots=True)
class Routes:
    """Who holds what, as of the last rebalance (the worker hands it over after each one)."""

    partitions: int  # of the clicks topic
    assigned: frozenset[int]  # this worker's
    owners: Mapping[int, str]  # partition -> advertised URL of the worker that holds it


class LookupRouter:
    """Answers on the worker's lookup port, in its batch process: its own partitions from its
    store, the others forwarded to their owners."""

    def __init__(self, local: Lookup, own_url: str, timeout_s: float, token: str | None) -> None:
        self._local = local
        self._own_url = own_url.rstrip("/")
        self._timeout_s = timeout_s
        self._token = token
        self.routes: Routes | None = None  # replaced whole: read by the server's thread

    def __call__(self, request: LookupRequest) -> Answer:
        """The answer, forwarded to the owner and waited for where needed."""
        decision = self.route(request)
        return decision if isinstance(decision, Answer) else self.forward(decision)

    def route(self, request: LookupRequest) -> Answer | Forward:
        """The answer from here, or where to forward the request; never waits on the network."""
        problem = user_id_problem(request.user_id)
        if problem is not None:
            return Answer.error(400, problem)
        routes = self.routes
        if routes is None:
            return Answer.error(503, "this worker holds no partitions yet (rebalancing)")
        partition = partition_for(request.user_id, routes.partitions)
        if partition in routes.assigned:
            return self._local(LookupRequest(request.user_id, partition, request.forwarded))
        if request.forwarded:
            return Answer.error(503, f"partition {partition} is not on this worker (rebalancing)")
        owner = routes.owners.get(partition, "").rstrip("/")
        if not owner or owner == self._own_url:
            return Answer.error(503, f"partition {partition} has no owner yet (rebalancing)")
        return Forward(owner + lookup_path(request.user_id))

    def forward(self, where: Forward) -> Answer:
        """The owner's answer (blocks for up to the forward timeout)."""
        return http_get(where.url, self._token, self._timeout_s, {FORWARDED_HEADER: "1"})


def http_get(
    url: str, token: str | None, timeout_s: float, headers: Mapping[str, str] | None = None
) -> Answer:
    """GET a JSON answer; the other side's error status as it is, no answer as a 503."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=sent), timeout=timeout_s
        ) as response:
            return Answer(response.status, response.read())
    except urllib.error.HTTPError as e:
        return Answer(e.code, e.read())
    except OSError as e:
        return Answer.error(503, f"{url.split('/users/')[0]} did not answer: {e}")
