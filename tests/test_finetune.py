"""Fine-tune side job: vocabulary growth, fine-tune, holdout figures, the gate, the store, the job
against a real broker and a temp registry, and the `glintstream finetune` process end to end."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.request import urlopen

import numpy as np
import pytest
import torch
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from conftest import Contract

from model.checkpoint import load_checkpoint, save_checkpoint
from model.evaluate import score_fn
from model.finetune import (
    finetune,
    gate,
    grow_vocabulary,
    holdout_metrics,
    item_contexts,
    new_items_in,
    replay_mix,
    split_holdout,
    to_indices,
    weights_finite,
)
from model.glintru import GlintRU, GlintRUConfig, build_glintru
from model.new_items import FRESH_ITEMS, add_fresh, carry_fresh, fresh_items
from model.registry import Registry
from model.weighting import TargetWeighting
from stream.broker import free_port
from stream.finetune import FinetuneJob
from stream.finetune_store import RecentClicks, StoredClick
from stream.messages import RunOutcome
from stream.releases import Releases
from stream.settings import RocksDBSettings, Settings, load_settings
from stream.testkit import GLINTSTREAM, POLL_S, TopicReader, WorkerProcess, private_worker_env

torch.set_num_threads(1)  # the test machine is shared; the job sets its own threads too

NUM_ITEMS = 40
MAX_LEN = 20  # window L; each user has 2 * HALF clicks, so histories cross it
HALF = 20  # clicks per user before the pattern changes
FOLLOW = 0.7  # probability that a click follows the phase's successor map, else a popular item
POPULAR = 8  # items in each phase's popular set
MAPS_SEED = 1234  # both phases' successor maps and popular sets (shared by every stream)
VOCAB = ["<pad>"] + [f"i{i}" for i in range(1, NUM_ITEMS + 1)]
PRETRAIN_STEPS = 100
TUNE_STEPS = 30
LR = 3e-3
BROKEN_LR = 1e3  # the deliberately broken fine-tune
E2E_USERS = 60  # users of the end-to-end stream (2 * HALF clicks each)
E2E_NEW_ITEM_USERS = 20  # of them, users who click a brand-new item
STREAM_TS, AFTER_TS = 1e9, 2e9  # click stamps before and after the new version


# ----------------------------------------------------------------------------- data
def drifting(num_users: int, seed: int) -> list[np.ndarray]:
    """Sequences of 2 * HALF clicks: the successor map and the popular items change half-way."""
    maps = np.random.default_rng(MAPS_SEED)
    successor = [maps.permutation(NUM_ITEMS) + 1 for _ in range(2)]
    popular = [maps.choice(NUM_ITEMS, POPULAR, replace=False) + 1 for _ in range(2)]
    rng = np.random.default_rng(seed)
    sequences = []
    for _ in range(num_users):
        seq = np.empty(2 * HALF, np.int64)
        seq[0] = rng.choice(popular[0])
        for t in range(1, 2 * HALF):
            phase = int(t >= HALF)
            follow = rng.random() < FOLLOW
            seq[t] = successor[phase][seq[t - 1] - 1] if follow else rng.choice(popular[phase])
        sequences.append(seq)
    return sequences


def prefixes(sequences: list[np.ndarray], first_target: int) -> list[np.ndarray]:
    """Every next-click prediction from position ``first_target`` on, as holdout sequences."""
    return [s[: t + 1] for s in sequences for t in range(first_target, len(s))]


def as_ids(seq: np.ndarray) -> list[str]:
    return [VOCAB[i] for i in seq]


@pytest.fixture(scope="module")
def frozen() -> GlintRU:
    """A model trained on the first phase only (the model in production before the drift)."""
    torch.manual_seed(0)
    config = GlintRUConfig(num_items=NUM_ITEMS, hidden_size=32, n_heads=2, max_len=MAX_LEN)
    first_phase = [s[:HALF] for s in drifting(200, seed=0)]
    return finetune(build_glintru(config), first_phase, PRETRAIN_STEPS, LR)


def tiny(variant: str = "faithful", seed: int = 0) -> GlintRU:
    torch.manual_seed(seed)
    config = GlintRUConfig(
        num_items=NUM_ITEMS, hidden_size=16, n_heads=2, max_len=MAX_LEN, variant=variant
    )
    return build_glintru(config).eval()


# ----------------------------------------------------------------------------- pure parts
def test_new_items_in_counts_and_keeps_first_appearance_order() -> None:
    streams = [["i1", "b", "a"], ["a", "b", "c", "i2"]]
    assert new_items_in(VOCAB, streams, min_clicks=1) == ["b", "a", "c"]
    assert new_items_in(VOCAB, streams, min_clicks=2) == ["b", "a"]


@pytest.mark.parametrize("variant", ["faithful", "streaming"])
def test_grow_vocabulary_appends_and_keeps_every_old_index(variant: str) -> None:
    model = tiny(variant)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grown, vocab = grow_vocabulary(model, VOCAB, ["n1", "i3", "n2", "n1"])
    assert vocab == VOCAB + ["n1", "n2"]  # appended once each, known ids ignored
    assert grown.num_items == NUM_ITEMS + 2 and grown.config.num_items == NUM_ITEMS + 2
    table = grown.item_embedding.weight
    assert torch.equal(table[: NUM_ITEMS + 1], before["item_embedding.weight"])
    for name, value in grown.state_dict().items():
        if name != "item_embedding.weight":
            assert torch.equal(value, before[name]), name
    real = before["item_embedding.weight"][1:]
    new_rows = table[NUM_ITEMS + 1 :]
    assert torch.isfinite(new_rows).all() and not torch.equal(new_rows[0], new_rows[1])
    assert (new_rows - real.mean(0)).abs().max() < real.std(0).max()  # near the mean
    # a history of old items gets the same representation: old rings stay valid
    seq, n = torch.tensor([[1, 5, 9, 2]]), torch.tensor([4])
    with torch.no_grad():
        assert torch.allclose(grown(seq, n), model(seq, n), atol=1e-6)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched
    again, same = grow_vocabulary(model, VOCAB, ["i1"])
    assert same == VOCAB and again.num_items == NUM_ITEMS


def test_grown_items_can_be_learned_and_recommended() -> None:
    # A new item that always follows i1: after growth and fine-tuning it is recommended after i1.
    model, vocab = grow_vocabulary(tiny(), VOCAB, ["new"])
    new = len(vocab) - 1
    rng = np.random.default_rng(0)
    seqs = [np.array([*rng.integers(2, NUM_ITEMS, size=3), 1, new]) for _ in range(64)]
    tuned = finetune(model, seqs, steps=60, lr=1e-2)
    with torch.no_grad():
        scores = tuned.logits(tuned(torch.tensor([[7, 1]]), torch.tensor([2])))[0]
    assert int(scores.argmax()) == new


@pytest.mark.parametrize("variant", ["faithful", "streaming"])
def test_a_new_item_starts_where_the_users_who_clicked_it_are(variant: str) -> None:
    # Untrained, a new item starts at the users' representations before its clicks: for such
    # a user it ranks far above where the mean-of-items start puts it.
    model = tiny(variant)
    clicked = [["i3", "i7", "new"], ["i3", "i7", "i9"], ["i3", "i7", "new", "i2"]]
    contexts = item_contexts(model, VOCAB, clicked, ["new", "never-clicked"])
    assert set(contexts) == {"new"}  # no click, no context
    norms = model.item_embedding.weight.detach()[1:].norm(dim=1)
    assert contexts["new"].norm() == pytest.approx(float(norms.median()), rel=1e-5)

    def rank(grown: GlintRU) -> int:
        with torch.no_grad():
            scores = grown.logits(grown(torch.tensor([[3, 7]]), torch.tensor([2])))[0, 1:]
        return int((scores > scores[-1]).sum())

    with_context, _ = grow_vocabulary(model, VOCAB, ["new"], contexts=contexts)
    at_mean, _ = grow_vocabulary(model, VOCAB, ["new"])
    assert rank(with_context) < min(rank(at_mean), NUM_ITEMS // 4)


def test_fresh_items_are_those_added_by_the_last_versions() -> None:
    first = {"vocab": VOCAB}  # a trained checkpoint: nothing is fresh
    assert fresh_items(first) == [] and carry_fresh(first, ["a"], versions=0) == []
    second = {"extra": {FRESH_ITEMS: carry_fresh(first, ["a", "b"], versions=2)}}
    third = {"extra": {FRESH_ITEMS: carry_fresh(second, [], versions=2)}}
    fourth = {"extra": {FRESH_ITEMS: carry_fresh(third, ["c"], versions=2)}}
    assert [fresh_items(m) for m in (second, third, fourth)] == [["a", "b"], ["a", "b"], ["c"]]
    # items added alone, on unchanged weights, join the newest list: nothing ages
    fifth = {"extra": {FRESH_ITEMS: add_fresh(fourth, ["d"], versions=2)}}
    assert fifth["extra"][FRESH_ITEMS] == [[], ["c", "d"]]
    assert add_fresh(first, ["a"], versions=2) == [["a"]] and add_fresh(fifth, ["e"], 0) == []


def test_split_holdout_never_trains_on_a_target() -> None:
    seqs = [np.arange(1, n + 1) for n in (1, 5, 3, 4)]
    train, holdout = split_holdout(seqs, holdout_users=2)
    assert [list(h) for h in holdout] == [[1, 2, 3], [1, 2, 3, 4]]  # the most recent two
    assert [list(t) for t in train] == [[1], [1, 2, 3, 4, 5], [1, 2], [1, 2, 3]]  # one per user
    assert split_holdout(seqs, 0)[1] == []


def test_holdout_metrics_counts_unknown_targets_and_histories_as_misses() -> None:
    model = tiny()
    unknown_target = [np.array([1, 2, NUM_ITEMS + 1])]
    assert holdout_metrics(model, unknown_target) == {"HR@10": 0.0, "NDCG@10": 0.0}
    no_known_history = [np.array([NUM_ITEMS + 1, NUM_ITEMS + 2, 3])]
    assert holdout_metrics(model, no_known_history)["HR@10"] == 0.0
    assert to_indices([["i2", "zzz", "i1"]], VOCAB)[0].tolist() == [2, 1]


def test_holdout_metrics_leave_the_unranked_items_out_of_the_ranking() -> None:
    model = tiny()
    rng = np.random.default_rng(0)
    for _ in range(20):
        history = rng.integers(1, NUM_ITEMS + 1, size=5)
        with torch.no_grad():
            scores = score_fn(model)([history])[0]
        scores[torch.from_numpy(history)] = float("-inf")  # seen: masked, as the worker does
        first, second = scores.topk(2).indices.tolist()
        # the user's second choice is the target: rank 2; with their first left out, rank 1
        sequence = [np.append(history, second)]
        assert holdout_metrics(model, sequence)["NDCG@10"] == pytest.approx(1 / math.log2(3))
        assert holdout_metrics(model, sequence, [first]) == {"HR@10": 1.0, "NDCG@10": 1.0}
        # a target left out of the ranking is a miss
        assert holdout_metrics(model, sequence, [second]) == {"HR@10": 0.0, "NDCG@10": 0.0}


def test_gate() -> None:
    current = {"HR@10": 0.5, "NDCG@10": 0.30}
    assert gate({"HR@10": 0.4, "NDCG@10": 0.30}, current)  # equal is "not worse"
    assert not gate({"HR@10": 0.9, "NDCG@10": 0.29}, current)
    assert gate({"HR@10": 0.9, "NDCG@10": 0.29}, current, tolerance=0.02)
    assert not gate({"HR@10": 0.9, "NDCG@10": float("nan")}, current, tolerance=1.0)


def test_streaming_variant_fine_tunes_with_the_chunk_loss() -> None:
    model = tiny("streaming")
    tuned = finetune(model, drifting(32, seed=3), steps=4, lr=LR)
    assert weights_finite(tuned) and not tuned.training
    changed = tuned.item_embedding.weight != model.item_embedding.weight
    assert changed.any()


@pytest.mark.parametrize("variant", ["faithful", "streaming"])
def test_the_target_weighting_reaches_the_fine_tune(variant: str) -> None:
    model = tiny(variant)
    uneven = [s[: 3 + i % 20] for i, s in enumerate(drifting(32, seed=4))]  # short and long users
    step, equal = (
        finetune(model, uneven, steps=2, lr=LR, weighting=w)
        for w in (TargetWeighting.STEP, TargetWeighting.EQUAL)
    )
    again = finetune(model, uneven, steps=2, lr=LR, weighting=TargetWeighting.EQUAL)
    assert torch.equal(equal.item_embedding.weight, again.item_embedding.weight)  # seeded
    assert not torch.equal(step.item_embedding.weight, equal.item_embedding.weight)


def test_fine_tuned_model_beats_the_frozen_one_after_the_drift(frozen: GlintRU) -> None:
    stream = drifting(200, seed=0)  # the recent clicks the job holds: both phases
    tuned = finetune(frozen, stream, TUNE_STEPS, LR)
    second_half = prefixes(drifting(100, seed=1), HALF)  # unseen users, every next click
    before, after = holdout_metrics(frozen, second_half), holdout_metrics(tuned, second_half)
    assert after["HR@10"] > before["HR@10"] + 0.1, (before, after)
    # and the drift was real: the frozen model was good before it
    first_half = prefixes([s[:HALF] for s in drifting(100, seed=1)], 1)
    assert holdout_metrics(frozen, first_half)["HR@10"] > before["HR@10"] + 0.1


# ----------------------------------------------------------------------------- the store
def test_recent_clicks_start_from_a_history_without_kafka_positions(tmp_path: Path) -> None:
    small = RocksDBSettings(block_cache_mb=1, write_buffer_mb=1, max_write_buffers=2)
    s = RecentClicks(tmp_path / "db", max_clicks=3, max_users=2, options=small)
    try:
        s.add_history([("old", ["i1"]), ("a", ["i1", "i2", "i3", "i4"]), ("b", ["i5"])])
        assert s.sequences() == [("a", ["i2", "i3", "i4"]), ("b", ["i5"])]  # bounded, LRU
        assert s.offset(0) == -1  # no position: the stream's clicks are all new
        before = s.tick
        assert s.add([StoredClick(0, 0, "a", "i6")]) == (1, 0)
        assert s.active_since(before) == 1 and s.active_since(0) == 2
        assert s.sequences() == [("b", ["i5"]), ("a", ["i3", "i4", "i6"])]
    finally:
        s.close()


def test_recent_clicks_are_bounded_deduplicated_and_durable(tmp_path: Path) -> None:
    def store() -> RecentClicks:
        small = RocksDBSettings(block_cache_mb=1, write_buffer_mb=1, max_write_buffers=2)
        return RecentClicks(tmp_path / "db", max_clicks=3, max_users=2, options=small)

    s = store()
    clicks = [StoredClick(0, o, "a", f"i{o}") for o in range(5)]
    assert s.add(clicks) == (5, 0)
    assert s.sequences() == [("a", ["i2", "i3", "i4"])]  # the last 3 clicks
    assert s.add(clicks[3:] + [StoredClick(1, 0, "b", "i9")]) == (1, 2)  # redelivered: skipped
    s.add([StoredClick(0, 5, "a", "i5"), StoredClick(1, 1, "c", "i7")])
    assert [u for u, _ in s.sequences()] == ["a", "c"]  # b was the least recently active
    s.close()
    s = store()  # reopened: contents, LRU order and offsets survive
    assert s.sequences() == [("a", ["i3", "i4", "i5"]), ("c", ["i7"])]
    assert s.add([StoredClick(0, 5, "a", "i5")]) == (0, 1)
    s.close()


# ----------------------------------------------------------------------------- the job
def job_with(settings: Settings, **overrides: object) -> FinetuneJob:
    """A job on ``settings`` with the test's fine-tune options (flat names)."""
    values: dict[str, object] = dict(
        finetune_group_id="unused",
        finetune_every_clicks=1000,
        finetune_steps=TUNE_STEPS,
        finetune_lr=LR,
        finetune_holdout_users=100,
        finetune_user_clicks=2 * HALF,
        finetune_max_users=1000,
        finetune_block_cache_mb=1,
    )
    values.update(overrides)
    return FinetuneJob(settings.with_overrides(**values))


