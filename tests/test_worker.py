"""The streaming worker against the real broker, RocksDB and `glintstream worker` processes.

Each test runs its own scenario (its own topics, state and worker) on the same synthetic users,
whose sequences are cut into phases of clicks:

1. end to end: every recommendation equals the offline model's top-K for the same history;
2. junk (hypothesis-generated) mixed into the stream ends in the DLQ, valid clicks still served;
3. kill -9 mid-stream and restart: every click applied exactly once;
4. a second worker joins and leaves: the partitions move with their state;
5. a version with its items reordered is published through a model store: the worker swaps to
   it, a second worker sharing nothing else but Kafka starts on it, `model status` shows both;
6. a restart with a wiped state dir while input arrives (faust #596): nothing lost;
7. a batch that fails takes the worker down (exit 70).

After every step: each valid click has at least one recommendation and all of them equal the
offline model's; each user's stored click count equals the valid clicks produced for them.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Contract
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from model.checkpoint import load_checkpoint, save_checkpoint
from model.data import synthetic
from model.glintru import GlintRU, GlintRUConfig, build_glintru
from stream.broker import free_port
from stream.clicks import Rejection, parse_click
from stream.lookup import http_get, lookup_path
from stream.messages import LookupSource, RejectReason
from stream.settings import RocksDBSettings
from stream.state import StateStore
from stream.testkit import (
    GLINTSTREAM,
    ClickProducer,
    Ledger,
    TopicReader,
    WorkerProcess,
    latest_records,
    offline_top_k,
    private_worker_env,
)
from stream.worker import EXIT_AGENT_CRASHED

K = 5
MAX_LEN = 8  # short: most histories cross the faithful model's window
PHASES = 6  # each user's sequence is split into this many consecutive chunks
SCORE_TOL = 1e-4
OUTPUT_TIMEOUT_S = 60

pytestmark = pytest.mark.timeout(300)


def make_checkpoint(directory: Path, vocab: list[str], seed: int) -> None:
    torch.manual_seed(seed)
    config = GlintRUConfig(num_items=len(vocab) - 1, hidden_size=16, n_heads=2, max_len=MAX_LEN)
    model = build_glintru(config).eval()
    save_checkpoint(
        directory,
        model,
        kind="glintru",
        config=config,
        vocab=vocab,
        dataset="synthetic",
        metrics={},
    )


@dataclass
class Scenario:
    env: dict[str, str]
    topics: dict[str, str]
    bootstrap: str
    state_dir: Path
    registry_dir: Path
    log_dir: Path
    data_chunks: list[list[tuple[float, str, int]]]  # per phase: (ts, user, item index)
    vocab: list[str]
    models: dict[int, tuple[GlintRU, list[str]]]  # version -> (model, its vocabulary)
    ledger: Ledger
    producer: ClickProducer
    recs: TopicReader
    dlq: TopicReader
    changelog: TopicReader
    a: WorkerProcess
    contract: Contract
    checked: int = 0  # recommendations already verified

    def worker(self, worker_id: str) -> WorkerProcess:
        return WorkerProcess(self.env, worker_id, self.log_dir, lookup_port=free_port())

    def produce_phase(self, phase: int, pace_s: float = 0.0) -> None:
        for ts, user, item in self.data_chunks[phase]:
            self.producer.click(user, item, ts)
            if pace_s:
                time.sleep(pace_s)
        self.producer.flush()

    def wait_outputs(self) -> None:
        """Until every produced valid click has a recommendation."""

        def served() -> set[tuple[int, int]]:
            return {
                (m["click"]["partition"], m["click"]["offset"])
                for m in (json.loads(msg.value()) for msg in self.recs.messages)
            }

        self.recs.read_until(
            lambda: set(self.ledger.clicks) <= served(), OUTPUT_TIMEOUT_S, "recommendations"
        )

    def check_outputs(self, expected_version: int | None = None) -> None:
        """Every recommendation equals the offline model's top-K for that click's history."""
        seen: dict[tuple[int, int], tuple] = {}
        for msg in self.recs.messages:
            out = json.loads(msg.value())
            tp = (out["click"]["partition"], out["click"]["offset"])
            user, t = self.ledger.clicks[tp]
            assert out["user_id"] == user and msg.key() == user.encode()
            assert out["click"]["topic"] == self.topics["clicks"]
            # idempotent: a click applied again after a crash republishes the same items and
            # version; scores only to float tolerance, since a batch of another composition may
            # take another BLAS path and round the last bits differently
            first = seen.setdefault(tp, (out["items"], out["scores"], out["model_version"]))
            assert (first[0], first[2]) == (out["items"], out["model_version"]), (
                f"click {tp} changed on republish"
            )
            np.testing.assert_allclose(out["scores"], first[1], atol=SCORE_TOL)
        new = self.recs.messages[self.checked :]
        for msg in new:
            self.contract("recommendation", msg.value())
            out = json.loads(msg.value())
            user, t = self.ledger.clicks[(out["click"]["partition"], out["click"]["offset"])]
            if expected_version is not None:
                assert out["model_version"] == expected_version
            model, vocab = self.models[out["model_version"]]
            # the history as item ids, then as the indices of this version's vocabulary
            position = {item: j for j, item in enumerate(vocab)}
            ids = [self.vocab[i] for i in self.ledger.histories[user][: t + 1]]
            items, scores = offline_top_k(model, [position[i] for i in ids], K)
            assert out["items"] == [vocab[i] for i in items], (user, t)
            np.testing.assert_allclose(out["scores"], scores, atol=SCORE_TOL)
        self.checked = len(self.recs.messages)

    def check_exactly_once(self) -> None:
        """Each user's latest state counts exactly the valid clicks produced for them."""
        want = {u: len(h) for u, h in self.ledger.histories.items()}

        def counts() -> dict[str, int]:
            return {u: r.n for u, r in latest_records(self.changelog.messages).items()}

        try:
            self.changelog.read_until(lambda: counts() == want, 15, "changelog counts")
        except AssertionError:
            got = counts()
            wrong = {u: (got.get(u), n) for u, n in want.items() if got.get(u) != n}
            raise AssertionError(f"(stored n, produced) differ for {wrong}") from None


