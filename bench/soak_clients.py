"""The soak's independent clients, each its own process, as a user's applications would be.

    python -m bench.soak_clients produce BOOTSTRAP TOPIC CLICKS_TSV RATE SECONDS ACKS_CSV
    python -m bench.soak_clients read BOOTSTRAP TOPIC FETCH_WAIT_MS RECS_CSV
    python -m bench.soak_clients lookup WORKER_URL CLICKS_TSV RATE INTERVAL_MS LOOKUPS_CSV
    python -m bench.soak_clients floor PORT

Nothing here imports glintstream: the producer is a plain confluent-kafka ``Producer`` with its
default settings, one ``produce`` per click at a fixed rate, the reader a plain ``Consumer`` of
the recommendations, and the lookup client a plain HTTP client asking the worker for one user's
latest recommendations every INTERVAL_MS (``GET /users/{id}/recommendations``), a user drawn
from those the producer has sent clicks of by then (it paces itself on RATE). Like a service
calling the worker through a connection pool, it keeps one HTTP/1.1 connection open and opens a
new one only after a failure (a restarted worker); the time of that reconnect counts. The
producer stamps each click's ``ts`` with the moment of its ``produce`` call, which the worker
echoes as ``click_ts``, so the reader measures click -> recommendation latency on this host's
clock without joining anything. Both append CSV rows as they go (flushed every second) and stop
cleanly on SIGTERM.

The floor is the lookups' yardstick: an HTTP server in a process of its own that answers every
GET at once with a fixed body of a lookup answer's size, on the same HTTP stack as the worker's
(aiohttp). A second lookup client asks it as often as the first asks the worker, under the same
load, so what it measures is the machine's share of a lookup's latency: scheduling, loopback,
the client, with no store, no model and no GIL shared with a busy thread.
"""

from __future__ import annotations

import asyncio
import bisect
import csv
import http.client
import json
import random
import signal
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

FLUSH_S = 1.0
ACK_FIELDS = ("seq", "partition", "offset", "produced", "error")
REC_FIELDS = ("partition", "offset", "click_ts", "published_ts", "received", "model_version")
LOOKUP_FIELDS = ("time", "ms", "status", "user_state")  # user_state: 1 = the user's own answer
LOOKUP_TIMEOUT_S = 5.0


