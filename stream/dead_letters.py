"""The dead-letter topic for operators: what was rejected and why, and sending it again.

``glintstream dlq show`` counts the records by reason and lists them; ``glintstream dlq replay
--reason R`` produces the original bytes of every record with that reason back to the clicks
topic, keyed as they were, so that once the cause is fixed (a model that knows the items, a
producer that sends seconds) those clicks are applied like new ones. A replay sends every
matching record each time it runs: replaying one reason twice sends its clicks twice.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from stream.messages import DeadLetter, RejectReason
from stream.produce import producer_config
from stream.settings import Settings
from stream.topics import read_messages

READ_TIMEOUT_S = 60.0  # reading the whole topic; what is left after it is reported
FLUSH_TIMEOUT_S = 60.0


class ReplayError(RuntimeError):
    """The broker did not acknowledge every replayed click."""


@dataclass(frozen=True)
class Letter:
    key: bytes | None  # the rejected message's own key
    letter: DeadLetter
    partition: int  # where the dead letter itself is
    offset: int


def read_letters(
    settings: Settings, reason: RejectReason | None = None, timeout_s: float = READ_TIMEOUT_S
) -> Iterator[Letter]:
    """The dead letters from the topic's beginning (with ``reason`` only, when given)."""
    for msg, letter in read_messages(settings, settings.topics.dlq, DeadLetter, timeout_s):
        if reason is None or letter.reason == reason:
            yield Letter(msg.key(), letter, msg.partition() or 0, msg.offset() or 0)


def count_by_reason(letters: Iterable[Letter]) -> Counter[RejectReason]:
    return Counter(letter.letter.reason for letter in letters)


def replay(settings: Settings, letters: Iterable[Letter]) -> int:
    """Produce each letter's original value to the clicks topic; returns how many were sent.
    Tombstones (no value) have nothing to replay and are skipped."""
    from confluent_kafka import Producer

    producer = Producer(producer_config(settings))
    sent, failed = 0, []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            failed.append(err)

    for item in letters:
        if item.letter.value_b64 is None:
            continue
        value = base64.b64decode(item.letter.value_b64)
        while True:
            try:
                producer.produce(
                    settings.topics.clicks, value=value, key=item.key, on_delivery=delivered
                )
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.1)
        producer.poll(0)
        sent += 1
    left = producer.flush(FLUSH_TIMEOUT_S)
    if left or failed:
        raise ReplayError(
            f"{left + len(failed)} of {sent} replayed clicks not acknowledged by "
            f"{settings.kafka.bootstrap_servers} ({failed[0] if failed else 'timed out'})"
        )
    return sent
