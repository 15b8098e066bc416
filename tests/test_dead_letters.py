"""`glintstream dlq show` and `dlq replay` against a real broker (stream/dead_letters.py)."""

from __future__ import annotations

import base64
from collections.abc import Callable

from click.testing import CliRunner
from confluent_kafka import Producer

from stream.cli import main
from stream.messages import ClickRef, DeadLetter, RejectReason
from stream.settings import load_settings
from stream.topics import ensure_topics, read_to_end

ORIGINALS = [
    (b"u1", b'{"user_id": "u1", "item_id": "new-1", "ts": 1}'),
    (b"u2", b'{"user_id": "u2", "item_id": "new-2", "ts": 2}'),
]


def letter(reason: RejectReason, value: bytes | None, offset: int) -> bytes:
    return DeadLetter(
        reason=reason,
        detail="test",
        click=ClickRef(topic="clicks", partition=0, offset=offset),
        value_b64=None if value is None else base64.b64encode(value).decode(),
        worker_id="w1",
        ts=1.0,
    ).to_bytes()


def test_show_counts_by_reason_and_replay_sends_the_original_clicks_again(
    bootstrap_servers: str, unique_name: Callable[[str], str]
) -> None:
    dlq, clicks = unique_name("dlq"), unique_name("clicks")
    settings = load_settings(
        kafka_bootstrap_servers=bootstrap_servers, topic_dlq=dlq, topic_clicks=clicks
    )
    ensure_topics(settings, [dlq, clicks], 2)
    producer = Producer(settings.kafka.confluent_config())
    records = [
        (key, letter(RejectReason.UNKNOWN_ITEM, value, i))
        for i, (key, value) in enumerate(ORIGINALS)
    ]
    records.append((b"u3", letter(RejectReason.UNKNOWN_ITEM, None, 7)))  # a tombstone
    records.append((b"u4", letter(RejectReason.INVALID_JSON, b"{oops", 8)))
    for key, value in records:
        producer.produce(dlq, key=key, value=value)
    assert producer.flush(30) == 0

    base = ["--bootstrap-servers", bootstrap_servers, "--set", f"topic_dlq={dlq}"]
    base += ["--set", f"topic_clicks={clicks}"]
    runner = CliRunner()
    shown = runner.invoke(main, [*base, "dlq", "show"])
    assert shown.exit_code == 0, shown.output
    assert f"4 dead letters in {dlq} (unknown_item: 3, invalid_json: 1)" in shown.output
    assert shown.output.count("unknown_item  key=") == 3

    replayed = runner.invoke(main, [*base, "dlq", "replay", "--reason", "unknown_item"])
    assert replayed.exit_code == 0, replayed.output
    assert f"replayed 2 of 3 unknown_item dead letters to {clicks}" in replayed.output
    again = {(m.key(), m.value()) for m in read_to_end(settings, clicks, timeout_s=30)}
    assert again == set(ORIGINALS)  # keyed as they were, the original bytes
