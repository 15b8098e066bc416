"""`glintstream bench online`: do the recommendations users receive improve with fine-tuning?

The click log is cut at a global time T (``bench.online_split``). A starting checkpoint is trained
on the clicks before T only (or given: ``init_from``). The stream (the pre-T clicks of the users
who click after T as a warm-up, then every post-T click in time order) goes through a private
broker (or ``bootstrap_servers``) to real processes, once per arm:

- **frozen**: a `glintstream worker` serving the starting checkpoint, nothing else;
- **finetuned**: the same worker plus a `glintstream finetune` job with its default settings
  (or ``finetune``'s overrides). Its store starts with the warm-up clicks, as if it had been
  running before T. Stream time is compressed: the post-T clicks go out in slices of the job's
  ``every_clicks``, and the next slice waits until the worker answered this one, the job ran
  on it, and the worker serves what the job published; so the job gets every run it would get
  in real time, and no click is served by a model older than real time would give;
- **oracle** (offline, no broker): before each of ``oracle_slices`` parts of the stream the model
  is trained again on every click before that part (continuing from the previous one, with the
  vocabulary grown; ``oracle_epochs`` epochs at ``oracle_lr``: its budget), and recommends what
  the worker would (same history, same masking of the last L items).

Every post-T click is scored against the recommendation its user held (prequential HR@10 /
NDCG@10, per slice and overall); new items are followed from their first click to their first
appearance in a published top-10. The frozen arm is also recomputed offline: the two must agree,
which checks the scorer and the worker at once. Each arm's recommendations are saved as JSON lines
(``recs-<arm>.jsonl``, the topic's messages) next to the stream (``stream.jsonl``), so an
independent scorer can recompute every figure.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from confluent_kafka import Consumer, Producer, TopicPartition

from bench.online_split import (
    NEVER,
    Figures,
    TimeSplit,
    new_item_delays,
    quantile_or_never,
    score,
    time_split,
)
from bench.scrape import sample_values
from bench.table import judge, markdown
from model.checkpoint import load_checkpoint, read_manifest
from model.data import load_dataset
from model.finetune import finetune, grow_vocabulary, item_contexts, to_indices
from model.glintru import GlintRU
from model.train import TrainConfig, train
from model.weighting import TargetWeighting
from stream.broker import Broker, free_port
from stream.clicks import Click
from stream.finetune import recent_clicks
from stream.finetune_store import StoredClick
from stream.produce import producer_config
from stream.settings import Settings, load_settings
from stream.testkit import GLINTSTREAM, WorkerProcess, private_worker_env, settings_env
from stream.topics import ensure_topics, poll_batch

log = logging.getLogger(__name__)

ARMS = ("frozen", "finetuned", "oracle")
K = 10
LINGER_MS = 20  # a slice goes out in a few record batches per partition (the broker's envelope)
WAIT_S = 0.1  # how often progress is checked while waiting
STALL_S = 180.0  # no progress for this long: the arm failed (and says what it waited for)
READ_MAX, READ_WAIT_S = 5000, 0.2
QUICK_USERS, QUICK_TRAIN_MINUTES = 40, 0.1
OFFLINE_USERS = 64  # users per offline forward pass
# Targets (issue #14): fine-tuned vs frozen and vs the oracle; new items' delay.
TARGET_GAIN = 0.05
TARGET_SLICE_FLOOR = -0.01
TARGET_OF_ORACLE = 0.90
TARGET_NEW_ITEM_MEDIAN = 2000.0


@dataclass(frozen=True)
class OnlineBenchConfig:
    dataset: str = "ml-1m"
    fraction: float = 0.8  # T: when this share of the clicks have happened
    init_from: Path | None = None  # the starting checkpoint; None: train one on the pre-T clicks
    train_minutes: float = 30.0  # its budget
    users: int | None = None  # only the first N users who click after T
    slices: int = 10  # scoring slices of the post-T stream
    oracle_slices: int = 5
    oracle_epochs: float = 1.0
    # the oracle continues training as `glintstream train` trains
    oracle_lr: float = TrainConfig.lr
    oracle_batch_size: int = TrainConfig.batch_size
    oracle_weighting: TargetWeighting = TrainConfig.target_weighting
    partitions: int = 8
    arms: tuple[str, ...] = ARMS
    bootstrap_servers: str | None = None  # None: a private embedded broker
    finetune: dict[str, str] = field(default_factory=dict)  # job settings, e.g. {"steps": "50"}
    # the workers' settings in every arm, e.g. {"fresh_share": "1.0"}
    worker: dict[str, str] = field(default_factory=dict)
    work_dir: Path = Path(".run/bench-online")
    threads: int = 2

    def __post_init__(self) -> None:
        unknown = set(self.arms) - set(ARMS)
        if unknown or not self.arms:
            raise ValueError(f"arms must be some of {', '.join(ARMS)}, got {self.arms}")

    def quick(self) -> OnlineBenchConfig:
        """The <= 2 minute version: a few users (and only their clicks), one short training
        epoch, few slices."""
        return replace(
            self,
            users=min(self.users or QUICK_USERS, QUICK_USERS),
            train_minutes=min(self.train_minutes, QUICK_TRAIN_MINUTES),
            slices=min(self.slices, 3),
            oracle_slices=min(self.oracle_slices, 2),
        )


@dataclass
class ArmResult:
    overall: Figures
    slices: list[Figures]
    new_items: dict[str, float]  # item -> stream clicks until it reached a top-10
    seconds: float
    notes: list[str] = field(default_factory=list)  # e.g. the fine-tune runs by outcome

    def new_item_quantile(self, q: float) -> float:
        return quantile_or_never(list(self.new_items.values()), q)


@dataclass
class OnlineBenchResult:
    split: TimeSplit
    arms: dict[str, ArmResult] = field(default_factory=dict)
    frozen_offline_agreement: float | None = None  # share of identical top-10 lists
    start_checkpoint: str = ""
    failed: str = ""
    topics: dict[str, str] = field(default_factory=dict)  # arm -> its recommendations topic
    seconds: float = 0.0

    def rows(self) -> list[tuple[str, str, str]]:
        s = self.split
        rows = [("FAILED", self.failed, "")] if self.failed else []
        new = s.new_items()
        post_new = sum(c.item in new for c in s.stream[s.warmup :])
        rows += [
            ("starting checkpoint", self.start_checkpoint, ""),
            (
                "stream: warm-up / post-T clicks / scored",
                f"{s.warmup:,} / {s.post:,} / {len(s.scored()):,}",
                "",
            ),
            (
                "post-T clicks on items unknown at T (items)",
                f"{post_new / max(s.post, 1):.2%} ({len(new)})",
                "",
            ),
        ]
        frozen = self.arms.get("frozen")
        for name, arm in self.arms.items():
            rows.append(
                (f"{name}: prequential HR@10 / NDCG@10", arm.overall.row(), "; ".join(arm.notes))
            )
        tuned, oracle = self.arms.get("finetuned"), self.arms.get("oracle")
        if frozen and tuned:
            gain = tuned.overall.ndcg / frozen.overall.ndcg - 1
            rows.append(
                (
                    "fine-tuned vs frozen, NDCG@10",
                    f"{gain:+.1%}",
                    judge(gain >= TARGET_GAIN, f">= {TARGET_GAIN:+.0%}"),
                )
            )
            worst = min(
                t.ndcg / f.ndcg - 1 for t, f in zip(tuned.slices, frozen.slices) if f.ndcg > 0
            )
            rows.append(
                (
                    "fine-tuned vs frozen, worst slice",
                    f"{worst:+.1%}",
                    judge(worst >= TARGET_SLICE_FLOOR, f">= {TARGET_SLICE_FLOOR:+.0%}"),
                )
            )
        if tuned and oracle:
            share = tuned.overall.ndcg / oracle.overall.ndcg
            rows.append(
                (
                    "fine-tuned / oracle, NDCG@10",
                    f"{share:.1%}",
                    judge(share >= TARGET_OF_ORACLE, f">= {TARGET_OF_ORACLE:.0%}"),
                )
            )
        for name, arm in self.arms.items():
            if not arm.new_items:
                continue
            median, p90 = arm.new_item_quantile(50), arm.new_item_quantile(90)
            never = sum(d == NEVER for d in arm.new_items.values())
            rows.append(
                (
                    f"{name}: new items, stream clicks to a top-10: median / p90 (never)",
                    f"{_clicks(median)} / {_clicks(p90)} ({never} of {len(arm.new_items)})",
                    judge(
                        median <= TARGET_NEW_ITEM_MEDIAN, f"median <= {TARGET_NEW_ITEM_MEDIAN:,.0f}"
                    )
                    if name == "finetuned"
                    else "",
                )
            )
        if self.frozen_offline_agreement is not None:
            rows.append(
                (
                    "frozen: online top-10 lists equal to the offline recomputation",
                    f"{self.frozen_offline_agreement:.2%}",
                    "",
                )
            )
        rows.append(("benchmark wall time (s)", f"{self.seconds:.0f}", ""))
        return rows

    def table(self) -> str:
        return markdown(self.rows())

    def slice_table(self) -> str:
        bounds = self.split.slice_bounds(len(next(iter(self.arms.values())).slices))
        names = list(self.arms)
        lines = [
            "| slice | first click (UTC) | clicks scored | " + " | ".join(names) + " |",
            "|---|---|---:|" + "---:|" * len(names),
        ]
        for n, (a, _) in enumerate(bounds):
            day = time.strftime("%Y-%m-%d", time.gmtime(self.split.stream[a].ts))
            scored = next(iter(self.arms.values())).slices[n].clicks
            cells = " | ".join(f"{self.arms[k].slices[n].ndcg:.4f}" for k in names)
            lines.append(f"| {n + 1} | {day} | {scored:,} | {cells} |")
        return "\n".join(lines)


def _clicks(delay: float) -> str:
    return "never" if delay == NEVER else "n/a" if math.isnan(delay) else f"{delay:,.0f}"


# ----------------------------------------------------------------------------- offline models
@torch.no_grad()
def offline_recs(
    model: GlintRU, vocab: list[str], split: TimeSplit, positions: np.ndarray
) -> dict[int, list[str]]:
    """The top-K the worker would publish after each click at ``positions`` (stream indices):
    the user's stream up to it, items unknown to ``model`` dropped (the worker dead-letters them
    and publishes nothing for them), the last L known items masked. Needs a model that chunks."""
    if not model.chunks:
        raise ValueError("offline recommendations need a model that chunks (glintru-streaming)")
    index = {item: i for i, item in enumerate(vocab) if i > 0}
    last: dict[str, int] = {}
    for p in positions:
        user = split.stream[int(p)].user
        last[user] = max(last.get(user, -1), int(p))
    clicks: dict[str, list[int]] = {u: [] for u in last}  # stream indices of known items
    for i, c in enumerate(split.stream):
        if c.user in last and i <= last[c.user] and c.item in index:
            clicks[c.user].append(i)
    wanted = {int(p) for p in positions}
    L = model.max_len
    recs: dict[int, list[str]] = {}
    users = list(clicks)
    for start in range(0, len(users), OFFLINE_USERS):
        rows_of = [
            np.asarray(clicks[u], dtype=np.int64) for u in users[start : start + OFFLINE_USERS]
        ]
        lengths = torch.tensor([len(r) for r in rows_of])
        seq = torch.zeros(len(rows_of), max(int(lengths.max()), 1), dtype=torch.long)
        for r, idx in enumerate(rows_of):
            seq[r, : len(idx)] = torch.tensor([index[split.stream[int(i)].item] for i in idx])
        state = model.init_state(len(rows_of))
        for at in range(0, seq.size(1), L):
            rows = (lengths > at).nonzero().squeeze(1)
            n = (lengths[rows] - at).clamp(max=L)
            chunk = seq[rows, at : at + L]
            targets = [
                (r, j)
                for k, r in enumerate(rows.tolist())
                for j in range(int(n[k]))
                if int(rows_of[r][at + j]) in wanted
            ]
            out, state[rows] = model.streaming_chunk(
                chunk, n, state[rows], with_outputs=bool(targets)
            )
            if not targets:
                continue
            where = {r: k for k, r in enumerate(rows.tolist())}
            vectors = torch.stack([out[where[r], j] for r, j in targets])  # type: ignore[index]
            scores = model.logits(vectors)
            for t, (r, j) in enumerate(targets):
                scores[t, seq[r, max(0, at + j + 1 - L) : at + j + 1]] = float("-inf")
            top = scores.topk(K, dim=1).indices.tolist()
            for (r, j), items in zip(targets, top):
                recs[int(rows_of[r][at + j])] = [vocab[i] for i in items]
    return recs


def history_before(split: TimeSplit, stop: int) -> list[list[str]]:
    """Every click before stream index ``stop`` (at or after the warm-up): the pre-T clicks of all
    users plus the post-T stream up to it, per user, as external ids."""
    before = split.before
    vocab = np.asarray(before.vocab, dtype=object)
    seqs = {u: vocab[s].tolist() for u, s in zip(before.users, before.sequences)}
    for c in split.stream[split.warmup : stop]:
        seqs.setdefault(c.user, []).append(c.item)
    return list(seqs.values())


def previous_clicks(split: TimeSplit, scored: np.ndarray) -> np.ndarray:
    """For each scored click, the stream index of its user's click before it."""
    last: dict[str, int] = {}
    prev = {}
    for i, c in enumerate(split.stream):
        if c.user in last:
            prev[i] = last[c.user]
        last[c.user] = i
    return np.asarray([prev[int(i)] for i in scored], dtype=np.int64)


