"""`glintstream bench soak`: the whole system for N minutes at a fixed click rate.

A private embedded broker, one `glintstream worker`, and three independent client processes
(``bench.soak_clients``): a plain confluent-kafka producer with its default settings sending
one ``produce`` per click at the rate, a consumer of the recommendations, and an HTTP client
asking the worker for a user's latest recommendations (``LOOKUP_INTERVAL_MS`` apart). Every second the
benchmark samples the broker's and the worker's resident memory (both worker processes) and the
worker's RocksDB bytes; at a chosen row it kills the worker with SIGKILL and restarts it. After
the run it waits for the last recommendations, then pauses the broker (SIGSTOP) and times how
long the worker's log, its stalled gauge, its /readyz and the Prometheus alert take to report it.

The figures come from the clients' own rows (``acks.csv``: every click with its produce time,
partition and offset; ``recs.csv``: every recommendation received, the click it answers and
when): per row (a minute by default) clicks sent, recommendations received, repeats, clicks
still without a recommendation, latency p50 / p99 / max (click ``produce`` call -> the
recommendation received by the reader), lookup latency p50 / p99 (``lookups.csv``, answers
with the user's own recommendations; failures counted), memory, then a verdict against the
soak's targets. The lookup floor (``floor.csv``: the same client asking a server that answers
at once, in a process of its own) says how much of a lookup's latency the loaded machine
itself takes.
"""

from __future__ import annotations

import csv
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from bench.procstat import cpu_seconds, rss_bytes, tree_bytes
from model.data import SequenceData, load_dataset
from stream.broker import Broker, free_port
from stream.produce import click_order
from stream.testkit import PrometheusServer, WorkerProcess, settings_env, worker_env

log = logging.getLogger(__name__)

CLICKS_TOPIC, RECS_TOPIC = "clicks", "recommendations"
MIB = 1024 * 1024
SAMPLE_S = 1.0
READY_TIMEOUT_S = 180.0
UNANSWERED_GRACE_S = 5.0  # a click younger than this at the end of a row is not yet "missing"
WARMUP_ROWS = 2  # rows before memory growth is judged (model, caches and buffers filling)
TREND_ROWS = 5  # the trend target compares the first and the last this many rows
STALL_REPORT_TIMEOUT_S = 120.0
HTTP_TIMEOUT_S = 2.0
# The targets the verdict judges (docs/benchmarks.md says where they come from).
TARGET_P99_MS = 50.0
TARGET_TREND = 1.2
TARGET_RSS_MIB_PER_ROW = 5.0
TARGET_STALL_REPORT_S = 60.0
TARGET_LOOKUP_P99_MS = 10.0  # a user's latest recommendations, from the worker that holds them
LOOKUP_INTERVAL_MS = 20.0  # one lookup after another, this far apart: 50 per second


@dataclass(frozen=True)
class SoakConfig:
    checkpoint: Path
    dataset: str = "ml-1m"
    data_dir: Path | None = None
    rate: float = 1000.0  # clicks per second, from the independent producer
    rows: int = 30  # rows of the table ...
    row_s: float = 60.0  # ... of this many seconds each (the run lasts rows x row_s)
    kill_row: int | None = 20  # kill -9 the worker at the start of this row and restart it
    partitions: int | None = None  # of the topics the worker creates (None: its default)
    reader_fetch_wait_ms: int = 100
    drain_s: float = 120.0  # after the last click, wait this long at most for its answer
    stall_check: bool = True
    work_dir: Path = Path(".run/bench-soak")
    plot: Path | None = Path("docs/figures/soak.png")
    worker_settings: dict[str, str] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.rows * self.row_s

    def quick(self) -> SoakConfig:
        """The <= 2 minute version: four 15-second rows at 200 clicks/s, a kill in row 2."""
        kill_row = None if self.kill_row is None else 2
        return replace(self, rate=200.0, rows=4, row_s=15.0, kill_row=kill_row, drain_s=30.0)


@dataclass(frozen=True)
class Sample:
    time: float
    broker_rss: float
    worker_rss: float
    rocksdb: float
    broker_cpu_s: float
    worker_cpu_s: float


