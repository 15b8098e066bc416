"""Pretty-print the `recommendations` stream, one line per message, titles for ML-1M.

The consumer assigns itself every partition (no group: nothing to join, nothing committed), so
several tails can run side by side without taking partitions from each other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from model.store import StoreError
from stream.framing import payload
from stream.messages import Recommendation
from stream.model_source import ModelNotFoundError, ModelSource
from stream.settings import Settings

log = logging.getLogger(__name__)

MALFORMED_ERRORS_SHOWN = 3


def _short(raw: bytes | None, n: int = 80) -> str:
    if raw is None:
        return "None"
    return repr(raw[:n]) + ("..." if len(raw) > n else "")


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")[:-3]


def format_recommendation(
    value: bytes | None,
    key: bytes | None = None,
    where: str = "",
    titles: dict[str, str] | None = None,
    top: int = 5,
) -> str:
    """One line for one `recommendations` message; anything that is not a ``Recommendation``
    becomes a MALFORMED line naming what is wrong, and never raises.

    `where` names the message (e.g. "p2@117"); `titles` maps external item id -> title.
    """
    titles = titles or {}
    try:
        rec = Recommendation.model_validate_json(b"null" if value is None else payload(value))
    except ValidationError as e:  # malformed input of any shape: report it, keep tailing
        errors = e.errors()
        reason = "; ".join(
            f"{'.'.join(str(part) for part in err['loc']) or 'message'}: {err['msg']}"
            for err in errors[:MALFORMED_ERRORS_SHOWN]
        )
        more = (
            f" (+{len(errors) - MALFORMED_ERRORS_SHOWN} more)"
            if len(errors) > MALFORMED_ERRORS_SHOWN
            else ""
        )
        head = f"MALFORMED {where}" if where else "MALFORMED"
        return f"{head} key={_short(key, 40)}: {reason}{more}: {_short(value)}"
    shown = [titles.get(i, f"item {i}") for i in rec.items[:top]]
    more = f" (+{len(rec.items) - top})" if len(rec.items) > top else ""
    return (
        f"{_clock(rec.published_ts)}  user {rec.user_id}  model v{rec.model_version}"
        f"  click p{rec.click.partition}@{rec.click.offset}  | {'; '.join(shown)}{more}"
    )


def served_dataset(settings: Settings) -> str | None:
    """The dataset of the model being served, from its manifest (no weights loaded)."""
    try:
        dataset: str = ModelSource.from_settings(settings, "tail").manifest()["dataset"]
    except (ModelNotFoundError, StoreError, OSError, ValueError, KeyError):
        return None
    return dataset


def load_titles(settings: Settings, dataset: str = "auto") -> dict[str, str]:
    """Item titles when the ids are ML-1M's ("auto": if the served model is an ML-1M one)."""
    from model.data import DatasetNotFoundError, ml1m_titles

    if dataset == "auto":
        dataset = served_dataset(settings) or "none"
    if dataset != "ml-1m":
        return {}
    try:
        return ml1m_titles(settings.paths.data_dir)
    except DatasetNotFoundError as e:
        log.warning("no titles: %s", e)
        return {}


class TailError(RuntimeError):
    """The topic does not exist, or the reader stalled: one line, for the CLI to print."""


TOPIC_WAIT_S = 30.0  # `make demo` starts the tail with the worker, which creates the topic
STALL_CHECK_S = 1.0


def _partitions(consumer: Any, topic: str, servers: str) -> list[int]:
    """The topic's partitions, waiting a while for it to appear; never creates it."""
    deadline = time.monotonic() + TOPIC_WAIT_S
    while True:
        metadata = consumer.list_topics(timeout=10).topics.get(topic)
        if metadata is not None and metadata.error is None and metadata.partitions:
            return sorted(metadata.partitions)
        if time.monotonic() > deadline:
            raise TailError(
                f"topic {topic} does not exist at {servers} after {TOPIC_WAIT_S:.0f} s; "
                "the worker creates it when it starts (`glintstream worker`)"
            )
        time.sleep(1.0)