def save(model: GlintRU, directory: Path, vocab: list[str] = VOCAB) -> Path:
    config = model.config
    return save_checkpoint(
        directory, model, kind="glintru", config=config, vocab=vocab, dataset="drift", metrics={}
    )


def fill(job: FinetuneJob, sequences: list[np.ndarray], vocab: list[str] = VOCAB) -> None:
    """Clicks as the consumer would store them, interleaved by position like a live stream."""
    clicks = [
        StoredClick(0, t * len(sequences) + u, f"u{u}", vocab[seq[t]])
        for t in range(2 * HALF)
        for u, seq in enumerate(sequences)
        if t < len(seq)
    ]
    job.store.add(clicks)


def read_topic(settings: Settings, topic: str, wait_s: float) -> list[dict]:
    """Every message of ``topic`` (read by assignment: no group join to wait for)."""
    partitions = range(settings.topics.partitions)
    consumer = Consumer(settings.kafka.confluent_consumer_config(f"read-{uuid.uuid4().hex[:8]}"))
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    out, deadline = [], time.monotonic() + wait_s
    try:
        while time.monotonic() < deadline:
            m = consumer.poll(0.2)
            if m is not None and m.error() is None:
                out.append(json.loads(m.value()))
    finally:
        consumer.close()
    return out


