"""`glintstream bench stream`: the worker measured end to end, the way its users see it.

One private Tansu broker on a free port; the dataset's clicks in time order go to one `clicks`
topic, and every system under test reads that same topic with its own consumer group and output
topic, one at a time (the machine is small, so nothing else runs during a measurement):

1. the floors: a confluent-kafka consume + produce loop and a faust pass-through agent
   (``bench.passthrough``) over the first ``throughput_clicks`` clicks;
2. the worker (``glintstream worker``, step mode): sustained throughput over the same clicks,
   pre-produced (first to last recommendation received), its CPU time per 1,000 clicks and peak
   RSS; then click->recommendation latency at fixed offered rates on the following clicks; then
   the rest of the replay at full speed, so every user's clicks but the held-out last one are
   applied: online (prequential) accuracy against the offline evaluation (``bench.prequential``);
3. the same worker in ``recompute`` mode (full forward over the window per click), and a SASRec
   checkpoint in recompute mode, over the first ``recompute_clicks`` clicks;
4. the faithful checkpoint, if given: the whole replay again, for its throughput and accuracy.

Latency = receipt of the recommendation by a consumer in this process - the moment this process
handed the click to its producer, matched by the click's (partition, offset); both clocks are
this process's ``time.monotonic()``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from confluent_kafka import Consumer, Producer, TopicPartition

from bench.passthrough import FIRST_INPUT_MARK
from bench.prequential import METRICS, Heldout, offline_metrics, online_metrics
from bench.procstat import cpu_seconds, peak_rss_bytes
from bench.scrape import histogram_totals
from bench.table import judge, markdown
from model.baselines import SASRec, SASRecConfig
from model.checkpoint import load_checkpoint, read_manifest, save_checkpoint
from model.data import SequenceData, load_dataset
from model.recommender import SequentialRecommender
from stream.broker import Broker, free_port
from stream.produce import Pacer, click_order, iter_clicks, producer_config
from stream.settings import Settings, load_settings
from stream.testkit import WorkerProcess, settings_env, worker_env
from stream.topics import ensure_topics, poll_batch

log = logging.getLogger(__name__)

CLICKS_TOPIC = "clicks"
SAMPLE_S = 0.05  # how often progress and CPU time are sampled while waiting
STALL_S = 90.0  # no new output for this long: the run failed
CONSUME_MAX = 1000
CONSUME_WAIT_S = 0.02  # short: receipt times are latency measurements
# The embedded broker answers a Fetch that finds no data only after waiting (README, Embedded
# broker), so the readers ask for a short wait: their own wait must not count as latency.
READER_FETCH_WAIT_MS = 10
# Small fetches, so that a fast system's outputs arrive in many receipts, not a few big ones:
# throughput is timed from the first receipt to the last.
READER_FETCH_BYTES = 16 * 1024
QUANTILES = (50, 95, 99)
MIB = 1024 * 1024
QUICK_USERS = 50  # --quick: ~8,000 ML-1M clicks, enough for every phase
# The targets the table judges (docs/benchmarks.md says where they come from).
TARGET_THROUGHPUT = 5000.0  # clicks/s on one 2-core CPU worker
TARGET_P99_MS, TARGET_P99_RATE = 50.0, 1000.0
TARGET_STEP_OVER_RECOMPUTE = 20.0
TARGET_OVER_FAUST = 0.8
TARGET_PREQUENTIAL_DIFF = 1e-6


@dataclass(frozen=True)
class StreamBenchConfig:
    checkpoint: Path  # the served model (GLINT-RU)
    faithful_checkpoint: Path | None = None  # the `window` policy, compared when given
    sasrec_checkpoint: Path | None = None  # None: a SASRec with random weights (speed only)
    dataset: str = "ml-1m"
    users: int | None = 1000  # the first N users (all of their clicks are replayed)
    throughput_clicks: int = 60_000
    recompute_clicks: int = 5_000
    rates: tuple[float, ...] = (500.0, 1000.0, 2000.0)
    rate_seconds: float = 15.0
    partitions: int = 4
    work_dir: Path = Path(".run/bench-stream")  # broker, state, logs and raw latencies
    plot: Path | None = Path("docs/figures/stream-latency.png")
    worker_settings: dict[str, str] = field(default_factory=dict)  # e.g. {"batch_max_ms": "5"}

    def quick(self) -> StreamBenchConfig:
        """The <= 1 minute version: fewer users and clicks, short rate phases."""
        return replace(
            self,
            users=min(self.users or QUICK_USERS, QUICK_USERS),
            throughput_clicks=3_000,
            recompute_clicks=600,
            rate_seconds=1.0,
        )


@dataclass(frozen=True)
class Throughput:
    clicks: int  # outputs received after the first receipt: the work done in ``seconds``
    seconds: float  # first to last output received
    cpu_s_per_1k: float  # of the process under test, after its first output
    peak_rss_mib: float

    @property
    def rate(self) -> float:
        return self.clicks / self.seconds


# The worker's own histograms whose means split the latency into its parts (stream.metrics).
BREAKDOWN_HISTOGRAMS = (
    "glintstream_click_to_publish_seconds",  # Kafka timestamp of the click -> output acked
    "glintstream_read_to_publish_seconds",  # worker received the click -> output acked
    "glintstream_batch_clicks",
    "glintstream_batch_seconds",
    "glintstream_model_step_score_seconds",
    "glintstream_delivery_wait_seconds",
)


@dataclass(frozen=True)
class Latency:
    offered: float  # clicks/s asked of the producer
    achieved: float  # clicks/s it managed
    ms: np.ndarray  # one latency per click
    # means over the phase from the worker's histograms (sum/count deltas), by metric name
    worker_means: dict[str, float] = field(default_factory=dict)

    def quantile(self, q: float) -> float:
        return float(np.percentile(self.ms, q))

    def breakdown(self) -> str:
        """Mean ms: produce -> worker receipt, receipt -> acked, acked -> reader; batch size."""
        m = self.worker_means
        if not all(name in m for name in BREAKDOWN_HISTOGRAMS):
            return "n/a"
        to_publish = 1000 * m["glintstream_click_to_publish_seconds"]
        in_worker = 1000 * m["glintstream_read_to_publish_seconds"]
        return (
            f"{to_publish - in_worker:.1f} / {in_worker:.1f} / "
            f"{float(np.mean(self.ms)) - to_publish:.1f}; "
            f"{m['glintstream_batch_clicks']:.0f} clicks, "
            f"{1000 * m['glintstream_batch_seconds']:.1f} ms "
            f"(model {1000 * m['glintstream_model_step_score_seconds']:.1f}, "
            f"broker acks {1000 * m['glintstream_delivery_wait_seconds']:.1f})"
        )


@dataclass(frozen=True)
class Accuracy:
    policy: str  # `streaming` or `window` (faithful)
    users: int
    online: dict[str, float]
    offline: dict[str, float]

    @property
    def max_diff(self) -> float:
        return max(abs(self.online[m] - self.offline[m]) for m in METRICS)


@dataclass
class StreamBenchResult:
    throughput: dict[str, Throughput] = field(default_factory=dict)  # system -> figures
    latency: list[Latency] = field(default_factory=list)
    accuracy: list[Accuracy] = field(default_factory=list)
    seconds: float = 0.0
    failed: str = ""  # the phase that failed and why; the phases after it did not run

    def rows(self) -> list[tuple[str, str, str]]:
        """(metric, value, target) rows of the one table."""
        t = self.throughput
        failure = (
            [("FAILED phase (the later ones not run)", self.failed, "")] if self.failed else []
        )
        if "worker" not in t:
            return failure
        worker = t["worker"]
        rows = failure + [
            (
                "worker throughput at max rate (clicks/s)",
                f"{worker.rate:,.0f}",
                judge(worker.rate >= TARGET_THROUGHPUT, f">= {TARGET_THROUGHPUT:,.0f}"),
            )
        ]
        for lat in self.latency:
            target = ""
            if lat.offered == TARGET_P99_RATE:
                met = lat.quantile(99) <= TARGET_P99_MS
                target = judge(met, f"p99 <= {TARGET_P99_MS:.0f} ms")
            quantiles = " / ".join(f"{lat.quantile(q):.1f}" for q in QUANTILES)
            rows.append(
                (
                    f"latency p50 / p95 / p99 at {lat.offered:,.0f} clicks/s (ms; achieved {lat.achieved:,.0f}/s)",
                    quantiles,
                    target,
                )
            )
            rows.append(
                (
                    f"at {lat.offered:,.0f} clicks/s, mean ms: to the worker / in the worker "
                    "/ to the reader; mean batch (its model and broker-ack parts)",
                    lat.breakdown(),
                    "",
                )
            )
        rows += [
            ("worker CPU seconds per 1,000 clicks", f"{worker.cpu_s_per_1k:.3f}", ""),
            ("worker peak RSS (MiB)", f"{worker.peak_rss_mib:,.0f}", ""),
        ]
        comparisons: list[tuple[str, str, str, float | None]] = [  # (system, name, ratio, target)
            ("faust", "faust pass-through floor", "worker / faust floor", TARGET_OVER_FAUST),
            (
                "raw",
                "confluent-kafka consume+produce floor",
                "worker / confluent-kafka floor",
                None,
            ),
            (
                "recompute",
                "worker, full-window recompute",
                "step / recompute",
                TARGET_STEP_OVER_RECOMPUTE,
            ),
            ("sasrec", "SASRec, full-window recompute", "step / SASRec recompute", None),
        ]
        for key, name, ratio_name, goal in comparisons:
            if key not in t:
                continue
            ratio = worker.rate / t[key].rate
            judged = "" if goal is None else judge(ratio >= goal, f">= {goal:g}x")
            rows.append((f"{name} (clicks/s)", f"{t[key].rate:,.0f}", ""))
            rows.append((ratio_name, f"{ratio:.2f}x", judged))
        if "faithful" in t:
            rows.append(("faithful worker throughput (clicks/s)", f"{t['faithful'].rate:,.0f}", ""))
        for acc in self.accuracy:
            for m in METRICS:
                rows.append(
                    (
                        f"{acc.policy}: {m} online / offline ({acc.users} users)",
                        f"{acc.online[m]:.6f} / {acc.offline[m]:.6f}",
                        judge(
                            abs(acc.online[m] - acc.offline[m]) <= TARGET_PREQUENTIAL_DIFF,
                            f"|diff| <= {TARGET_PREQUENTIAL_DIFF:g}",
                        ),
                    )
                )
        rows.append(("benchmark wall time (s)", f"{self.seconds:.0f}", ""))
        return rows

    def table(self) -> str:
        return markdown(self.rows())


def _means(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float]:
    """Each histogram's mean over the observations between two scrapes."""
    means = {}
    for name, (total, count) in after.items():
        total0, count0 = before.get(name, (0.0, 0.0))
        if count > count0:
            means[name] = (total - total0) / (count - count0)
    return means


