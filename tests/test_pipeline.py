"""The batch pipeline with fakes for Kafka: a recording publisher and a changelog reader with
nothing to read. RocksDB and the model are real (a tiny GLINT-RU on a temp directory)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from conftest import Contract
from test_worker import make_checkpoint

from model.registry import Registry
from stream import metrics
from stream.messages import DLQ_REASON_HEADER, DeadLetter, Recommendation, RejectReason
from stream.model_source import ModelSource
from stream.pipeline import BatchPipeline, RawClick
from stream.publisher import DeliveryError
from stream.settings import Settings, load_settings
from stream.state import APPLIED_KEY, PartitionStore, StateStore
from stream.user_record import UserRecord

VOCAB = ["<pad>"] + [f"i{i}" for i in range(1, 21)]
P = 0  # the partition the clicks are on


class FakePublisher:
    """Records what is sent; ``wait`` acks it all (or fails the next ``fail`` waits)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, int | None, list | None]] = []
        self.pending: list[tuple[str, int | None]] = []
        self.offsets: dict[tuple[str, int], int] = {}
        self.fail = 0
        self.resets = 0

    def send(self, topic, key, value, partition=None, headers=None):  # type: ignore[no-untyped-def]
        self.sent.append((topic, key, value, partition, headers))
        self.pending.append((topic, partition))

    def wait(self) -> dict[tuple[str, int], int]:
        if self.fail:
            self.fail -= 1
            self.pending.clear()
            raise DeliveryError("the broker did not ack")
        acked: dict[tuple[str, int], int] = {}
        for topic, partition in self.pending:
            tp = (topic, partition or 0)
            self.offsets[tp] = self.offsets.get(tp, -1) + 1
            acked[tp] = self.offsets[tp]
        self.pending.clear()
        return acked

    def reset(self) -> None:
        self.resets += 1

    def close(self) -> None:
        pass

    def values(self, topic: str) -> list[bytes]:
        return [v for t, _, v, _, _ in self.sent if t == topic]


class NoChangelog:
    """A changelog reader for partitions whose changelog is empty."""

    def catch_up(self, stores: list[PartitionStore]) -> int:
        return 0


def click(user: str, item: str, ts: float = 1.0, **more: object) -> bytes:
    return json.dumps({"user_id": user, "item_id": item, "ts": ts, **more}).encode()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    make_checkpoint(tmp_path / "checkpoint", VOCAB, seed=0)
    return load_settings(
        state_dir=tmp_path / "state",
        registry_dir=tmp_path / "registry",
        checkpoint_dir=tmp_path / "checkpoint",
        top_k=5,
        device="cpu",
        worker_delivery_attempts=3,
        worker_delivery_backoff_max_s=0.001,
    )


class FakeAnnouncements:
    """`model-updates` as the pipeline reads it: the last announced version."""

    def __init__(self) -> None:
        self.version: int | None = None

    def latest_version(self) -> int | None:
        return self.version

    def close(self) -> None:
        pass


def pipeline(
    settings: Settings, publisher: FakePublisher, announcements: FakeAnnouncements | None = None
) -> BatchPipeline:
    p = BatchPipeline(
        settings,
        StateStore(settings.paths.state_dir, settings.rocksdb),
        publisher,  # type: ignore[arg-type]
        NoChangelog(),  # type: ignore[arg-type]
        ModelSource.from_settings(settings, "test"),
        announcements,
    )
    p.prepare({P})
    return p


def test_a_batch_publishes_then_sends_the_changelog_then_commits(
    settings: Settings, contract: Contract
) -> None:
    publisher = FakePublisher()
    p = pipeline(settings, publisher)
    batch = [RawClick(P, o, b"u1", click("u1", f"i{o + 1}")) for o in range(3)]
    batch.append(RawClick(P, 3, b"u2", click("u2", "i9", event_id=77)))
    assert p.process(batch, {P}) == {}

    for value in publisher.values("recommendations"):
        contract("recommendation", value)
    recs = [Recommendation.model_validate_json(v) for v in publisher.values("recommendations")]
    assert [r.event_id for r in recs] == [None, None, None, "77"]  # echoed, as parsed
    assert [(r.user_id, r.click.offset) for r in recs] == [
        ("u1", 0),
        ("u1", 1),
        ("u1", 2),
        ("u2", 3),
    ]
    assert all(len(r.items) == 5 and r.model_version == 0 for r in recs)
    topics = [t for t, *_ in publisher.sent]
    # the outputs first, the changelog (records, then the applied offset) last
    assert topics.index(settings.topics.state_changelog) > max(
        i for i, t in enumerate(topics) if t == "recommendations"
    )
    changelog = [(k, v) for t, k, v, _, _ in publisher.sent if t == settings.topics.state_changelog]
    assert changelog[-1] == (APPLIED_KEY, b"3")
    stored = p.store.get(P, "u1")
    assert stored is not None and stored.n == 3 and stored.offset == 2
    assert stored.ring == ["i1", "i2", "i3"]  # item ids, not indices
    assert p.store.partition(P).applied_offset == 3 and p.applied_offsets() == {P: 3}