@pytest.fixture
def job_settings(settings: Settings, tmp_path: Path, unique_name: Callable[[str], str]) -> Settings:
    s = settings.with_overrides(
        state_dir=tmp_path / "state",
        registry_dir=tmp_path / "registry",
        checkpoint_dir=tmp_path / "fallback",
        topic_model_updates=unique_name("updates"),
        device="cpu",
    )
    return s


def test_broken_fine_tune_is_rejected_and_never_published(
    job_settings: Settings, frozen: GlintRU, tmp_path: Path
) -> None:
    registry = Registry(job_settings.paths.registry_dir)
    v1 = registry.publish(save(frozen, tmp_path / "v1")).version
    job = job_with(job_settings, finetune_lr=BROKEN_LR)
    try:
        fill(job, [s[:HALF] for s in drifting(150, seed=2)])  # the distribution it knows
        result = job.run_once()
    finally:
        job.close()
    assert result.outcome == RunOutcome.REJECTED, result
    assert result.figures["new_NDCG@10"] < result.figures["current_NDCG@10"]
    assert registry.current_version() == v1 and [v.version for v in registry.list()] == [v1]
    assert read_topic(job_settings, job_settings.topics.model_updates, wait_s=3.0) == []


def test_good_fine_tune_grows_the_vocabulary_publishes_and_announces(
    job_settings: Settings, frozen: GlintRU, tmp_path: Path, contract: Contract
) -> None:
    save(frozen, job_settings.paths.checkpoint_dir)  # no registry version yet: the fallback
    job = job_with(job_settings)
    stream = drifting(150, seed=2)
    for seq in stream[:30]:  # a new item appears in the stream
        seq[-3] = NUM_ITEMS + 1
    try:
        assert job.run_once().outcome == RunOutcome.SKIPPED  # nothing stored yet
        fill(job, stream, vocab=[*VOCAB, "brand-new"])
        result = job.run_once()
    finally:
        job.close()
    assert result.outcome == RunOutcome.PUBLISHED, result
    f = result.figures
    assert f["new_NDCG@10"] >= f["current_NDCG@10"] and f["new_items"] == 1
    registry = Registry(job_settings.paths.registry_dir)
    info = registry.current()
    assert info is not None and info.version == result.version and info.parent is None
    assert info.gate == f  # the gate figures are in the registry entry
    model, manifest = load_checkpoint(info.path)
    assert manifest["vocab"] == [*VOCAB, "brand-new"] and model.num_items == NUM_ITEMS + 1
    assert fresh_items(manifest) == ["brand-new"]  # the workers' fresh slot offers it
    (announced,) = read_topic(job_settings, job_settings.topics.model_updates, wait_s=3.0)
    contract("model-update", announced)
    assert announced["version"] == info.version and announced["figures"] == f
    assert announced["parent"] is None and announced["created"] == info.created