# ----------------------------------------------------------------------------- Kafka plumbing
class Replay:
    """Produces the replay's clicks, remembering when each was sent and where it landed."""

    def __init__(self, settings: Settings, values: list[bytes], keys: list[bytes]) -> None:
        # linger 1 ms: a bigger linger would be counted as latency
        self.producer = Producer({**producer_config(settings), "linger.ms": 1})
        self.values, self.keys = values, keys
        self.sent_at = np.full(len(values), np.nan)  # time.monotonic()
        self.click_of: dict[tuple[int, int], int] = {}  # (partition, offset) -> click index
        self.errors: list[str] = []
        self.next = 0  # the first click not produced yet

    def _delivered(self, index: int) -> Callable:
        def report(err: object, msg: object) -> None:
            if err is not None:
                self.errors.append(str(err))
            else:
                self.click_of[(msg.partition(), msg.offset())] = index  # type: ignore[attr-defined]

        return report

    def produce(self, count: int, rate: float = 0.0) -> range:
        """Send the next ``count`` clicks (all at once, or paced at ``rate``); wait for acks."""
        chosen = range(self.next, min(self.next + count, len(self.values)))
        pacer = Pacer(rate)
        for i in chosen:
            pacer.wait()
            self.sent_at[i] = time.monotonic()
            while True:
                try:
                    self.producer.produce(
                        CLICKS_TOPIC, self.values[i], self.keys[i], on_delivery=self._delivered(i)
                    )
                    break
                except BufferError:  # local queue full: let deliveries drain it
                    self.producer.poll(0.05)
            self.producer.poll(0)
        if self.producer.flush(60) or self.errors:
            raise RuntimeError(f"clicks not delivered: {self.errors[:3]}")
        self.next = chosen.stop
        return chosen