@pytest.fixture
def scenario(
    bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory, contract: Contract
) -> Iterator:
    root = tmp_path_factory.mktemp("worker")
    suffix = root.name.replace("_", "-")
    data = synthetic(num_users=40, num_items=30, min_len=12, max_len=36, seed=3)
    make_checkpoint(root / "checkpoint", data.vocab, seed=0)
    model0, _ = load_checkpoint(root / "checkpoint")
    # every user's sequence, split into PHASES consecutive chunks, interleaved by time
    chunks: list[list[tuple[float, str, int]]] = [[] for _ in range(PHASES)]
    for user, seq, ts in zip(data.users, data.sequences, data.timestamps):
        for phase, part in enumerate(np.array_split(np.arange(len(seq)), PHASES)):
            chunks[phase] += [(float(ts[i]), user, int(seq[i])) for i in part]
    for chunk in chunks:
        chunk.sort()
    env, topics = private_worker_env(
        bootstrap_servers,
        root,
        lambda prefix: f"{prefix}-{suffix}",
        GLINTSTREAM_TOP_K=K,
        GLINTSTREAM_BATCH_MAX_SIZE=64,  # several batches per phase
        GLINTSTREAM_MODEL_STORE=f"file://{root / 'store'}",
        GLINTSTREAM_WORKER_STATUS_INTERVAL_S=1,
    )
    a = WorkerProcess(env, "a", root, lookup_port=free_port()).start()
    a.wait_ready()  # also creates the topics
    ledger = Ledger()
    s = Scenario(
        env=env,
        topics=topics,
        bootstrap=bootstrap_servers,
        state_dir=root / "state",
        registry_dir=root / "registry",
        log_dir=root,
        data_chunks=chunks,
        vocab=data.vocab,
        models={0: (model0, data.vocab)},  # type: ignore[dict-item]
        ledger=ledger,
        producer=ClickProducer(bootstrap_servers, topics["clicks"], data.vocab, ledger),
        recs=TopicReader(bootstrap_servers, topics["recommendations"]),
        dlq=TopicReader(bootstrap_servers, topics["dlq"]),
        changelog=TopicReader(bootstrap_servers, topics["changelog"]),
        a=a,
        contract=contract,
    )
    try:
        yield s
    finally:
        for w in (s.a, *getattr(s, "extra_workers", [])):
            w.stop_quietly()
        for reader in (s.recs, s.dlq, s.changelog):
            reader.close()