def test_a_rejected_candidate_is_where_the_next_runs_start_until_it_passes_or_expires(
    job_settings: Settings, frozen: GlintRU, tmp_path: Path
) -> None:
    save(frozen, job_settings.paths.checkpoint_dir)
    # tolerance -1: no candidate can pass the gate (it would need NDCG@10 one higher)
    job = job_with(job_settings, finetune_tolerance=-1.0, finetune_carry_runs=2)
    stream = drifting(150, seed=2)
    for seq in stream[:30]:
        seq[-3] = NUM_ITEMS + 1
    try:
        fill(job, stream, vocab=[*VOCAB, "brand-new"])
        rejected = [job.run_once() for _ in range(3)]
        assert job.carried is not None and job.carried.runs == 1
        assert job.carried.added == ["brand-new"]
        carried_weights = job.carried.model.state_dict()
        job.options = job.options.model_copy(update={"tolerance": 1.0})  # any candidate passes
        passed = job.run_once()
        assert job.carried is None  # published: the next run starts from it, served
    finally:
        job.close()
    assert [r.outcome for r in rejected] == [RunOutcome.REJECTED] * 3, rejected
    # run 1 from the served model, runs 2-3 from the candidate before, run 3 from the served
    # model again: two rejected runs in a row were carried (carry_runs = 2)
    assert [r.figures["carried_runs"] for r in rejected] == [0, 1, 0]
    # items added since the served version: by the run, or by the candidate it started from
    assert [r.figures["new_items"] for r in rejected] == [1, 1, 1]
    assert passed.outcome == RunOutcome.PUBLISHED and passed.figures["carried_runs"] == 1
    assert passed.figures["new_items"] == 1
    info = Registry(job_settings.paths.registry_dir).current()
    assert info is not None and info.version == passed.version
    model, manifest = load_checkpoint(info.path)
    assert manifest["vocab"] == [*VOCAB, "brand-new"]
    assert fresh_items(manifest) == ["brand-new"]  # fresh since the version it was tuned from
    # the published weights were trained on from the carried candidate, not from the served
    # model (which the frozen fixture still is)
    published = model.state_dict()
    assert any(not torch.equal(published[k], carried_weights[k]) for k in published)
    assert not torch.equal(
        published["item_embedding.weight"][: NUM_ITEMS + 1],
        frozen.state_dict()["item_embedding.weight"],
    )


