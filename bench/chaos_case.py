"""One chaos case (see ``bench/chaos.py``): its topics, workers, producer and output readers,
what happened to them, and the verdict against the clean run."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from confluent_kafka import KafkaException

from bench.junk import Junk
from stream.testkit import (
    ClickProducer,
    Ledger,
    TopicReader,
    WorkerProcess,
    read_log,
    stored_records,
    worker_env,
)
from stream.user_record import UserRecord

log = logging.getLogger(__name__)

VEC_TOL = 1e-6  # absolute, on the float32 state vector
MAX_CLICK_BYTES = 4096  # the worker's default `max_click_bytes`
SESSION_TIMEOUT_S = 6  # Tansu holds a JoinGroup for half of it: short keeps rejoins fast
WORKER_STOP_TIMEOUT_S = 30
EXCEPTION_LINE = re.compile(r"^[\w.]*(?:Error|Exception): .*$", re.MULTILINE)  # traceback ends
CAUSE_CHARS = 160
LOG_READ_TIMEOUT_S = 60  # reading a topic back to see what the broker still holds
EVENTS = Sequence[tuple[float, str, int]]  # (ts, user, item index), in time order


@dataclass(frozen=True)
class ChaosConfig:
    """Sizes of one chaos run; the defaults are the full benchmark."""

    dataset: str = "synthetic"
    max_clicks: int = 20_000  # the first clicks of the dataset in time order
    users: int = 600  # synthetic data only
    items: int = 400
    min_len: int = 10
    max_len: int = 60
    hidden: int = 32  # an untrained model: reliability, not accuracy, is under test
    window: int = 50
    variant: str = "streaming"  # records carry the vector everywhere (changelog included)
    kills: int = 20
    junk: int = 10_000
    partitions: int = 4
    batch_max_size: int = 64  # small batches: a kill lands between many commits
    seed: int = 0
    step_timeout_s: float = 180.0  # the longest wait for any one step of a case
    # Outputs stopped coming: the rest may never come (a click the broker lost has no output).
    # Longer than a worker restart with its group join, so a crash is not mistaken for the end.
    stall_s: float = 60.0
    cases: tuple[str, ...] = ("kill", "junk", "broker", "rebalance")
    restart_engine: str = "s3"  # case (c); "memory" shows what the default engine loses
    s3rver: str | None = None  # case (c): this s3rver binary (npm) instead of moto's server
    parallel: bool = False  # run the cases at once (the short test); their times then overlap


@dataclass
class CaseResult:
    case: str
    clicks: int
    broker_lost: int = 0  # acked clicks the broker no longer holds (not the worker's doing)
    changelog_holes: int = 0  # state changelog offsets the broker holds no record for
    lost: int = 0  # clicks the broker holds that are missing from the user's stored n
    double: int = 0  # applied more than once
    no_rec: int = 0  # acked clicks with no recommendation
    mismatched: int = 0  # users whose stored record differs from the clean run's
    max_diff: float = 0.0  # largest |vec - clean vec|
    crashes: int = 0  # worker exits nobody asked for (or a non-zero exit on SIGTERM)
    unacked: int = 0  # produce calls the broker never acked
    dlq: int | None = None  # junk found in the DLQ (case b)
    injected: int | None = None
    dlq_reasons: Counter[str] = field(default_factory=Counter)
    dlq_wrong_reason: int = 0
    timed_out: list[str] = field(default_factory=list)
    crash_log: Path | None = None  # the crashed workers' log tails
    crash_causes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        broker_ok = not (self.broker_lost or self.changelog_holes or self.unacked)
        return broker_ok and self.worker_passed and not self.timed_out

    @property
    def worker_passed(self) -> bool:
        """The worker's share: what it lost, applied twice or left unserved of what the broker
        still holds, its crashes and the junk; the broker's own losses aside."""
        junk_ok = self.dlq == self.injected and self.dlq_wrong_reason == 0
        worker_ok = not (self.lost or self.double or self.no_rec or self.mismatched)
        return worker_ok and junk_ok and self.crashes == 0