class _Stop:
    """Set by SIGTERM/SIGINT: finish the current step and exit cleanly."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._set)

    def _set(self, signum: int, frame: Any) -> None:
        self.requested = True


def produce(
    bootstrap: str, topic: str, clicks: Path, rate: float, seconds: float, out: Path
) -> int:
    stop = _Stop()
    pairs = [line.split("\t") for line in clicks.read_text().splitlines()]
    producer = Producer({"bootstrap.servers": bootstrap})  # the client's defaults, on purpose
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(ACK_FIELDS)
        produced: dict[int, float] = {}

        def on_delivery(seq: int) -> Callable[[Any, Any], None]:
            def report(err: Any, msg: Any) -> None:
                sent = produced.pop(seq)
                if err is not None:
                    writer.writerow((seq, -1, -1, f"{sent:.6f}", str(err)))
                else:
                    writer.writerow((seq, msg.partition(), msg.offset(), f"{sent:.6f}", ""))

            return report

        start = time.monotonic()
        last_flush = start
        seq, total = 0, int(rate * seconds)
        while not stop.requested and seq < total:
            due = start + seq / rate
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            user, item = pairs[seq % len(pairs)]
            lap = seq // len(pairs)  # past the end of the data: the same clicks, new users
            user_id = user if lap == 0 else f"{user}~{lap}"
            now = time.time()
            value = json.dumps({"user_id": user_id, "item_id": item, "ts": now})
            produced[seq] = now
            while True:
                try:
                    producer.produce(
                        topic,
                        value.encode(),
                        user_id.encode(),
                        on_delivery=on_delivery(seq),
                    )
                    break
                except BufferError:  # the client's own queue is full: serve callbacks
                    producer.poll(0.05)
            producer.poll(0)
            seq += 1
            if time.monotonic() - last_flush > FLUSH_S:
                f.flush()
                last_flush = time.monotonic()
        left = producer.flush(30)
        for pending in sorted(produced):
            writer.writerow((pending, -1, -1, f"{produced[pending]:.6f}", "not acked"))
    print(f"produced {seq} clicks, {left} not acked", file=sys.stderr)
    return 0


def read(bootstrap: str, topic: str, fetch_wait_ms: int, out: Path) -> int:
    stop = _Stop()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "soak-reader",  # assigned, not subscribed: nothing is committed
            "enable.auto.commit": False,
            "fetch.wait.max.ms": fetch_wait_ms,
        }
    )
    partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(partitions)])
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(REC_FIELDS)
        last_flush = time.monotonic()
        while not stop.requested:
            for msg in consumer.consume(1000, 0.1):
                if msg.error() is not None:
                    continue
                received = time.time()
                try:
                    rec = json.loads(msg.value() or b"")
                    click = rec["click"]
                    row = (
                        click["partition"],
                        click["offset"],
                        rec["click_ts"],
                        rec["published_ts"],
                    )
                    writer.writerow((*row, received, rec["model_version"]))
                except (ValueError, KeyError, TypeError):
                    writer.writerow((-1, -1, 0, 0, received, -1))  # malformed: counted, not fatal
            if time.monotonic() - last_flush > FLUSH_S:
                f.flush()
                last_flush = time.monotonic()
    consumer.close()
    return 0


def lookup(url: str, clicks: Path, rate: float, interval_s: float, out: Path) -> int:
    stop = _Stop()
    first: dict[str, int] = {}  # user -> the index of their first click
    for i, line in enumerate(clicks.read_text().splitlines()):
        first.setdefault(line.split("\t")[0], i)
    users = sorted(first, key=first.__getitem__)
    firsts = [first[u] for u in users]
    rng = random.Random(0)
    start = time.monotonic()
    where = urllib.parse.urlsplit(url)
    connection: http.client.HTTPConnection | None = None
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(LOOKUP_FIELDS)
        last_flush = start
        while not stop.requested:
            sent = int((time.monotonic() - start) * rate)
            user = users[rng.randrange(max(1, bisect.bisect_left(firsts, sent)))]
            path = f"/users/{urllib.parse.quote(user, safe='')}/recommendations"
            began = time.perf_counter()
            try:
                if connection is None:
                    connection = http.client.HTTPConnection(
                        where.hostname or "", where.port, timeout=LOOKUP_TIMEOUT_S
                    )
                connection.request("GET", path)
                response = connection.getresponse()
                raw = response.read()
                status, body = response.status, json.loads(raw) if response.status == 200 else {}
            except (OSError, http.client.HTTPException, ValueError):
                status, body = 0, {}
                if connection is not None:
                    connection.close()
                connection = None
            ms = 1000 * (time.perf_counter() - began)
            own = int(body.get("source") == "user")
            writer.writerow((f"{time.time():.6f}", f"{ms:.3f}", status, own))
            if time.monotonic() - last_flush > FLUSH_S:
                f.flush()
                last_flush = time.monotonic()
            time.sleep(max(0.0, interval_s - ms / 1000))
    return 0


FLOOR_BODY = json.dumps(
    {"source": "floor", "items": [str(i) for i in range(10)], "scores": [1.0] * 10}
).encode()


def floor(port: int) -> int:
    from aiohttp import web  # only this command needs it

    async def answer(request: web.BaseRequest) -> web.Response:
        return web.Response(body=FLOOR_BODY, content_type="application/json")

    async def serve() -> None:
        stop = _Stop()
        loop = asyncio.get_running_loop()
        await loop.create_server(web.Server(answer, access_log=None), "127.0.0.1", port)
        while not stop.requested:
            await asyncio.sleep(0.2)

    asyncio.run(serve())
    return 0


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "produce":
        bootstrap, topic, clicks, rate, seconds, out = args
        return produce(bootstrap, topic, Path(clicks), float(rate), float(seconds), Path(out))
    if command == "read":
        bootstrap, topic, wait, out = args
        return read(bootstrap, topic, int(wait), Path(out))
    if command == "lookup":
        url, clicks, rate, interval_ms, out = args
        return lookup(url, Path(clicks), float(rate), float(interval_ms) / 1000, Path(out))
    if command == "floor":
        (port,) = args
        return floor(int(port))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