class StallDetector:
    """Messages the broker holds (the Fetch high watermark) that never arrive: a stall."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._last: dict[int, float] = {}

    def arrived(self, partition: int, now: float) -> None:
        self._last[partition] = now

    def stalled(self, behind: dict[int, int], now: float) -> dict[int, int]:
        """{partition: messages waiting} of those with nothing new for the timeout."""
        out = {}
        for partition, waiting in behind.items():
            last = self._last.setdefault(partition, now)
            if waiting > 0 and now - last >= self.timeout_s:
                out[partition] = waiting
            elif waiting == 0:
                self._last[partition] = now
        return out


@dataclass
class TailOptions:
    """What `glintstream tail` prints, and when it stops."""

    topic: str | None = None  # default: the recommendations topic
    from_beginning: bool = False
    limit: int | None = None  # stop after this many lines
    user: str | None = None  # only this user's messages
    titles: dict[str, str] = field(default_factory=dict)  # external item id -> title
    top: int = 5  # items shown per line
    idle_timeout: float | None = None  # stop after this long without a message
    stall_timeout: float | None = None  # default: the worker's stall timeout


def tail(settings: Settings, options: TailOptions, out: Callable[[str], None] = print) -> int:
    """Print messages until the limit, the idle timeout or Ctrl-C; the number printed.

    Raises ``TailError`` when messages the broker holds do not arrive for the stall timeout.
    """
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

    topic = options.topic or settings.topics.recommendations
    servers = settings.kafka.bootstrap_servers
    conf = {**settings.kafka.confluent_config(), "group.id": "glintstream-tail"}
    conf.update({"enable.auto.commit": False, "enable.partition.eof": False})
    consumer = Consumer(conf)
    try:
        start = OFFSET_BEGINNING if options.from_beginning else OFFSET_END
        assigned = [TopicPartition(topic, p, start) for p in _partitions(consumer, topic, servers)]
        consumer.assign(assigned)
        detector = StallDetector(options.stall_timeout or settings.worker.stall_timeout_s)
        return _print(
            consumer,
            options,
            out,
            lambda now: _check_stall(consumer, assigned, detector, now, topic, servers),
            detector,
        )
    except KeyboardInterrupt:
        return 0
    finally:
        consumer.close()


def _print(
    consumer: Any,
    options: TailOptions,
    out: Callable[[str], None],
    check_stall: Callable[[float], None],
    detector: StallDetector,
) -> int:
    # Tansu's ListOffsets(LATEST) under-reports the log end, so OFFSET_END may replay some
    # older messages: drop those by their timestamp instead.
    not_before_ms = 0 if options.from_beginning else int(time.time() * 1000) - 1000
    printed, last_seen, checked = 0, time.monotonic(), time.monotonic()
    try:
        while options.limit is None or printed < options.limit:
            now = time.monotonic()
            if options.idle_timeout is not None and now - last_seen > options.idle_timeout:
                break
            if now - checked >= STALL_CHECK_S:
                checked = now
                check_stall(now)
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                log.warning("consumer error: %s", msg.error())
                continue
            last_seen = time.monotonic()
            detector.arrived(int(msg.partition() or 0), last_seen)
            if msg.timestamp()[1] < not_before_ms:
                continue
            if options.user is not None and not _is_user(msg.key(), msg.value(), options.user):
                continue
            where = f"p{msg.partition()}@{msg.offset()}"
            out(format_recommendation(msg.value(), msg.key(), where, options.titles, options.top))
            printed += 1
    except KeyboardInterrupt:
        pass
    return printed


def _check_stall(
    consumer: Any,
    assigned: list[Any],
    detector: StallDetector,
    now: float,
    topic: str,
    servers: str,
) -> None:
    behind = {}
    for tp, position in zip(assigned, consumer.position(assigned)):
        # cached: the high watermark of the last Fetch response (ListOffsets is wrong on Tansu)
        _, high = consumer.get_watermark_offsets(tp, cached=True)
        if high >= 0 and position.offset >= 0:
            behind[tp.partition] = max(0, high - position.offset)
    stalled = detector.stalled(behind, now)
    if stalled:
        waiting = ", ".join(f"{topic}[{p}]: {n}" for p, n in sorted(stalled.items()))
        raise TailError(
            f"STALLED: messages wait on the broker at {servers} but none arrives for "
            f"{detector.timeout_s:.0f} s ({waiting}); on the embedded broker a Fetch returns "
            "nothing once a partition holds too many record batches (README, Embedded broker)"
        )


def _is_user(key: bytes | None, value: bytes | None, user: str) -> bool:
    """The message is keyed by the user (recommendations are), or names it in ``user_id``."""
    if key is not None and key.decode(errors="replace") == user:
        return True
    try:
        return Recommendation.model_validate_json(payload(value)).user_id == user
    except ValidationError:
        return False