@dataclass(frozen=True)
class Row:
    index: int
    sent: int
    received: int
    repeats: int
    unanswered: int  # acked clicks older than the grace with no recommendation at the row's end
    p50_ms: float
    p99_ms: float
    max_ms: float
    broker_rss_mib: float
    worker_rss_mib: float
    rocksdb_mib: float
    broker_cpu: float  # share of one core over the row
    worker_cpu: float  # both worker processes
    lookups: int = 0  # answered with the user's own recommendations
    lookup_p50_ms: float = float("nan")
    lookup_p99_ms: float = float("nan")
    lookups_failed: int = 0  # no 200 answer (a restart, a timeout)
    events: str = ""


@dataclass(frozen=True)
class StallReport:
    seconds: dict[str, float | None]  # what reported it -> seconds after SIGSTOP (None: never)


@dataclass
class SoakResult:
    config: SoakConfig
    rows: list[Row]
    acked: int
    failed: int
    missing: int
    repeats: int
    restore_s: float | None
    stall: StallReport | None
    lookup_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))  # every own-user answer
    floor_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the floor's answers

    def verdicts(self) -> list[tuple[str, str, bool]]:
        out = [
            (
                "every acked click answered",
                f"{self.missing:,} of {self.acked:,} missing; {self.repeats:,} repeats",
                self.missing == 0,
            )
        ]
        late = [r for r in self.rows[1:] if not r.p99_ms <= TARGET_P99_MS]
        out.append(
            (
                f"p99 <= {TARGET_P99_MS:.0f} ms in every row after the first",
                f"{len(late)} of {len(self.rows) - 1} rows over"
                + (f" (first: row {late[0].index}, {late[0].p99_ms:.0f} ms)" if late else ""),
                not late,
            )
        )
        if len(self.rows) >= 2 * TREND_ROWS:
            first = max(r.p99_ms for r in self.rows[:TREND_ROWS])
            last = max(r.p99_ms for r in self.rows[-TREND_ROWS:])
            out.append(
                (
                    f"last {TREND_ROWS} rows' p99 <= {TARGET_TREND} x the first {TREND_ROWS}'",
                    f"{last:.1f} vs {first:.1f} ms ({last / first:.2f}x)",
                    last <= TARGET_TREND * first,
                )
            )
        if len(self.lookup_ms):
            p99 = float(np.percentile(self.lookup_ms, 99))
            out.append(
                (
                    f"lookup p99 <= {TARGET_LOOKUP_P99_MS:.0f} ms (users with state, whole run)",
                    f"{p99:.1f} ms over {len(self.lookup_ms):,} lookups",
                    p99 <= TARGET_LOOKUP_P99_MS,
                )
            )
        growth = self.worker_rss_growth()
        if growth is not None:
            out.append(
                (
                    f"worker RSS growth <= {TARGET_RSS_MIB_PER_ROW:.0f} MiB per row after warm-up",
                    f"{growth:.2f} MiB per row",
                    growth <= TARGET_RSS_MIB_PER_ROW,
                )
            )
        if self.stall is not None:
            seconds = self.stall.seconds
            worst = max((s for s in seconds.values() if s is not None), default=None)
            text = ", ".join(
                f"{k} {'never' if v is None else f'{v:.0f} s'}" for k, v in seconds.items()
            )
            out.append(
                (
                    f"a paused broker reported within {TARGET_STALL_REPORT_S:.0f} s",
                    text,
                    None not in seconds.values()
                    and worst is not None
                    and worst <= TARGET_STALL_REPORT_S,
                )
            )
        return out

    def worker_rss_growth(self) -> float | None:
        """MiB per row, the steepest least-squares slope of the worker's RSS over the stretches
        without a restart, warm-up rows left out."""
        kill = self.config.kill_row
        stretches = [self.rows[WARMUP_ROWS : kill if kill is not None else None]]
        if kill is not None:
            stretches.append(self.rows[kill + WARMUP_ROWS :])
        slopes = [
            float(np.polyfit([r.index for r in s], [r.worker_rss_mib for r in s], 1)[0])
            for s in stretches
            if len(s) >= 3
        ]
        return max(slopes) if slopes else None

    def table(self) -> str:
        unit = "min" if self.config.row_s == 60 else f"{self.config.row_s:.0f} s"
        lines = [
            f"| {unit} | sent | received | repeats | unanswered | p50 / p99 / max ms | "
            "lookups: p50 / p99 ms (failed) | broker RSS MiB | worker RSS MiB | RocksDB MiB | "
            "broker / worker CPU | |",
            "|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---|---|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.index} | {r.sent:,} | {r.received:,} | {r.repeats:,} | {r.unanswered:,} "
                f"| {r.p50_ms:.1f} / {r.p99_ms:.1f} / {r.max_ms:.1f} "
                f"| {r.lookup_p50_ms:.1f} / {r.lookup_p99_ms:.1f} ({r.lookups_failed}) "
                f"| {r.broker_rss_mib:.0f} "
                f"| {r.worker_rss_mib:.0f} | {r.rocksdb_mib:.1f} "
                f"| {r.broker_cpu:.0%} / {r.worker_cpu:.0%} | {r.events} |"
            )
        lines += ["", "| target | measured | |", "|---|---|---|"]
        for target, measured, met in self.verdicts():
            lines.append(f"| {target} | {measured} | {'met' if met else 'NOT met'} |")
        if self.restore_s is not None:
            lines.append(f"| restart after kill -9: ready again | {self.restore_s:.1f} s | |")
        if len(self.floor_ms):
            p50, p99 = np.percentile(self.floor_ms, [50, 99])
            lines.append(
                "| lookup floor: a fixed answer from a server of its own, same client and load "
                f"| p50 {p50:.1f} / p99 {p99:.1f} ms over {len(self.floor_ms):,} lookups | |"
            )
        return "\n".join(lines)