class OutputReader(threading.Thread):
    """Reads an output topic from the start on a thread, stamping each message on receipt.

    With ``parse``, messages are recommendations: each click's first receipt is kept by its
    (partition, offset), and each user's latest top-K list (the replay holds back every user's
    last click, so the latest one is the recommendation just before the held-out target).
    """

    def __init__(self, settings: Settings, topic: str, parse: bool = False) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer(
            settings.kafka.confluent_consumer_config(
                f"reader-{topic}",
                **{
                    "enable.auto.commit": False,
                    "fetch.wait.max.ms": READER_FETCH_WAIT_MS,
                    "max.partition.fetch.bytes": READER_FETCH_BYTES,
                },
            )
        )
        self.topic, self.parse = topic, parse
        self.received_at: list[float] = []  # in order of receipt
        self.click_received: dict[tuple[int, int], float] = {}  # first receipt per click
        self.latest: dict[str, tuple[tuple[int, int], list[str]]] = {}  # user -> (click, top-K)
        self._stopping = threading.Event()

    @property
    def count(self) -> int:
        return len(self.received_at)

    def run(self) -> None:
        parts = self.consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
        self.consumer.assign([TopicPartition(self.topic, p, 0) for p in parts])
        while not self._stopping.is_set():
            # not consume(n, t): it waits for n messages or all of t, which would count as latency
            messages = poll_batch(self.consumer, CONSUME_MAX, CONSUME_WAIT_S)
            now = time.monotonic()
            for msg in messages:
                value = msg.value()
                if msg.error() is not None or value is None:
                    continue
                if self.parse:
                    self._record(json.loads(value), now)
                self.received_at.append(now)
        self.consumer.close()

    def _record(self, rec: dict, now: float) -> None:
        click = (rec["click"]["partition"], rec["click"]["offset"])
        self.click_received.setdefault(click, now)
        latest = self.latest.get(rec["user_id"])
        if latest is None or click[1] > latest[0][1]:  # a user's clicks share one partition
            self.latest[rec["user_id"]] = (click, rec["items"])

    def stop(self) -> None:
        self._stopping.set()
        self.join()