def test_a_carried_candidate_is_dropped_when_another_version_is_served(
    job_settings: Settings, frozen: GlintRU, tmp_path: Path
) -> None:
    releases = Releases(job_settings)
    releases.publish(save(frozen, tmp_path / "v1"))
    job = job_with(job_settings, finetune_tolerance=-1.0)
    try:
        fill(job, drifting(150, seed=2))
        first = job.run_once()
        releases.publish(save(frozen, tmp_path / "v2"))  # e.g. an operator's publish
        second = job.run_once()
    finally:
        job.close()
    assert first.outcome == second.outcome == RunOutcome.REJECTED
    assert (first.parent, second.parent) == (1, 2)
    assert second.figures["carried_runs"] == 0  # started from v2, not from v1's candidate


def test_a_rollback_holds_across_fine_tune_runs_until_unpinned(
    job_settings: Settings, frozen: GlintRU, tmp_path: Path
) -> None:
    releases = Releases(job_settings)
    v1 = releases.publish(save(frozen, tmp_path / "v1")).version
    releases.publish(save(frozen, tmp_path / "v2"))
    releases.rollback(v1)  # an operator goes back to v1: pinned there
    job = job_with(job_settings)
    try:
        fill(job, drifting(150, seed=2))  # clicks a fine-tune improves on
        held = [job.run_once() for _ in range(3)]
        assert releases.registry.unpin() == v1
        after = job.run_once()
    finally:
        job.close()
    assert [r.outcome for r in held] == [RunOutcome.HELD] * 3, held
    assert all(r.parent == v1 and "new_NDCG@10" in r.figures for r in held)  # still evaluated
    assert after.outcome == RunOutcome.PUBLISHED and after.version == 3 and after.parent == v1
    assert [v.version for v in releases.registry.list()] == [1, 2, 3]
    updates = read_topic(job_settings, job_settings.topics.model_updates, wait_s=3.0)
    assert [(u["event"], u["version"]) for u in updates] == [
        ("published", 1),
        ("published", 2),
        ("rollback", 1),
        ("published", 3),
    ]