def test_bad_clicks_and_unknown_items_are_dead_lettered_and_change_nothing(
    settings: Settings, contract: Contract
) -> None:
    publisher = FakePublisher()
    p = pipeline(settings, publisher)
    p.process(
        [RawClick(P, 0, b"u1", b"{not json"), RawClick(P, 1, b"u1", click("u1", "nope"))], {P}
    )
    for value in publisher.values("clicks-dlq"):
        contract("dead-letter", value)
    letters = [DeadLetter.model_validate_json(v) for v in publisher.values("clicks-dlq")]
    assert [d.reason for d in letters] == [RejectReason.INVALID_JSON, RejectReason.UNKNOWN_ITEM]
    assert base64.b64decode(letters[0].value_b64 or "") == b"{not json"
    headers = [h for t, _, _, _, h in publisher.sent if t == "clicks-dlq"]
    assert headers[1] == [(DLQ_REASON_HEADER, b"unknown_item")]
    assert publisher.values("recommendations") == [] and p.store.get(P, "u1") is None
    assert p.store.partition(P).applied_offset == 1  # applied: never read again


def test_redelivered_offsets_are_skipped_and_a_gap_is_read_again(settings: Settings) -> None:
    publisher = FakePublisher()
    p = pipeline(settings, publisher)
    p.process([RawClick(P, 0, b"u1", click("u1", "i1"))], {P})
    seeks = p.process(
        [RawClick(P, 0, b"u1", click("u1", "i1")), RawClick(P, 5, b"u1", click("u1", "i2"))], {P}
    )
    assert seeks == {P: 1}  # offsets 1..4 were never delivered: read them again
    assert len(publisher.values("recommendations")) == 1
    # a partition this worker no longer holds is not applied at all
    p.process([RawClick(7, 0, b"u9", click("u9", "i1"))], {P})
    assert len(publisher.values("recommendations")) == 1


def test_an_unacked_batch_is_retried_and_committed_once(settings: Settings) -> None:
    publisher = FakePublisher()
    p = pipeline(settings, publisher)
    before = metrics.RECOMMENDATIONS._value.get()
    publisher.fail = 2  # two attempts fail, the third is acked
    p.process([RawClick(P, 0, b"u1", click("u1", "i1")), RawClick(P, 1, b"u1", b"junk")], {P})
    assert publisher.resets == 2
    # the same content was sent three times (consumers may see repeats), counted once
    assert len(publisher.values("recommendations")) == 3
    assert metrics.RECOMMENDATIONS._value.get() - before == 1
    stored = p.store.get(P, "u1")
    assert stored is not None and stored.n == 1
    publisher.fail = 3  # every attempt fails: the batch is given up, nothing stored
    with pytest.raises(DeliveryError):
        p.process([RawClick(P, 2, b"u1", click("u1", "i2"))], {P})
    stored = p.store.get(P, "u1")
    assert stored is not None and stored.n == 1 and p.store.partition(P).applied_offset == 1


def test_the_announced_version_is_swapped_in_and_a_broken_one_is_counted_and_skipped(
    settings: Settings, tmp_path: Path
) -> None:
    publisher, announcements = FakePublisher(), FakeAnnouncements()
    p = pipeline(settings, publisher, announcements)
    registry = Registry(settings.paths.registry_dir)
    for seed in (1, 2, 3):
        make_checkpoint(tmp_path / f"v{seed}", VOCAB, seed=seed)
    registry.publish(tmp_path / "v1")
    p.refresh_model()
    assert p.scorer.version == 1  # none announced yet: the store's current version
    registry.publish(tmp_path / "v2")
    announcements.version = 1  # announced before v2 was: the announcement wins
    p.refresh_model()
    assert p.scorer.version == 1
    broken = registry.publish(tmp_path / "v3")
    (broken.path / "model.safetensors").write_bytes(b"not weights")
    announcements.version = 3
    failures = metrics.MODEL_LOAD_FAILURES._value.get()
    p.refresh_model()
    p.refresh_model()  # logged and counted once per version
    assert p.scorer.version == 1
    assert metrics.MODEL_LOAD_FAILURES._value.get() - failures == 1
    p.process([RawClick(P, 0, b"u1", click("u1", "i3"))], {P})
    rec = Recommendation.model_validate_json(publisher.values("recommendations")[-1])
    assert rec.model_version == 1


def test_records_store_the_vector_only_where_the_model_needs_it(settings: Settings) -> None:
    """The faithful model's state is a function of its ring: the changelog leaves it out."""
    publisher = FakePublisher()
    p = pipeline(settings, publisher)
    p.process([RawClick(P, 0, b"u1", click("u1", "i1"))], {P})
    [(_, value)] = [
        (k, v)
        for t, k, v, _, _ in publisher.sent
        if t == settings.topics.state_changelog and k == b"u1"
    ]
    assert UserRecord.decode(value).vec is None
    local = p.store.get(P, "u1")
    assert local is not None and local.vec is not None  # the local record keeps it