# ------------------------------------------------------------------ the analysis (pure)
def _key(partition: np.ndarray, offset: np.ndarray) -> np.ndarray:
    return partition.astype(np.int64) * (1 << 40) + offset.astype(np.int64)


class LineCounter:
    """Rows a client has written to its CSV so far, reading only what is new since last time."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.lines = path, 0, 0

    def rows(self) -> int:
        if self.path.exists():
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
            complete = chunk.rfind(b"\n") + 1  # a half-written last line waits for next time
            self.offset += complete
            self.lines += chunk[:complete].count(b"\n")
        return max(self.lines - 1, 0)  # the header


def read_rows(path: Path, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """A client's CSV as float64 columns (an error text becomes NaN)."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for name in columns:
        values = []
        for row in rows:
            try:
                values.append(float(row[name]))
            except (ValueError, KeyError):
                values.append(float("nan"))
        out[name] = np.array(values, dtype=np.float64)
    return out


def summarize(
    acks: dict[str, np.ndarray],
    recs: dict[str, np.ndarray],
    lookups: dict[str, np.ndarray],
    samples: list[Sample],
    config: SoakConfig,
    events: dict[int, str],
) -> tuple[list[Row], int, int, int, int]:
    """Per-row figures; then (acked, failed, missing, repeats) over the whole run.

    Rows start at the first ``produce`` call, on the producer's clock (this host's)."""
    ok = acks["partition"] >= 0
    start = float(acks["produced"].min()) if len(acks["produced"]) else 0.0
    acked_keys = _key(acks["partition"][ok], acks["offset"][ok])
    produced = acks["produced"]
    rec_keys = _key(recs["partition"], recs["offset"])
    received = recs["received"]
    order = np.argsort(received, kind="stable")
    rec_keys, received, click_ts = rec_keys[order], received[order], recs["click_ts"][order]
    first_seen, first_index = np.unique(rec_keys, return_index=True)
    is_first = np.zeros(len(rec_keys), dtype=bool)
    is_first[first_index] = True
    answered_at = dict(zip(first_seen.tolist(), received[first_index].tolist()))
    latency_ms = 1000.0 * (received - click_ts)
    answer_times = np.array([answered_at.get(k, np.inf) for k in acked_keys.tolist()])
    sample_times = np.array([s.time for s in samples]) if samples else np.zeros(0)

    rows = []
    for i in range(config.rows):
        lo, hi = start + i * config.row_s, start + (i + 1) * config.row_s
        in_row = (received >= lo) & (received < hi)
        first = in_row & is_first
        lat = latency_ms[first]
        old = produced[ok] < hi - UNANSWERED_GRACE_S
        unanswered = int(np.sum(old & (answer_times >= hi)))
        at = int(np.searchsorted(sample_times, hi)) - 1
        begin = int(np.searchsorted(sample_times, lo))
        end = samples[at] if at >= 0 else Sample(hi, 0, 0, 0, 0, 0)
        first_sample = samples[min(begin, at)] if at >= 0 else end
        span = max(end.time - first_sample.time, 1e-9)
        asked = (lookups["time"] >= lo) & (lookups["time"] < hi)
        own = lookups["ms"][asked & (lookups["status"] == 200) & (lookups["user_state"] == 1)]
        rows.append(
            Row(
                index=i,
                # the producer's last clicks may leave after the last row's end on a busy
                # machine: they are the last row's
                sent=int(np.sum((produced >= lo) & ((produced < hi) | (i == config.rows - 1)))),
                received=int(np.sum(first)),
                repeats=int(np.sum(in_row & ~is_first)),
                unanswered=unanswered,
                p50_ms=float(np.percentile(lat, 50)) if len(lat) else float("nan"),
                p99_ms=float(np.percentile(lat, 99)) if len(lat) else float("nan"),
                max_ms=float(lat.max()) if len(lat) else float("nan"),
                broker_rss_mib=end.broker_rss / MIB,
                worker_rss_mib=end.worker_rss / MIB,
                rocksdb_mib=end.rocksdb / MIB,
                broker_cpu=max(0.0, end.broker_cpu_s - first_sample.broker_cpu_s) / span,
                # a restarted worker's CPU time starts again from 0: never negative
                worker_cpu=max(0.0, end.worker_cpu_s - first_sample.worker_cpu_s) / span,
                lookups=len(own),
                lookup_p50_ms=float(np.percentile(own, 50)) if len(own) else float("nan"),
                lookup_p99_ms=float(np.percentile(own, 99)) if len(own) else float("nan"),
                lookups_failed=int(np.sum(asked & (lookups["status"] != 200))),
                events=events.get(i, ""),
            )
        )
    missing = int(np.sum(~np.isin(acked_keys, first_seen)))
    repeats = int(np.sum(~is_first))
    return rows, int(ok.sum()), int((~ok).sum()), missing, repeats