@dataclass
class System:
    """A process under test with the reader of its output topic."""

    proc: WorkerProcess
    reader: OutputReader
    metrics_port: int = 0  # the worker's Prometheus endpoint; 0 = not served

    def histogram_totals(self) -> dict[str, tuple[float, float]]:
        if not self.metrics_port:
            return {}
        return histogram_totals(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def wait(self, count: int) -> Throughput:
        """Wait until ``count`` outputs arrived; throughput and CPU from the first one on."""
        pid = self.proc.proc.pid  # type: ignore[union-attr]
        first: tuple[int, float] | None = None  # (outputs, CPU seconds) when output began
        seen, progress_at = -1, time.monotonic()
        while self.reader.count < count:
            if self.proc.proc.poll() is not None:  # type: ignore[union-attr]
                raise RuntimeError(f"{self.proc.worker_id} exited:\n{self.proc.tail()}")
            now = time.monotonic()
            if self.reader.count != seen:
                seen, progress_at = self.reader.count, now
            elif now - progress_at > STALL_S:
                raise RuntimeError(
                    f"{self.proc.worker_id}: {seen}/{count} outputs, none for {STALL_S:.0f}s:\n"
                    f"{self.proc.tail()}"
                )
            if first is None and seen > 0:
                first = (seen, cpu_seconds(pid))
            time.sleep(SAMPLE_S)
        cpu_end, done = cpu_seconds(pid), self.reader.count
        start = first or (0, 0.0)
        times = self.reader.received_at[:count]
        started = self._first_input_at()
        if started is not None:  # the system says when it began: all outputs count
            clicks, seconds = count, times[-1] - started
        else:  # the outputs of the first receipt were computed before the clock started
            clicks, seconds = sum(1 for t in times if t > times[0]), times[-1] - times[0]
        if not clicks:
            raise RuntimeError(f"{self.proc.worker_id}: all {count} outputs came at once: use more")
        return Throughput(
            clicks=clicks,
            seconds=seconds,
            cpu_s_per_1k=1000 * (cpu_end - start[1]) / max(done - start[0], 1),
            peak_rss_mib=peak_rss_bytes(pid) / MIB,
        )

    def _first_input_at(self) -> float | None:
        for line in self.proc.log().splitlines():
            if line.startswith(FIRST_INPUT_MARK):
                return float(line.split()[-1])
        return None

    def stop(self) -> None:
        try:
            self.proc.terminate()
        finally:
            self.proc.stop_quietly()
            self.reader.stop()


# ----------------------------------------------------------------------------- the benchmark
class StreamBench:
    def __init__(self, config: StreamBenchConfig, data: SequenceData | None = None) -> None:
        self.config = config
        self.data = data or load_dataset(config.dataset)
        self.order = click_order(self.data, users=config.users, skip_last=1)
        self.heldout = Heldout.of(self.data, np.unique(self.order[:, 0]))
        self.work = config.work_dir
        # every run starts a new (empty) broker, so worker state from an earlier run is stale
        shutil.rmtree(self.work / "state", ignore_errors=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.result = StreamBenchResult()
        self.settings: Settings
        self.replay: Replay
        self.systems: list[System] = []

    def run(self) -> StreamBenchResult:
        started = time.monotonic()
        with Broker(port=0, run_dir=self.work / "broker") as broker:
            self.settings = load_settings(
                kafka_bootstrap_servers=broker.bootstrap_servers, partitions=self.config.partitions
            )
            ensure_topics(self.settings, [CLICKS_TOPIC], self.config.partitions)
            clicks = list(iter_clicks(self.data, self.order))
            self.replay = Replay(
                self.settings, [c.to_json() for c in clicks], [c.user_id.encode() for c in clicks]
            )
            head = min(self.config.throughput_clicks, len(clicks))
            self.replay.produce(head)
            phases: list[tuple[str, Callable[[], object]]] = [
                ("floors", lambda: self._floors(head)),
                ("worker", lambda: self._main_worker(head)),
                ("recompute", self._recompute),
            ]
            if self.config.faithful_checkpoint is not None:
                phases.append(("faithful", lambda: self._faithful(head)))
            try:
                for name, phase in phases:
                    try:
                        phase()
                    except (RuntimeError, TimeoutError) as e:  # a worker exited or stalled
                        self.result.failed = f"{name}: {str(e).splitlines()[0]}"
                        log.error("phase %s failed; the later ones are not run: %s", name, e)
                        break
            finally:
                for system in self.systems:
                    system.proc.stop_quietly()
        self.result.seconds = time.monotonic() - started
        self._save_latencies()
        return self.result

    # -------------------------------------------------------------- the systems under test
    def _start(
        self, name: str, env: dict[str, object], command: list[str] | None = None
    ) -> WorkerProcess:
        values = {
            "KAFKA_BOOTSTRAP_SERVERS": self.settings.kafka.bootstrap_servers,
            "GLINTSTREAM_PARTITIONS": self.config.partitions,
            "GLINTSTREAM_STATE_DIR": self.work / "state",
            "GLINTSTREAM_REGISTRY_DIR": self.work / "registry-empty",  # serve the checkpoint
            "GLINTSTREAM_METRICS_PORT": 0,
            **env,
        }
        return WorkerProcess(worker_env(**values), name, self.work, command).start()

    def _worker(
        self, name: str, checkpoint: Path, mode: str = "step", metrics: bool = False
    ) -> System:
        topic = f"recs-{name}"
        ensure_topics(self.settings, [topic], self.config.partitions)
        reader = OutputReader(self.settings, topic, parse=True)
        reader.start()
        metrics_port = free_port() if metrics else 0
        proc = self._start(
            name,
            {
                **settings_env(self.config.worker_settings),
                "GLINTSTREAM_WORKER_APP_ID": f"bench-{name}",
                "GLINTSTREAM_CHECKPOINT_DIR": checkpoint,
                "GLINTSTREAM_SCORING_MODE": mode,
                "GLINTSTREAM_TOPIC_RECOMMENDATIONS": topic,
                "GLINTSTREAM_TOPIC_DLQ": f"dlq-{name}",
                "GLINTSTREAM_TOPIC_STATE_CHANGELOG": f"state-{name}",
                "GLINTSTREAM_METRICS_PORT": metrics_port,
            },
        )
        system = System(proc, reader, metrics_port)
        self.systems.append(system)
        return system

    def _floors(self, count: int) -> None:
        for engine in ("raw", "faust"):
            sink = f"out-{engine}"
            ensure_topics(self.settings, [sink], self.config.partitions)
            reader = OutputReader(self.settings, sink)
            reader.start()
            command = [sys.executable, "-m", "bench.passthrough", engine]
            command += ["--source", CLICKS_TOPIC, "--sink", sink, "--group", f"bench-{engine}"]
            system = System(self._start(f"floor-{engine}", {}, command), reader)
            self.systems.append(system)
            self._measure(f"{engine} floor", engine, system, count)

    def _main_worker(self, head: int) -> None:
        config = self.config
        system = self._worker("step", config.checkpoint, metrics=True)
        try:
            self.result.throughput["worker"] = system.wait(head)
            log.info("worker: %.0f clicks/s", self.result.throughput["worker"].rate)
            for rate in config.rates:
                before = system.histogram_totals()
                sent = time.monotonic()
                chosen = self.replay.produce(round(rate * config.rate_seconds), rate)
                achieved = len(chosen) / (time.monotonic() - sent)
                system.wait(chosen.stop)
                means = _means(before, system.histogram_totals())
                latencies = self._latencies(system, chosen)
                self.result.latency.append(Latency(rate, achieved, latencies, means))
                log.info(
                    "latency at %.0f/s: p99 %.1f ms", rate, self.result.latency[-1].quantile(99)
                )
            self.replay.produce(len(self.replay.values))  # the rest, for the held-out clicks
            system.wait(len(self.replay.values))
            # the peak of the whole run, not just of the throughput phase
            worker = self.result.throughput["worker"]
            peak = peak_rss_bytes(system.proc.proc.pid) / MIB  # type: ignore[union-attr]
            self.result.throughput["worker"] = replace(worker, peak_rss_mib=peak)
        finally:
            system.stop()
        self.result.accuracy.append(self._accuracy(config.checkpoint, system.reader))

    def _recompute(self) -> None:
        count = min(self.config.recompute_clicks, self.config.throughput_clicks)
        sasrec = self.config.sasrec_checkpoint or self._random_sasrec()
        for name, checkpoint in (("recompute", self.config.checkpoint), ("sasrec", sasrec)):
            self._measure(name, name, self._worker(name, checkpoint, mode="recompute"), count)

    def _measure(self, label: str, key: str, system: System, count: int) -> None:
        """Throughput of ``system`` over its first ``count`` outputs, then stop it."""
        try:
            self.result.throughput[key] = system.wait(count)
        finally:
            system.stop()
        log.info("%s: %.0f clicks/s", label, self.result.throughput[key].rate)

    def _faithful(self, head: int) -> None:
        checkpoint = self.config.faithful_checkpoint
        assert checkpoint is not None
        system = self._worker("faithful", checkpoint)
        try:
            self.result.throughput["faithful"] = system.wait(head)
            system.wait(len(self.replay.values))
        finally:
            system.stop()
        self.result.accuracy.append(self._accuracy(checkpoint, system.reader))

    # -------------------------------------------------------------- figures
    def _latencies(self, system: System, clicks: range) -> np.ndarray:
        where = {i: pos for pos, i in self.replay.click_of.items() if i in clicks}
        received = system.reader.click_received
        return np.array(
            [1000 * (received[where[i]] - self.replay.sent_at[i]) for i in clicks], dtype=np.float64
        )

    def _accuracy(self, checkpoint: Path, reader: OutputReader) -> Accuracy:
        """Online figures from each user's latest recommendation, offline ones recomputed."""
        rec_of_user: dict[int, list[str]] = {}
        for click, items in reader.latest.values():
            user, position = self.order[self.replay.click_of[click]]
            if position == len(self.data.sequences[user]) - 2:  # just before the target
                rec_of_user[int(user)] = items
        missing = [u for u in self.heldout.users if u not in rec_of_user]
        if missing:
            raise RuntimeError(
                f"no recommendation before the held-out click of {len(missing)} users"
            )
        model, manifest = load_checkpoint(checkpoint)
        assert isinstance(model, SequentialRecommender)
        variant = manifest["config"].get("variant", manifest["kind"])
        return Accuracy(
            "window (faithful)" if variant == "faithful" else variant,
            len(self.heldout.users),
            online_metrics([rec_of_user[u] for u in self.heldout.users], self.heldout.targets),
            offline_metrics(model, manifest["vocab"], self.heldout),
        )

    def _random_sasrec(self) -> Path:
        """SASRec with random weights on the served model's vocabulary and window: the speed of
        a full recompute does not depend on the weights."""
        manifest = read_manifest(self.config.checkpoint)
        glint = manifest["config"]
        config = SASRecConfig(
            num_items=glint["num_items"], d=glint["hidden_size"], max_len=glint["max_len"]
        )
        torch.manual_seed(0)
        directory = self.work / "sasrec-random"
        save_checkpoint(
            directory,
            SASRec(config).eval(),
            kind="sasrec",
            config=config,
            vocab=manifest["vocab"],
            dataset=manifest["dataset"],
            metrics={},
        )
        return directory

    def _save_latencies(self) -> None:
        """Raw latencies (one CSV row per click) and, if asked, the distribution plot."""
        path = self.work / "latency.csv"
        with path.open("w") as f:
            f.write("offered_clicks_per_s,latency_ms\n")
            for lat in self.result.latency:
                f.writelines(f"{lat.offered:.0f},{ms:.3f}\n" for ms in lat.ms)
        if self.config.plot is not None and self.result.latency:
            from bench.plot import latency_plot

            latency_plot(self.result.latency, self.config.plot)


def machine() -> str:
    return f"{os.cpu_count()} cores, torch {torch.__version__}, " + (
        "CUDA" if torch.cuda.is_available() else "no GPU"
    )