class CaseRun:
    """A case's topics, workers, producer and readers, and the bookkeeping of what happened."""

    def __init__(
        self,
        name: str,
        bootstrap: str,
        root: Path,
        checkpoint: Path,
        vocab: list[str],
        config: ChaosConfig,
        worker_settings: dict[str, object] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.bootstrap = bootstrap
        self.root = root / name
        suffix = f"{name}-{uuid.uuid4().hex[:6]}"
        self.topics = {t: f"{t}-{suffix}" for t in ("clicks", "recs", "dlq", "changelog")}
        self.env = worker_env(
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            GLINTSTREAM_TOPIC_CLICKS=self.topics["clicks"],
            GLINTSTREAM_TOPIC_RECOMMENDATIONS=self.topics["recs"],
            GLINTSTREAM_TOPIC_DLQ=self.topics["dlq"],
            GLINTSTREAM_TOPIC_STATE_CHANGELOG=self.topics["changelog"],
            GLINTSTREAM_PARTITIONS=config.partitions,
            GLINTSTREAM_WORKER_APP_ID=f"chaos-{suffix}",
            GLINTSTREAM_STATE_DIR=self.root / "state",
            GLINTSTREAM_REGISTRY_DIR=self.root / "registry",
            GLINTSTREAM_CHECKPOINT_DIR=checkpoint,
            GLINTSTREAM_METRICS_PORT=0,
            GLINTSTREAM_BATCH_MAX_SIZE=config.batch_max_size,
            GLINTSTREAM_MAX_CLICK_BYTES=MAX_CLICK_BYTES,
            GLINTSTREAM_WORKER_SESSION_TIMEOUT_S=SESSION_TIMEOUT_S,
            GLINTSTREAM_DEVICE="cpu",
            **{f"GLINTSTREAM_{k.upper()}": v for k, v in (worker_settings or {}).items()},
        )
        self.root.mkdir(parents=True)
        self.ledger = Ledger()
        # Idempotent: librdkafka's retries across a broker restart neither duplicate nor reorder.
        self.producer = ClickProducer(
            bootstrap,
            self.topics["clicks"],
            vocab,
            self.ledger,
            strict=False,
            config={"enable.idempotence": True, "linger.ms": 5},
        )
        self.workers: dict[str, WorkerProcess] = {}
        self.up: set[str] = set()  # workers that should be running
        self.crash_logs: list[str] = []
        self.crash_causes: Counter[str] = Counter()  # the last exception each crash logged
        self.crashes = 0
        self.served: set[tuple[int, int]] = set()
        self.dead: dict[tuple[int, int], dict] = {}  # DLQ records by (partition, offset)
        self.expected_reasons: Counter[str] = Counter()
        self.timed_out: list[str] = []
        self.changelog_holes = 0
        self.recs: TopicReader | None = None
        self.dlq: TopicReader | None = None
        self.started = time.monotonic()

    # workers

    def start(self, worker_id: str, wait_ready: bool = True) -> WorkerProcess:
        worker = self.workers.setdefault(worker_id, WorkerProcess(self.env, worker_id, self.root))
        worker.start()
        self.up.add(worker_id)
        if wait_ready:
            self.wait(lambda: "[^Worker]: Ready" in worker.log(), f"{worker_id} ready")
        if self.recs is None:  # the first worker created the topics
            self.recs = TopicReader(self.bootstrap, self.topics["recs"])
            self.dlq = TopicReader(self.bootstrap, self.topics["dlq"])
        return worker

    def kill9(self, worker_id: str) -> None:
        self.up.discard(worker_id)
        self.workers[worker_id].kill9()

    def stop(self, worker_id: str) -> None:
        """SIGTERM: a clean stop must exit 0, anything else counts as a crash."""
        self.up.discard(worker_id)
        try:
            rc = self.workers[worker_id].terminate(WORKER_STOP_TIMEOUT_S)
        except Exception:  # hung: kill it, and count it
            self.workers[worker_id].stop_quietly()
            rc = -1
        if rc != 0:
            self._crashed(worker_id, f"exit {rc} on SIGTERM")

    def _crashed(self, worker_id: str, why: str) -> None:
        self.crashes += 1
        log_text = self.workers[worker_id].log()
        self.crash_logs.append(f"{worker_id}: {why}\n{self.workers[worker_id].tail()}")
        errors = EXCEPTION_LINE.findall(log_text)
        self.crash_causes[errors[-1][:CAUSE_CHARS] if errors else why] += 1

    def _supervise(self) -> None:
        """Count and restart a worker that exited on its own, as a supervisor would."""
        for worker_id in list(self.up):
            proc = self.workers[worker_id].proc
            if proc is not None and proc.poll() is not None:
                self._crashed(worker_id, f"exited with {proc.returncode}")
                self.start(worker_id, wait_ready=False)

    # input

    def produce(self, events: EVENTS, junk: Sequence[Junk] = (), spread_s: float = 0.0) -> None:
        """Clicks in order, the junk spread evenly among them, the clicks spread evenly over
        ``spread_s`` seconds (0: as fast as possible); waits for every ack."""
        every = max(1, len(events) // max(1, len(junk)))
        pending = list(reversed(junk))
        start, i = time.monotonic(), 0
        try:
            for i, (ts, user, item) in enumerate(events):
                self.producer.click(user, item, ts)
                if pending and i % every == 0:
                    self._junk(pending.pop())
                if (
                    spread_s
                    and (ahead := start + spread_s * i / len(events) - time.monotonic()) > 0
                ):
                    time.sleep(ahead)
            while pending:
                self._junk(pending.pop())
            # librdkafka retries until the broker is back (message.timeout.ms); never give up early
            left = self.producer.flush(self.config.step_timeout_s)
        except KafkaException as e:
            # A fatal producer error, raised by produce() or by flush(): the broker forgot the
            # idempotent producer's sequence numbers (Tansu's s3:// engine, during or even
            # before a restart). It ends this producer: one failure, the case's verdict counts it.
            self.ledger.failed.append(f"producer failed after {i} of {len(events)} clicks: {e}")
            log.error("%s: %s", self.name, self.ledger.failed[-1])
            return
        self.ledger.failed += [f"not acked in {self.config.step_timeout_s}s"] * left

    def _junk(self, junk: Junk) -> None:
        self.expected_reasons[junk.reason] += 1
        self.producer.junk(junk.key, junk.value)

    @contextmanager
    def producing(self, events: EVENTS, spread_s: float = 0.0) -> Iterator[None]:
        """Produce ``events`` in the background while the body runs."""
        kwargs = {"spread_s": spread_s}
        thread = threading.Thread(target=self.produce, args=(events,), kwargs=kwargs, daemon=True)
        thread.start()
        try:
            yield
        finally:
            thread.join()

    # output

    def _read(self) -> None:
        assert self.recs is not None and self.dlq is not None
        for msg in self.recs.poll():
            self._record("recs", msg.value())
        for msg in self.dlq.poll(0):
            self._record("dlq", msg.value())

    def _record(self, topic: str, value: bytes | None) -> None:
        assert value is not None
        out = json.loads(value)
        tp = (out["click"]["partition"], out["click"]["offset"])
        if topic == "recs":
            self.served.add(tp)
        else:
            self.dead[tp] = out

    def wait(self, done: Callable[[], bool], what: str, stall_s: float | None = None) -> bool:
        """Read outputs and supervise until ``done()``; a timeout is recorded, not raised.

        With ``stall_s``, also give up once no output has arrived for that long.
        """
        deadline = time.monotonic() + self.config.step_timeout_s
        seen, last_change = -1, time.monotonic()
        while not done():
            now = time.monotonic()
            if (outputs := len(self.served) + len(self.dead)) != seen:
                seen, last_change = outputs, now
            if now > deadline or (stall_s is not None and now - last_change > stall_s):
                self.timed_out.append(what)
                return False
            if self.recs is not None:
                self._read()
            else:
                time.sleep(0.1)
            self._supervise()
        return True

    def wait_served(self, count: int, what: str) -> None:
        self.wait(lambda: len(self.served) >= count, what)

    def everything_out(self) -> bool:
        clicks, junk = list(self.ledger.clicks), list(self.ledger.junk)
        return all(tp in self.served for tp in clicks) and all(tp in self.dead for tp in junk)

    # verdict

    def finish(
        self, clean: dict[str, UserRecord] | None, last_worker: str
    ) -> tuple[dict[str, UserRecord], CaseResult]:
        """Wait for every output, stop all workers (``last_worker`` last), compare its states."""
        if not self.wait(self.everything_out, "all outputs", stall_s=self.config.stall_s):
            # Did the readers miss something? Judge by what the output topics hold now.
            for topic in ("recs", "dlq"):
                held, _ = read_log(self.bootstrap, self.topics[topic], LOG_READ_TIMEOUT_S)
                for value in held.values():
                    self._record(topic, value)
        log_now, _ = read_log(self.bootstrap, self.topics["clicks"], LOG_READ_TIMEOUT_S)
        # A hole in the changelog (a record the broker lost) can stall a worker's catch-up.
        _, self.changelog_holes = read_log(
            self.bootstrap, self.topics["changelog"], LOG_READ_TIMEOUT_S
        )
        others = sorted(self.up - {last_worker})
        for worker_id in others + ([last_worker] if last_worker in self.up else []):
            self.stop(worker_id)
        for reader in (self.recs, self.dlq):
            if reader is not None:
                reader.close()
        records = stored_records(
            self.root / "state" / last_worker / "users", self.config.partitions
        )
        return records, self.result(records, clean, log_now)

    def _held_by_broker(self, log_now: dict[tuple[int, int], bytes | None]) -> Counter[str]:
        """Per user, the acked clicks the broker still holds, wherever: a worker must apply
        those. Compared byte for byte: a broker that lost its log may hold another click at the
        same offset, even one of the same user."""
        in_log = Counter(value for value in log_now.values() if value is not None)
        held: Counter[str] = Counter()
        for user, value in self.ledger.sent:
            if in_log[value] > 0:
                in_log[value] -= 1
                held[user] += 1
        return held

    def result(
        self,
        records: dict[str, UserRecord],
        clean: dict[str, UserRecord] | None,
        log_now: dict[tuple[int, int], bytes | None],
    ) -> CaseResult:
        # Produced clicks per user (all acked unless `unacked` says otherwise).
        acked = Counter({user: len(history) for user, history in self.ledger.histories.items()})
        r = CaseResult(self.name, clicks=acked.total(), crashes=self.crashes)
        held = self._held_by_broker(log_now)
        dropped = acked - held  # keeps only users who lost some
        r.broker_lost = dropped.total()
        r.changelog_holes = self.changelog_holes
        # The worker is judged on what the broker still holds: a click it dropped may or may not
        # have been applied first, so held <= n <= acked.
        for user in acked.keys() | records.keys():
            n = records[user].n if user in records else 0
            r.lost += max(0, held[user] - n)
            r.double += max(0, n - acked[user])
        # every click still at the offset it was acked at must have its recommendation
        r.no_rec = sum(
            tp not in self.served
            for tp, value in list(self.ledger.values.items())
            if log_now.get(tp) == value
        )
        r.unacked = len(self.ledger.failed)
        if clean is not None:  # users who lost a click in the broker cannot equal the clean run
            for user in (clean.keys() | records.keys()) - dropped.keys():
                diff = record_diff(clean.get(user), records.get(user))
                r.max_diff = max(r.max_diff, diff)
                r.mismatched += diff > VEC_TOL
        if self.ledger.junk:
            dead = [self.dead[tp] for tp in self.ledger.junk if tp in self.dead]
            r.injected, r.dlq = len(self.ledger.junk), len(dead)
            r.dlq_reasons = Counter(d["reason"] for d in dead if d.get("detail"))
            r.dlq_wrong_reason = sum((self.expected_reasons - r.dlq_reasons).values())
        r.timed_out = self.timed_out
        r.crash_causes = self.crash_causes
        if self.crash_logs:
            r.crash_log = self.root / "crashes.log"
            r.crash_log.write_text("\n\n".join(self.crash_logs))
        r.seconds = time.monotonic() - self.started
        return r


def record_diff(a: UserRecord | None, b: UserRecord | None) -> float:
    """0 when equal; inf when the exact parts differ; else the largest vector difference."""
    if a is None or b is None:
        return 0.0 if a is b else float("inf")
    if (a.n, a.model_version) != (b.n, b.model_version) or not np.array_equal(a.ring, b.ring):
        return float("inf")
    if a.vec is None or b.vec is None:
        return 0.0 if a.vec is b.vec else float("inf")
    return float(np.max(np.abs(a.vec - b.vec))) if len(a.vec) else 0.0