def test_1_end_to_end_equals_offline_model(scenario: Scenario) -> None:
    scenario.produce_phase(0)
    scenario.wait_outputs()
    scenario.check_outputs(expected_version=0)
    scenario.check_exactly_once()


junk_json = st.fixed_dictionaries(
    {
        "user_id": st.one_of(
            st.integers(max_value=-1), st.integers(min_value=2**63), st.booleans(), st.floats()
        ),
        "item_id": st.integers(1, 30),
        "ts": st.floats(0, 1e9),
    }
) | st.fixed_dictionaries(
    {
        "user_id": st.sampled_from(["u0", "u1"]),
        "item_id": st.one_of(st.none(), st.floats(), st.lists(st.integers()), st.just(-3)),
        "ts": st.one_of(st.text(), st.just(-1), st.just(1e13)),
    }
)
junk_value = st.binary(max_size=200) | junk_json.map(lambda d: json.dumps(d).encode())


def test_2_junk_goes_to_dlq_while_valid_clicks_are_served(scenario: Scenario) -> None:
    examples: list[tuple[bytes | None, bytes]] = []

    @hsettings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(key=st.none() | st.sampled_from([b"u0", b"u1", b"x"]), value=junk_value)
    def collect(key: bytes | None, value: bytes) -> None:
        assert isinstance(parse_click(value, key, 4096), Rejection)
        examples.append((key, value))

    collect()
    examples.append((b"u2", b"x" * 5000))  # oversized
    unknown = json.dumps({"user_id": "u3", "item_id": "no-such-item", "ts": 1}).encode()
    examples.append((b"u3", unknown))
    valid = scenario.data_chunks[1]
    step = max(1, len(valid) // len(examples))
    for i, (ts, user, item) in enumerate(valid):
        scenario.producer.click(user, item, ts)
        if i % step == 0 and examples:
            scenario.producer.junk(*examples.pop())
    for key, value in examples:
        scenario.producer.junk(key, value)
    scenario.producer.flush()

    scenario.wait_outputs()
    junk = scenario.ledger.junk

    def dead_lettered() -> dict[tuple[int, int], dict]:
        records = (json.loads(m.value()) for m in scenario.dlq.messages)
        return {(r["click"]["partition"], r["click"]["offset"]): r for r in records}

    scenario.dlq.read_until(lambda: set(junk) <= set(dead_lettered()), 30, "DLQ records")
    for tp, record in dead_lettered().items():
        scenario.contract("dead-letter", record)
        assert record["reason"] in set(RejectReason) and record["detail"]
        original = junk[tp]
        assert record["value_b64"] is not None and original is not None
        assert record["value_b64"] == base64.b64encode(original).decode()
    assert RejectReason.UNKNOWN_ITEM in {r["reason"] for r in dead_lettered().values()}
    scenario.check_outputs(expected_version=0)
    scenario.check_exactly_once()  # unknown items and junk changed no state


def test_3_kill9_mid_stream_applies_every_click_exactly_once(scenario: Scenario) -> None:
    producing = threading.Thread(target=scenario.produce_phase, args=(2, 0.004))
    producing.start()
    scenario.recs.read_until(
        lambda: len(scenario.recs.messages) > scenario.checked + 100, 30, "some outputs"
    )
    scenario.a.kill9()
    producing.join()
    scenario.a.start().wait_ready()
    scenario.wait_outputs()
    scenario.check_outputs(expected_version=0)
    scenario.check_exactly_once()


def test_4_second_worker_joins_and_leaves_keeping_state(scenario: Scenario) -> None:
    b = scenario.worker("b").start()
    scenario.extra_workers = [b]  # type: ignore[attr-defined]
    half = len(scenario.data_chunks[3]) // 2
    chunk, scenario.data_chunks[3] = scenario.data_chunks[3], scenario.data_chunks[3][:half]
    producing = threading.Thread(target=scenario.produce_phase, args=(3, 0.01))
    producing.start()
    b.wait_ready()
    producing.join()
    scenario.wait_outputs()
    assert "partitions [" in b.log(), "the second worker never got a partition"
    scenario.check_outputs(expected_version=0)
    scenario.check_exactly_once()

    check_lookups(scenario, [scenario.a, b])

    assert b.terminate() == 0
    scenario.data_chunks[3] = chunk[half:]
    scenario.produce_phase(3)
    scenario.wait_outputs()
    scenario.check_outputs(expected_version=0)
    scenario.check_exactly_once()


def check_lookups(scenario: Scenario, workers: list[WorkerProcess]) -> None:
    """Every worker answers for every user: the last recommendation published for them, from
    the worker that holds their partition; a user without clicks gets popular items."""
    latest = {}
    for msg in scenario.recs.messages:  # in offset order per user: the last one wins
        out = json.loads(msg.value())
        latest[out["user_id"]] = out

    def lookup(w: WorkerProcess, user: str) -> dict:
        answer = http_get(f"http://127.0.0.1:{w.lookup_port}{lookup_path(user)}", None, 10)
        assert answer.status == 200, (w.worker_id, user, answer)
        got: dict = json.loads(answer.body)
        scenario.contract("user-recommendations", got)
        return got

    answered_by = set()
    for w in workers:
        url = f"http://127.0.0.1:{w.lookup_port}"
        for user, sent in latest.items():
            deadline = time.monotonic() + 10  # the store commits just after the topic has it
            while (got := lookup(w, user))["click"] != sent["click"]:
                assert time.monotonic() < deadline, (user, got, sent)
                time.sleep(0.1)
            assert got["source"] == LookupSource.USER and got["items"] == sent["items"], user
            answered_by.add(got["worker_id"])
        user, sent = next(iter(latest.items()))
        assert (
            json.loads(run_cli(scenario.env, "recs", user, "--url", url))["items"] == sent["items"]
        )
        cold = lookup(w, "no-clicks-yet")
        assert cold["source"] == LookupSource.POPULAR and cold["items"]
        assert set(cold["items"]) <= set(scenario.vocab)
    assert answered_by == {w.worker_id for w in workers}  # each holds some users


def serve_a_first_phase(scenario: Scenario) -> None:
    """Users with a state and a stream position, for the steps that start from them."""
    scenario.produce_phase(0)
    scenario.wait_outputs()
    scenario.check_outputs(expected_version=0)


def test_5_a_reordered_version_reaches_workers_that_share_only_kafka_and_the_store(
    scenario: Scenario, tmp_path: Path
) -> None:
    """The new version lists the items in another order (as a retrain on other data would):
    the stored histories are item ids, so every user's next recommendation is the new model's
    own for the user's history. It is published from a registry of its own, through the model
    store; worker b has no registry, no checkpoint and no directory of a's."""
    serve_a_first_phase(scenario)
    publisher = publisher_env(scenario, tmp_path / "publisher-host")
    reordered = [scenario.vocab[0], *reversed(scenario.vocab[1:])]
    make_checkpoint(tmp_path / "v1", reordered, seed=1)
    published = run_cli(publisher, "model", "publish", str(tmp_path / "v1"))
    assert "published v1" in published and "reordered" in published
    model1, _ = load_checkpoint(tmp_path / "v1")
    scenario.models[1] = (model1, reordered)  # type: ignore[assignment]
    scenario.a.wait_for("serving model version 1", 10)

    b_host = tmp_path / "b-host"
    b = WorkerProcess(
        {
            **scenario.env,
            "GLINTSTREAM_STATE_DIR": str(b_host / "state"),
            "GLINTSTREAM_REGISTRY_DIR": str(b_host / "registry"),
            "GLINTSTREAM_CHECKPOINT_DIR": str(b_host / "no-checkpoint"),
        },
        "b",
        b_host,
    )
    b_host.mkdir()
    scenario.extra_workers = [b.start()]  # type: ignore[attr-defined]
    b.wait_ready()
    assert "serving model version 1" in b.log()
    scenario.produce_phase(4)
    scenario.wait_outputs()
    scenario.check_outputs(expected_version=1)  # rebuilt states: exact on the ring
    scenario.check_exactly_once()

    # both workers' statuses on the topic first: `model status` then reads them in one go
    statuses_topic = TopicReader(scenario.bootstrap, scenario.topics["worker_status"])
    try:

        def serving_v1() -> set[str]:
            found = (json.loads(m.value()) for m in statuses_topic.messages)
            return {s["worker_id"] for s in found if s["model_version"] == 1}

        statuses_topic.read_until(lambda: serving_v1() == {"a", "b"}, 20, "statuses")
        for message in statuses_topic.messages:
            scenario.contract("worker-status", message.value())
    finally:
        statuses_topic.close()
    shown = run_cli(publisher, "model", "status")
    assert "workers: 2 live" in shown, shown
    assert "registry: v1" in shown and "announced: v1 (published" in shown, shown
    rows = [line.split() for line in shown.splitlines() if line.startswith("  ") and "v1" in line]
    assert sorted(row[0] for row in rows) == ["a", "b"], shown

    assert "pinned v1" in run_cli(publisher, "model", "pin", "1")
    assert "(pinned)" in run_cli(publisher, "model", "list")
    assert "v1 is no longer pinned" in run_cli(publisher, "model", "unpin")


def publisher_env(scenario: Scenario, host: Path) -> dict[str, str]:
    """The `glintstream model` commands' environment on a host of their own."""
    keep = ("KAFKA_BOOTSTRAP_SERVERS", "GLINTSTREAM_MODEL_STORE", "GLINTSTREAM_TOPIC_MODEL_UPDATES")
    env = {k: v for k, v in scenario.env.items() if not k.startswith("GLINTSTREAM_") or k in keep}
    env["GLINTSTREAM_TOPIC_WORKER_STATUS"] = scenario.topics["worker_status"]
    env["GLINTSTREAM_REGISTRY_DIR"] = str(host / "registry")
    env["GLINTSTREAM_STATE_DIR"] = str(host / "state")
    return env


def run_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [GLINTSTREAM, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_6_wiped_restart_with_input_during_recovery_loses_nothing(scenario: Scenario) -> None:
    serve_a_first_phase(scenario)
    assert scenario.a.terminate() == 0
    shutil.rmtree(scenario.state_dir / "a")
    scenario.a.start()
    # produce from the moment the process starts, through join and state recovery (#596)
    scenario.produce_phase(5, pace_s=0.03)
    scenario.a.wait_ready()
    scenario.wait_outputs()
    scenario.check_outputs(expected_version=0)
    scenario.check_exactly_once()

    # and the local RocksDB the worker rebuilt agrees with the changelog
    assert scenario.a.terminate() == 0
    store = StateStore(
        scenario.state_dir / "a" / "users",
        RocksDBSettings(block_cache_mb=8, write_buffer_mb=1, max_write_buffers=2),
    )
    try:
        for user, history in scenario.ledger.histories.items():
            owners = [p for p in range(4) if store.partition(p).get(user) is not None]
            assert len(owners) == 1, user
            record = store.partition(owners[0]).get(user)
            assert record is not None and record.n == len(history)
    finally:
        store.close()


def test_7_agent_crash_exits_nonzero(scenario: Scenario) -> None:
    """No silent agent death: a batch that fails takes the process down for a restart."""
    serve_a_first_phase(scenario)
    assert scenario.a.terminate() == 0
    user = next(iter(scenario.ledger.histories))
    store = StateStore(
        scenario.state_dir / "a" / "users",
        RocksDBSettings(block_cache_mb=8, write_buffer_mb=1, max_write_buffers=2),
    )
    try:
        owner = next(p for p in range(4) if store.partition(p).get(user) is not None)
        store.partition(owner).write({user.encode(): b"not a user record"})
    finally:
        store.close()
    scenario.a.start().wait_ready()
    scenario.producer.click(user, 1, time.time())
    scenario.producer.flush()
    assert scenario.a.proc is not None
    assert scenario.a.proc.wait(30) == EXIT_AGENT_CRASHED
    assert "the click agent crashed" in scenario.a.log()
