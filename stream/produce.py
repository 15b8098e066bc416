"""Replay a dataset's clicks to the `clicks` topic, in global time order, at a given rate.

``click_order`` is the pure part (which clicks, in which order); ``produce_clicks`` sends them
with confluent-kafka and checks every delivery report. Messages are keyed by user id, so a
user's clicks land on one partition, in order (the producer is idempotent, so retries cannot
reorder them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from stream.clicks import Click
from stream.settings import Settings

if TYPE_CHECKING:  # the loaders import torch: not at `glintstream --help`
    from model.data import SequenceData
    from stream.framing import Framing

log = logging.getLogger(__name__)

# The embedded broker's Fetch cost grows with the record batches a partition holds (README,
# "Embedded broker"); a replay that batches a second of clicks writes one batch per partition
# per second, so it can run for hours. A replay is not latency-bound: the wait is harmless.
PRODUCE_LINGER_MS = 1000
PROGRESS_EVERY = 512  # clicks between progress-bar updates


def select_users(
    data: SequenceData, users: int | None = None, user_ids: list[str] | None = None
) -> np.ndarray:
    """Indices of the chosen users: the first `users`, or the named ones (all by default)."""
    if user_ids is not None:
        index = {u: i for i, u in enumerate(data.users)}
        unknown = [u for u in user_ids if u not in index]
        if unknown:
            raise ValueError(f"unknown user ids in {data.name}: {', '.join(unknown[:10])}")
        return np.array(sorted({index[u] for u in user_ids}), dtype=np.int64)
    n = len(data.users) if users is None else min(users, len(data.users))
    return np.arange(n, dtype=np.int64)


def click_order(
    data: SequenceData,
    users: int | None = None,
    user_ids: list[str] | None = None,
    skip_last: int = 0,
    limit: int | None = None,
) -> np.ndarray:
    """(n, 2) int64 rows of (user index, position) in replay order.

    With timestamps: global time order, ties kept in (user, position) order by a stable sort.
    Without: round-robin over users by position. Each user's own order is always preserved;
    `skip_last` holds back each user's last clicks (e.g. the evaluation targets).
    """
    if skip_last < 0:
        raise ValueError(f"skip_last must be >= 0, got {skip_last}")
    chosen = select_users(data, users, user_ids)
    lengths = np.array([max(len(data.sequences[u]) - skip_last, 0) for u in chosen], np.int64)
    user_col = np.repeat(chosen, lengths)
    # position within the user: 0..len-1 for each user, built without a Python loop per click
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    pos_col = np.arange(len(user_col), dtype=np.int64) - starts
    if data.timestamps is not None and len(user_col):
        # running max: a user whose stamps go backwards still replays in its sequence order
        stamps = [np.maximum.accumulate(data.timestamps[u][:n]) for u, n in zip(chosen, lengths)]
        key = np.concatenate(stamps).astype(np.float64)
    else:
        # round-robin: every user's first click, then every user's second click, ...
        key = pos_col.astype(np.float64)
    order = np.argsort(key, kind="stable")
    rows = np.stack([user_col[order], pos_col[order]], axis=1)
    return rows if limit is None else rows[:limit]


def iter_clicks(data: SequenceData, order: np.ndarray) -> Iterator[Click]:
    """The Click for each (user index, position) row; stamps are send time if the data has none."""
    for user, pos in order.tolist():  # tolist: Python ints are much faster to index with
        uid = data.users[user]
        item = data.vocab[data.sequences[user][pos]]
        ts = float(data.timestamps[user][pos]) if data.timestamps is not None else time.time()
        yield Click(uid, item, ts, f"{uid}:{pos}")


class Pacer:
    """Hold a steady rate: click i is due at start + i/rate, a token bucket in disguise.

    Sleeping per message would drift (each sleep overshoots by tens of microseconds, a lot at
    5,000/s), so due times are absolute and an overshoot is made up by the next messages. At
    most `burst_s` of unused time is banked, so a stall is not followed by a flood.
    """

    def __init__(self, rate: float, burst_s: float = 0.05) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.burst_s = burst_s
        self.due = time.monotonic()

    def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        self.due = max(self.due, now - self.burst_s)
        if self.due > now + 0.0005:  # sub-ms sleeps cost more than they save
            time.sleep(self.due - now)
        self.due += self.interval


@dataclass
class ProduceReport:
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    seconds: float = 0.0
    first_error: str | None = None
    interrupted: bool = False  # Ctrl-C: stopped sending, still flushed what was sent

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


def producer_config(settings: Settings, linger_ms: int = PRODUCE_LINGER_MS) -> dict[str, Any]:
    return {
        **settings.kafka.confluent_config(),
        "acks": "all",
        "enable.idempotence": True,  # retries keep per-partition order (librdkafka + Tansu: ok)
        "linger.ms": linger_ms,
        "queue.buffering.max.messages": 200_000,
    }


def produce_clicks(
    settings: Settings,
    clicks: Iterator[Click],
    *,
    topic: str | None = None,
    rate: float = 0.0,
    total: int | None = None,
    progress: bool = True,
    flush_timeout: float = 60.0,
    linger_ms: int = PRODUCE_LINGER_MS,
) -> ProduceReport:
    """Send clicks keyed by user id; count delivery failures (undelivered at the end = failed)."""
    from confluent_kafka import Producer

    from stream.framing import Framing
    from stream.topics import ensure_topics

    topic = topic or settings.topics.clicks
    ensure_topics(settings, [topic], settings.topics.partitions)
    report = ProduceReport()
    producer = Producer(producer_config(settings, linger_ms))
    start = time.monotonic()
    try:
        frame = Framing(settings)
        _send(producer, topic, clicks, Pacer(rate), report, total, progress, frame)
    except KeyboardInterrupt:
        report.interrupted = True
        log.warning("interrupted: flushing the %d clicks sent so far", report.sent)
    left = producer.flush(flush_timeout)
    report.seconds = time.monotonic() - start
    if left:  # never acknowledged: as good as lost
        report.failed += left
        report.first_error = report.first_error or f"{left} messages not delivered in time"
    log.info(
        "sent %d clicks to %s in %.1f s (%.0f/s): %d delivered, %d failed",
        *(report.sent, topic, report.seconds, report.rate, report.delivered, report.failed),
    )
    return report


def _send(
    producer: Any,
    topic: str,
    clicks: Iterator[Click],
    pacer: Pacer,
    report: ProduceReport,
    total: int | None,
    progress: bool,
    frame: Framing,
) -> None:
    from tqdm import tqdm

    def on_delivery(err: Any, msg: Any) -> None:
        if err is None:
            report.delivered += 1
        else:
            report.failed += 1
            report.first_error = report.first_error or str(err)

    bar = tqdm(total=total, unit="click", disable=not progress, smoothing=0.1)
    try:
        for click in clicks:
            pacer.wait()
            value, key = frame(topic, click.to_json(), "click"), click.user_id.encode()
            while True:
                try:
                    producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                    break
                except BufferError:  # local queue full: let deliveries drain it
                    producer.poll(0.05)
            producer.poll(0)  # serve delivery callbacks
            report.sent += 1
            if report.sent % PROGRESS_EVERY == 0:  # tqdm per message costs more than producing
                bar.update(PROGRESS_EVERY)
                bar.set_postfix(delivered=report.delivered, failed=report.failed, refresh=False)
    finally:
        bar.update(report.sent % PROGRESS_EVERY)
        bar.close()