# ------------------------------------------------------------------ the run
def write_clicks(data: SequenceData, path: Path) -> int:
    """The dataset's clicks in global time order, one `user<TAB>item` line each."""
    order = click_order(data)
    with path.open("w") as f:
        for user, pos in order.tolist():
            f.write(f"{data.users[user]}\t{data.vocab[data.sequences[user][pos]]}\n")
    return len(order)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
            return bool(response.status == 200)
    except OSError:  # 503 raises HTTPError, an OSError
        return False


def _stalled_gauge(port: int) -> bool:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/metrics", timeout=HTTP_TIMEOUT_S
        ) as r:
            text = r.read().decode()
    except OSError:
        return False
    return any(
        line.startswith("glintstream_consumer_stalled{") and float(line.rsplit(" ", 1)[1]) > 0
        for line in text.splitlines()
    )


class Soak:
    def __init__(self, config: SoakConfig, data: SequenceData | None = None) -> None:
        self.config = config
        self.data = data
        self.work = config.work_dir
        self.metrics_port = free_port()
        self.lookup_port = free_port()
        self.floor_port = free_port()
        self.samples: list[Sample] = []
        self.events: dict[int, str] = {}

    def _worker_env(self, bootstrap: str) -> dict[str, str]:
        c = self.config
        env = worker_env(
            KAFKA_BOOTSTRAP_SERVERS=bootstrap,
            GLINTSTREAM_STATE_DIR=self.work / "state",
            GLINTSTREAM_REGISTRY_DIR=self.work / "registry",
            GLINTSTREAM_CHECKPOINT_DIR=c.checkpoint.resolve(),
            GLINTSTREAM_METRICS_PORT=self.metrics_port,
            GLINTSTREAM_WORKER_LOOKUP_PORT=self.lookup_port,
            GLINTSTREAM_DEVICE="cpu",
        )
        if c.partitions is not None:
            env["GLINTSTREAM_PARTITIONS"] = str(c.partitions)
        env.update(settings_env(c.worker_settings))
        return env

    def _wait_ready(self, worker: WorkerProcess) -> float:
        started = time.monotonic()
        url = f"http://127.0.0.1:{self.metrics_port}/readyz"
        while not _http_ok(url):
            assert worker.proc is not None
            if worker.proc.poll() is not None:
                raise RuntimeError(f"worker exited rc={worker.proc.returncode}:\n{worker.tail()}")
            if time.monotonic() - started > READY_TIMEOUT_S:
                raise TimeoutError(f"worker not ready in {READY_TIMEOUT_S}s:\n{worker.tail()}")
            time.sleep(0.2)
        return time.monotonic() - started

    def _restart(self, worker: WorkerProcess, row: int, why: str) -> float | None:
        """What a supervisor does: start the worker again. The row's events say how it went;
        the seconds until it was ready again, or None if it was not."""
        worker.start()
        try:
            ready: float | None = self._wait_ready(worker)
            outcome = f"ready again in {ready:.1f} s"
        except (RuntimeError, TimeoutError) as e:
            ready, outcome = None, f"not ready again: {str(e).splitlines()[0]}"
        event = f"{why}; {outcome}"
        log.info("row %d: %s", row, event)
        self.events[row] = f"{self.events[row]}; {event}" if row in self.events else event
        return ready

    def _client(self, *args: str) -> subprocess.Popen[bytes]:
        name = args[0]
        with (self.work / f"{name}.log").open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "bench.soak_clients", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def _sample(self, broker: Broker, worker: WorkerProcess) -> None:
        assert broker.proc is not None and worker.proc is not None
        alive = worker.proc.poll() is None
        self.samples.append(
            Sample(
                time.time(),
                float(rss_bytes(broker.proc.pid)),
                float(rss_bytes(worker.proc.pid)) if alive else 0.0,
                float(tree_bytes(self.work / "state")),
                cpu_seconds(broker.proc.pid),
                cpu_seconds(worker.proc.pid) if alive else 0.0,
            )
        )

    def run(self) -> SoakResult:
        c = self.config
        self.work.mkdir(parents=True, exist_ok=True)
        data = self.data or load_dataset(c.dataset, c.data_dir)
        clicks = self.work / "clicks.tsv"
        write_clicks(data, clicks)
        acks_csv, recs_csv = self.work / "acks.csv", self.work / "recs.csv"
        lookups_csv, floor_csv = self.work / "lookups.csv", self.work / "floor.csv"
        prometheus: PrometheusServer | None = None
        restore_s = None
        with Broker(port=0, run_dir=self.work / "broker") as broker:
            env = self._worker_env(broker.bootstrap_servers)
            worker = WorkerProcess(env, "w1", self.work).start()
            clients: list[subprocess.Popen[bytes]] = []
            try:
                log.info("worker ready in %.1f s", self._wait_ready(worker))
                binary = PrometheusServer.binary() if c.stall_check else None
                if binary is not None:
                    prometheus = PrometheusServer(
                        binary, self.work / "prometheus", [f"127.0.0.1:{self.metrics_port}"]
                    )
                    prometheus.wait_ready(60)
                bootstrap = broker.bootstrap_servers
                wait = str(c.reader_fetch_wait_ms)
                clients.append(self._client("read", bootstrap, RECS_TOPIC, wait, str(recs_csv)))
                start = time.time()
                producer = self._client(
                    "produce",
                    bootstrap,
                    CLICKS_TOPIC,
                    str(clicks),
                    str(c.rate),
                    str(c.seconds),
                    str(acks_csv),
                )
                clients.append(producer)
                clients.append(self._client("floor", str(self.floor_port)))
                for port, out in ((self.lookup_port, lookups_csv), (self.floor_port, floor_csv)):
                    clients.append(
                        self._client(
                            "lookup",
                            f"http://127.0.0.1:{port}",
                            str(clicks),
                            str(c.rate),
                            str(LOOKUP_INTERVAL_MS),
                            str(out),
                        )
                    )
                killed, shown = False, 0
                acks_seen, recs_seen = LineCounter(acks_csv), LineCounter(recs_csv)
                while producer.poll() is None:
                    row = int((time.time() - start) // c.row_s)
                    if row > shown:  # the live line; the table's rows are computed at the end
                        shown = row
                        log.info(
                            "after %d rows: %d clicks acked, %d recommendations received",
                            row,
                            acks_seen.rows(),
                            recs_seen.rows(),
                        )
                    assert worker.proc is not None
                    if c.kill_row is not None and row >= c.kill_row and not killed:
                        killed = True
                        if worker.proc.poll() is None:
                            worker.kill9()
                        restore_s = self._restart(worker, row, "kill -9")
                    elif (rc := worker.proc.poll()) is not None:
                        self._restart(worker, row, f"worker exited rc={rc}")
                    self._sample(broker, worker)
                    time.sleep(SAMPLE_S)
                self._drain(acks_csv, recs_csv, broker, worker)
                stall = self._stall_check(broker, worker, prometheus) if c.stall_check else None
            finally:
                for client in clients:
                    if client.poll() is None:
                        client.send_signal(signal.SIGTERM)
                        client.wait(60)
                worker.stop_quietly()
                if prometheus is not None:
                    prometheus.stop()
        lookups = read_rows(lookups_csv, ("time", "ms", "status", "user_state"))
        rows, acked, failed, missing, repeats = summarize(
            read_rows(acks_csv, ("partition", "offset", "produced")),
            read_rows(recs_csv, ("partition", "offset", "click_ts", "received")),
            lookups,
            self.samples,
            c,
            self.events,
        )
        own = (lookups["status"] == 200) & (lookups["user_state"] == 1)
        floor = read_rows(floor_csv, ("ms", "status"))
        result = SoakResult(
            c,
            rows,
            acked,
            failed,
            missing,
            repeats,
            restore_s,
            stall,
            lookups["ms"][own],
            floor["ms"][floor["status"] == 200],
        )
        self._write(result)
        return result

    def _drain(self, acks_csv: Path, recs_csv: Path, broker: Broker, worker: WorkerProcess) -> None:
        """Wait until every acked click has its recommendation, or the drain time is over."""
        deadline = time.monotonic() + self.config.drain_s
        while time.monotonic() < deadline:
            time.sleep(2 * SAMPLE_S)  # the reader flushes its rows every second
            self._sample(broker, worker)
            acks = read_rows(acks_csv, ("partition", "offset"))
            recs = read_rows(recs_csv, ("partition", "offset"))
            ok = acks["partition"] >= 0
            wanted = _key(acks["partition"][ok], acks["offset"][ok])
            if np.isin(wanted, _key(recs["partition"], recs["offset"])).all():
                return

    def _stall_check(
        self, broker: Broker, worker: WorkerProcess, prometheus: PrometheusServer | None
    ) -> StallReport:
        """Pause the broker; seconds until each of the worker's reports shows the stall."""
        assert broker.proc is not None
        seen: dict[str, float | None] = {"log": None, "gauge": None, "readiness": None}
        if prometheus is not None:
            seen["alert"] = None
        port = self.metrics_port
        checks = {
            "log": lambda: "STALLED" in worker.log(),
            "gauge": lambda: _stalled_gauge(port),
            "readiness": lambda: not _http_ok(f"http://127.0.0.1:{port}/readyz"),
            "alert": lambda: (
                prometheus is not None and "GlintstreamConsumerStalled" in prometheus.firing()
            ),
        }
        os.kill(broker.proc.pid, signal.SIGSTOP)
        paused = time.monotonic()
        try:
            while None in seen.values() and time.monotonic() - paused < STALL_REPORT_TIMEOUT_S:
                for name in [n for n, v in seen.items() if v is None]:
                    if checks[name]():
                        seen[name] = time.monotonic() - paused
                time.sleep(0.5)
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
        return StallReport(seen)

    def _write(self, result: SoakResult) -> None:
        with (self.work / "rows.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            names = list(Row.__dataclass_fields__)
            writer.writerow(names)
            for row in result.rows:
                writer.writerow([getattr(row, n) for n in names])
        if self.config.plot is not None:
            from bench.plot import soak_plot

            soak_plot(result, self.config.plot)