# ----------------------------------------------------------------------------- end to end
class FinetuneProcess:
    """A `glintstream finetune` subprocess logging to a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [GLINTSTREAM, "finetune"], env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} (rc={self.proc.poll()}):\n{self.log()[-4000:]}")
            time.sleep(POLL_S)

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop_quietly(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def produce(
    bootstrap: str, topic: str, sequences: list[np.ndarray], vocab: list[str], ts: float
) -> None:
    """Users' clicks interleaved by position, keyed by user, all stamped ``ts``."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for t in range(max(map(len, sequences))):
        for u, seq in enumerate(sequences):
            if t < len(seq):
                click = {"user_id": f"u{u}", "item_id": vocab[seq[t]], "ts": ts}
                producer.produce(topic, json.dumps(click).encode(), f"u{u}".encode())
        producer.poll(0)
    assert producer.flush(30) == 0


@pytest.mark.timeout(240)
def test_finetune_process_publishes_announces_and_the_worker_switches(
    bootstrap_servers: str,
    frozen: GlintRU,
    tmp_path: Path,
    unique_name: Callable[[str], str],
) -> None:
    save(frozen, tmp_path / "checkpoint")  # the worker serves it as version 0
    metrics_port = free_port()
    env, topics = private_worker_env(
        bootstrap_servers,
        tmp_path,
        unique_name,
        GLINTSTREAM_MODEL_CHECK_INTERVAL_S=0.2,
        GLINTSTREAM_FINETUNE_METRICS_PORT=metrics_port,
        GLINTSTREAM_FINETUNE_GROUP_ID=unique_name("finetune"),
        GLINTSTREAM_FINETUNE_EVERY_CLICKS=E2E_USERS * HALF * 2,  # once the whole stream is in
        GLINTSTREAM_FINETUNE_EVERY_S=600,
        GLINTSTREAM_FINETUNE_STEPS=TUNE_STEPS,
        GLINTSTREAM_FINETUNE_LR=LR,
        GLINTSTREAM_FINETUNE_HOLDOUT_USERS=E2E_USERS,
        GLINTSTREAM_FINETUNE_MIN_HOLDOUT_USERS=20,
    )
    worker = WorkerProcess(env, "w1", tmp_path).start()
    job = FinetuneProcess(env, tmp_path / "finetune.log")
    try:
        worker.wait_ready()  # creates the worker's topics; the job creates the rest
        stream = drifting(E2E_USERS, seed=4)
        for seq in stream[:E2E_NEW_ITEM_USERS]:  # an item the served model has never seen
            seq[HALF + 5] = NUM_ITEMS + 1
        vocab = [*VOCAB, "fresh"]
        produce(bootstrap_servers, topics["clicks"], stream, vocab, ts=STREAM_TS)
        job.wait_for("fine-tune run 1: published v1", timeout=120)
        settings = load_settings(kafka_bootstrap_servers=bootstrap_servers)
        (announced,) = read_topic(settings, topics["model_updates"], wait_s=3.0)
        info = Registry(tmp_path / "registry").current()
        assert info is not None and info.version == announced["version"] == 1
        assert info.gate == announced["figures"] and announced["parent"] is None
        assert info.gate["new_NDCG@10"] >= info.gate["current_NDCG@10"]
        assert info.gate["new_items"] == 1 and load_checkpoint(info.path)[1]["vocab"] == vocab
        scraped = urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert 'glintstream_finetune_runs_total{outcome="published"} 1.0' in scraped
        assert "glintstream_finetune_last_published_version 1.0" in scraped
        # the worker swaps between batches, and now applies the new item (v0 dead-lettered it)
        produce(bootstrap_servers, topics["clicks"], [stream[0][-1:]], vocab, ts=AFTER_TS)
        produce(bootstrap_servers, topics["clicks"], [np.array([NUM_ITEMS + 1])], vocab, AFTER_TS)
        worker.wait_for("serving model version 1", timeout=60)
        recs = TopicReader(bootstrap_servers, topics["recommendations"])
        try:
            recs.read_until(
                lambda: (
                    sum(json.loads(m.value())["click_ts"] == AFTER_TS for m in recs.messages) == 2
                ),
                timeout=60,
                what="recommendations after the swap",
            )
        finally:
            recs.close()
        after = [json.loads(m.value()) for m in recs.messages]
        after = [r for r in after if r["click_ts"] == AFTER_TS]
        assert [r["model_version"] for r in after] == [1, 1]
        assert job.terminate() == 0
        assert "fine-tune job stopped after 1 runs" in job.log()
    finally:
        job.stop_quietly()
        worker.stop_quietly()