# ----------------------------------------------------------------------------- Kafka plumbing
class Answers(threading.Thread):
    """Reads the recommendations and dead letters of one arm from the start, on a thread."""

    def __init__(self, settings: Settings, recs_topic: str, dlq_topic: str) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer(
            settings.kafka.confluent_consumer_config(
                f"bench-online-reader-{recs_topic}", **{"enable.auto.commit": False}
            )
        )
        self.topics = (recs_topic, dlq_topic)
        self.recs: dict[int, dict] = {}  # stream index -> the recommendation message
        self.dead: set[tuple[int, int]] = set()  # the dead-lettered clicks
        self._stopping = threading.Event()

    @property
    def answered(self) -> int:
        return len(self.recs) + len(self.dead)

    def run(self) -> None:
        assigned = []
        for topic in self.topics:
            parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
            assigned += [TopicPartition(topic, p, 0) for p in parts]
        self.consumer.assign(assigned)
        while not self._stopping.is_set():
            for msg in poll_batch(self.consumer, READ_MAX, READ_WAIT_S):
                raw = msg.value()
                if msg.error() is not None or raw is None:
                    continue
                value = json.loads(raw)
                if msg.topic() == self.topics[0]:
                    self.recs[int(value["event_id"])] = value
                else:
                    self.dead.add((value["click"]["partition"], value["click"]["offset"]))
        self.consumer.close()

    def stop(self) -> None:
        self._stopping.set()
        self.join()


def _at_least(count: Callable[[], dict[str, float]], n: int) -> bool:
    return sum(count().values()) >= n


def _equals(value: Callable[[], float | None], wanted: float) -> bool:
    return value() == wanted


def _wait(
    what: str, done: Callable[[], bool], progress: Callable[[], object], procs: list[WorkerProcess]
) -> None:
    """Wait for ``done()``; fail loudly if a process exits or ``progress()`` stalls."""
    seen, since = progress(), time.monotonic()
    while not done():
        for p in procs:
            if p.proc is not None and p.proc.poll() is not None:
                raise RuntimeError(f"{p.worker_id} exited while waiting for {what}:\n{p.tail()}")
        now = progress()
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since > STALL_S:
            raise RuntimeError(
                f"no progress for {STALL_S:.0f} s waiting for {what} (at {seen}); the embedded "
                "broker stops serving Fetch once a partition holds ~25,000 record batches "
                "(README, Embedded broker)"
            )
        time.sleep(WAIT_S)


class OnlineBench:
    def __init__(self, config: OnlineBenchConfig) -> None:
        self.config = config
        self.split = time_split(load_dataset(config.dataset), config.fraction, config.users)
        self.work = config.work_dir
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.run_id = f"{int(time.time())}"  # unique topic names on a shared cluster
        self.result = OnlineBenchResult(self.split)
        self.values = [
            Click(c.user, c.item, c.ts, event_id=str(i)).to_json()
            for i, c in enumerate(self.split.stream)
        ]

    def run(self) -> OnlineBenchResult:
        started = time.monotonic()
        self._save_stream()
        checkpoint = self._start_checkpoint()
        self.result.start_checkpoint = str(checkpoint)
        try:
            online = [a for a in self.config.arms if a != "oracle"]
            if online:
                if self.config.bootstrap_servers:
                    self._online(online, self.config.bootstrap_servers, checkpoint)
                else:
                    with Broker(port=0, run_dir=self.work / "broker") as broker:
                        self._online(online, broker.bootstrap_servers, checkpoint)
            if "oracle" in self.config.arms:
                self._oracle(checkpoint)
        except (RuntimeError, TimeoutError) as e:
            self.result.failed = str(e).splitlines()[0]
            log.error("bench online failed: %s", e)
        self.result.seconds = time.monotonic() - started
        return self.result

    # -------------------------------------------------------------- the starting checkpoint
    def _start_checkpoint(self) -> Path:
        c, before = self.config, self.split.before
        if c.init_from is not None:
            vocab = read_manifest(c.init_from)["vocab"]
            leaked = set(vocab[1:]) & self.split.new_items()
            if leaked:
                raise ValueError(
                    f"{c.init_from} knows {len(leaked)} items first clicked after T: it was "
                    "trained on clicks after T"
                )
            return c.init_from
        out = self.work / "start-checkpoint"
        log.info("training the starting checkpoint on %d clicks before T", before.num_clicks)
        train(
            TrainConfig(
                dataset=c.dataset,
                model="glintru-streaming",
                out_dir=out,
                max_minutes=c.train_minutes,
                threads=c.threads,
                progress=False,
            ),
            data=before,
        )
        return out

    # -------------------------------------------------------------- online arms
    def _online(self, arms: list[str], bootstrap: str, checkpoint: Path) -> None:
        for arm in arms:
            began = time.monotonic()
            answers, notes = self._serve(arm, bootstrap, checkpoint)
            recs = {i: m["items"] for i, m in answers.items()}
            with (self.work / f"recs-{arm}.jsonl").open("w") as f:
                for i in sorted(answers):
                    f.write(json.dumps(answers[i]) + "\n")
            self._score(arm, recs, time.monotonic() - began, notes)

    def _score(
        self, arm: str, recs: dict[int, list[str]], seconds: float, notes: list[str]
    ) -> None:
        overall, slices = score(self.split, recs, self.config.slices)
        delays = new_item_delays(self.split, recs)
        self.result.arms[arm] = ArmResult(overall, slices, delays, seconds, notes)
        log.info("%s: HR@10 / NDCG@10 %s", arm, overall.row())

    def _serve(
        self, arm: str, bootstrap: str, checkpoint: Path
    ) -> tuple[dict[int, dict], list[str]]:
        c, split = self.config, self.split
        root = self.work / arm
        worker_metrics, job_metrics = free_port(), free_port()
        env, topics = private_worker_env(
            bootstrap,
            root,
            lambda prefix: f"online-{self.run_id}-{arm}-{prefix}",
            GLINTSTREAM_CHECKPOINT_DIR=checkpoint.resolve(),
            GLINTSTREAM_PARTITIONS=c.partitions,
            GLINTSTREAM_METRICS_PORT=worker_metrics,
            GLINTSTREAM_FINETUNE_METRICS_PORT=job_metrics,
            **settings_env({f"finetune_{k}": v for k, v in c.finetune.items()}),
            **settings_env(c.worker),
        )
        settings = load_settings(
            kafka_bootstrap_servers=bootstrap,
            state_dir=root / "state",
            **{f"finetune_{k}": v for k, v in c.finetune.items()},
        )
        ensure_topics(
            settings, [topics["clicks"], topics["recommendations"], topics["dlq"]], c.partitions
        )
        self.result.topics[arm] = topics["recommendations"]
        answers = Answers(settings, topics["recommendations"], topics["dlq"])
        answers.start()
        worker = WorkerProcess(env, f"worker-{arm}", root.parent).start()
        procs = [worker]
        producer = Producer(producer_config(settings, LINGER_MS))
        sent = 0
        notes: list[str] = []

        def send(stop: int) -> list[tuple[int, int]]:
            nonlocal sent
            where: list[tuple[int, int]] = [(-1, -1)] * (stop - sent)
            base = sent

            def delivered(i: int) -> Callable:
                def report(err: object, msg: object) -> None:
                    if err is not None:
                        raise RuntimeError(f"click {i} not delivered: {err}")
                    where[i - base] = (msg.partition(), msg.offset())  # type: ignore[attr-defined]

                return report

            for i in range(sent, stop):
                key = split.stream[i].user.encode()
                while True:
                    try:
                        producer.produce(
                            topics["clicks"], self.values[i], key, on_delivery=delivered(i)
                        )
                        break
                    except BufferError:
                        producer.poll(0.05)
            if producer.flush(120):
                raise RuntimeError(f"clicks {sent}..{stop} not delivered in 120 s")
            sent = stop
            _wait(
                f"the worker's answers to clicks up to {stop:,}",
                lambda: answers.answered >= stop,
                lambda: answers.answered,
                procs,
            )
            return where

        try:
            worker.wait_ready(timeout=120)
            warm = send(split.warmup)
            log.info("%s: warm-up of %d clicks answered", arm, split.warmup)
            if arm == "frozen":
                send(len(split.stream))
            else:
                self._seed_job(settings, warm)
                job = WorkerProcess(env, f"finetune-{arm}", root.parent, [GLINTSTREAM, "finetune"])
                procs.append(job.start())
                self._paced(settings, send, worker_metrics, job_metrics, procs, notes)
        finally:
            for p in reversed(procs):
                p.stop_quietly()
            answers.stop()
        return answers.recs, notes

    def _seed_job(self, settings: Settings, warm: list[tuple[int, int]]) -> None:
        """The job's store starts as if it had been running before T: the pre-T clicks of the
        users who do not click after T, then the warm-up clicks at their Kafka positions (so
        the job counts them as already stored when it reads them: they start no run)."""
        before, streamed = self.split.before, {c.user for c in self.split.stream}
        vocab = np.asarray(before.vocab, dtype=object)
        quiet = [
            (float(ts[-1]), user, vocab[seq].tolist())
            for user, seq, ts in zip(before.users, before.sequences, before.timestamps or [])
            if user not in streamed
        ]
        store = recent_clicks(settings)
        try:
            store.add_history([(user, items) for _, user, items in sorted(quiet)])
            store.add(
                [
                    StoredClick(p, o, c.user, c.item)
                    for (p, o), c in zip(warm, self.split.stream[: self.split.warmup])
                ]
            )
        finally:
            store.close()

    def _paced(
        self,
        settings: Settings,
        send: Callable[[int], object],
        worker_port: int,
        job_port: int,
        procs: list[WorkerProcess],
        notes: list[str],
    ) -> None:
        """The post-T stream in slices of the job's ``every_clicks``; after each, the job's run
        and the worker serving what it published."""
        split, every = self.split, settings.finetune.every_clicks
        job_url = f"http://127.0.0.1:{job_port}/metrics"
        worker_url = f"http://127.0.0.1:{worker_port}/metrics"

        def runs() -> dict[str, float]:
            try:
                values = sample_values(job_url, "glintstream_finetune_runs_total")
            except OSError:  # not serving yet
                return {}
            return {dict(labels)["outcome"]: v for labels, v in values.items()}

        def scalar(url: str, name: str) -> float | None:
            try:
                return next(iter(sample_values(url, name).values()), None)
            except OSError:
                return None

        def served() -> float | None:
            return scalar(worker_url, "glintstream_model_version")

        edges = list(range(split.warmup + every, len(split.stream), every)) + [len(split.stream)]
        for n, stop in enumerate(edges, start=1):
            send(stop)
            if stop == len(split.stream):
                break  # the last run would serve no click
            _wait(f"fine-tune run {n}", partial(_at_least, runs, n), runs, procs)
            version = scalar(job_url, "glintstream_finetune_last_published_version")
            if version:
                _wait(
                    f"the worker serving v{version:.0f}",
                    partial(_equals, served, version),
                    served,
                    procs,
                )
            log.info("slice %d/%d: fine-tune runs %s, serving v%s", n, len(edges), runs(), version)
        notes.append(
            "fine-tune runs: " + ", ".join(f"{int(v)} {k}" for k, v in runs().items() if v)
        )

    # -------------------------------------------------------------- offline arms
    def _oracle(self, checkpoint: Path) -> None:
        c, split = self.config, self.split
        began = time.monotonic()
        model, manifest = load_checkpoint(checkpoint)
        if not isinstance(model, GlintRU):
            raise TypeError(f"the oracle retrains GLINT-RU models, not {manifest['kind']}")
        scored = split.scored()
        prev = previous_clicks(split, scored)
        if "frozen" in self.result.arms:
            online = {i: m for i, m in self._read_recs("frozen").items()}
            offline = offline_recs(model, manifest["vocab"], split, prev)
            same = [online.get(int(p)) == offline.get(int(p)) for p in prev if int(p) in offline]
            self.result.frozen_offline_agreement = float(np.mean(same)) if same else None
        torch.set_num_threads(c.threads)
        vocab: list[str] = list(manifest["vocab"])
        recs: dict[int, list[str]] = {}
        steps_total = 0
        for s, (a, b) in enumerate(split.slice_bounds(c.oracle_slices)):
            if s > 0:
                history = history_before(split, a)
                known = set(vocab)
                added = list(dict.fromkeys(i for h in history for i in h if i not in known))
                contexts = item_contexts(model, vocab, history, added)
                model, vocab = grow_vocabulary(model, vocab, added, seed=s, contexts=contexts)
                sequences = to_indices(history, vocab)
                steps = math.ceil(c.oracle_epochs * len(sequences) / c.oracle_batch_size)
                model = finetune(
                    model,
                    sequences,
                    steps,
                    c.oracle_lr,
                    batch_size=c.oracle_batch_size,
                    seed=s,
                    weighting=c.oracle_weighting,
                )
                steps_total += steps
                log.info(
                    "oracle: retrained before slice %d (%d steps, +%d items)",
                    s + 1,
                    steps,
                    len(added),
                )
            inside = (scored >= a) & (scored < b)
            recs.update(offline_recs(model, vocab, split, prev[inside]))
        self._score(
            "oracle",
            recs,
            time.monotonic() - began,
            [
                f"retrained before each of {c.oracle_slices} parts on every earlier click: "
                f"{c.oracle_epochs:g} epoch(s) at lr {c.oracle_lr:g}, batch {c.oracle_batch_size} "
                f"({steps_total} steps in all)"
            ],
        )

    def _read_recs(self, arm: str) -> dict[int, list[str]]:
        with (self.work / f"recs-{arm}.jsonl").open() as f:
            return {int(m["event_id"]): m["items"] for m in map(json.loads, f)}

    def _save_stream(self) -> None:
        with (self.work / "stream.jsonl").open("wb") as f:
            for value in self.values:
                f.write(value + b"\n")
        (self.work / "split.json").write_text(
            json.dumps(
                {"t": self.split.t, "warmup": self.split.warmup, "dataset": self.config.dataset}
            )
        )