def test_a_run_trains_on_the_recent_users_and_a_replay_of_older_ones() -> None:
    seqs = [np.array([i, i + 1]) for i in range(1, 11)]  # least recently active first
    rng = np.random.default_rng(0)
    mixed = replay_mix(seqs, recent=2, recent_share=0.5, rng=rng)
    assert len(mixed) == 4 and mixed[-2:] == seqs[-2:]  # the recent users, last (the holdout)
    older = [int(s[0]) for s in mixed[:2]]
    assert older == sorted(older) and max(older) <= 8  # a sample of the others, in order
    assert len(replay_mix(seqs, recent=2, recent_share=0.25, rng=rng)) == 8
    assert replay_mix(seqs, recent=0, recent_share=0.5, rng=rng) == seqs  # nobody recent
    assert replay_mix(seqs, recent=3, recent_share=0.0, rng=rng) == seqs  # no mixing asked
    assert replay_mix(seqs, recent=9, recent_share=0.5, rng=rng) == seqs  # too few older ones
    # a run's steps x batch size: more of the older users, so none is trained on many times
    filled = replay_mix(seqs, recent=2, recent_share=0.5, rng=rng, at_least=7)
    assert len(filled) == 7 and filled[-2:] == seqs[-2:]


def test_a_rejected_candidates_new_items_are_published_alone_on_the_served_weights(
    job_settings: Settings, frozen: GlintRU, tmp_path: Path
) -> None:
    v1 = Releases(job_settings).publish(save(frozen, tmp_path / "v1")).version
    job = job_with(job_settings, finetune_lr=BROKEN_LR)
    stream = [s[:HALF] for s in drifting(150, seed=2)]
    for seq in stream[:30]:
        seq[-3] = NUM_ITEMS + 1
    try:
        fill(job, stream, vocab=[*VOCAB, "brand-new"])
        result = job.run_once()
        carried = job.carried
    finally:
        job.close()
    f = result.figures
    # the new item is fresh, so not ranked: alone, it leaves the served ranking as it was
    assert f["new_NDCG@10"] < f["current_NDCG@10"] == f["items_NDCG@10"], f
    assert result.outcome == RunOutcome.ITEMS and result.parent == v1, result
    info = Releases(job_settings).registry.current()
    assert info is not None and info.version == result.version == v1 + 1
    model, manifest = load_checkpoint(info.path)
    assert manifest["vocab"] == [*VOCAB, "brand-new"] and fresh_items(manifest) == ["brand-new"]
    published, served = model.state_dict(), frozen.state_dict()
    # every weight is the served one, the new item's row is the candidate's
    table = published.pop("item_embedding.weight")
    assert all(torch.equal(published[k], served[k]) for k in published)
    assert torch.equal(table[: NUM_ITEMS + 1], served["item_embedding.weight"])
    assert carried is not None
    assert torch.equal(table[-1], carried.model.state_dict()["item_embedding.weight"][-1])
    # the candidate is carried from the version that now holds its item
    assert carried.parent == info.version and carried.added == [] and carried.runs == 1


def test_users_stay_recent_until_a_run_trains_on_them(
    job_settings: Settings, frozen: GlintRU
) -> None:
    save(frozen, job_settings.paths.checkpoint_dir)
    job = job_with(job_settings, finetune_min_holdout_users=1000)  # more than there are
    try:
        fill(job, drifting(150, seed=2))
        skipped = job.run_once()
        job.options = job.options.model_copy(update={"min_holdout_users": 20})
        trained = job.run_once()
        again = job.run_once()
    finally:
        job.close()
    assert skipped.outcome == RunOutcome.SKIPPED, skipped
    # the skipped run did not train on them: they are still recent for the run after it
    assert trained.figures["recent_users"] == 150, trained.figures
    assert again.figures["recent_users"] == 0, again.figures  # that one did
