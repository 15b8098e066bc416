"""Observability: the deploy/ files pass promtool, every metric they use exists and follows the
naming conventions, and a real Prometheus scraping a real worker that is processing clicks
answers latency quantiles through its HTTP API.

Prometheus and promtool come from the Debian package `prometheus` (`make setup-prometheus`);
when they are missing the set-up installs them with apt-get, and the tests that need them skip,
saying why, only when that is impossible.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from test_worker import make_checkpoint

from stream import metrics
from stream.broker import free_port
from stream.messages import RunOutcome
from stream.testkit import (
    ClickProducer,
    Ledger,
    PrometheusServer,
    WorkerProcess,
    private_worker_env,
)
from stream.testkit.source import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
PROMETHEUS_PACKAGE = "prometheus"  # Debian: brings both `prometheus` and `promtool`
APT_TIMEOUT_S = 600
PROMTOOL_TIMEOUT_S = 60

SCRAPE_INTERVAL_S = 1  # short, so a rate over RATE_WINDOW has many samples within seconds
RATE_WINDOW = "30s"
QUERY_TIMEOUT_S = 90  # worker start + a few scrapes on a loaded 2-core machine
HTTP_TIMEOUT_S = 5
POLL_S = 0.5

NUM_ITEMS = 30
NUM_USERS = 12
CLICKS_PER_S = 40  # a steady stream, so every scrape sees new observations

# process_*/python_* come from the standard collectors, named by prometheus_client
STANDARD_PREFIXES = ("process_", "python_")
LATENCY_HISTOGRAMS = (
    "glintstream_click_to_publish_seconds",
    "glintstream_read_to_publish_seconds",
    "glintstream_model_step_score_seconds",
    "glintstream_batch_seconds",
    "glintstream_delivery_wait_seconds",
)
WORKER_HISTOGRAMS = (*LATENCY_HISTOGRAMS, "glintstream_batch_clicks")
METRIC_NAME = re.compile(r"\bglintstream_[a-z0-9_]+")
SERIES_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")
# Grafana's variables, replaced by what they stand for before a query is sent to Prometheus
GRAFANA_VARIABLES = {"$__rate_interval": RATE_WINDOW, "$__range": "5m", "$instance": ".*"}


# ------------------------------------------------------------------ installing Prometheus
def _install_prometheus() -> str | None:
    """apt-get install the package; the reason it could not be installed, or None."""
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine"
    if os.geteuid() != 0:
        return "not root, so apt-get cannot install packages"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-q", PROMETHEUS_PACKAGE],
    ):
        try:
            done = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            return f"{' '.join(command)} took over {APT_TIMEOUT_S}s"
        if done.returncode != 0:
            return f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}"
    # The package may start its own service on :9090; the tests run their own Prometheus.
    for stop in (
        ["systemctl", "disable", "--now", PROMETHEUS_PACKAGE],
        ["service", PROMETHEUS_PACKAGE, "stop"],
    ):
        if shutil.which(stop[0]):
            subprocess.run(stop, capture_output=True, timeout=PROMTOOL_TIMEOUT_S)
            break
    return None


@pytest.fixture(scope="session")
def prometheus_bin() -> dict[str, str]:
    """Paths of `prometheus` and `promtool`, installing the Debian package when missing."""
    if not (shutil.which("prometheus") and shutil.which("promtool")):
        reason = _install_prometheus()
        if reason is not None:
            pytest.skip(f"Prometheus is not installed and cannot be: {reason}")
    paths = {name: shutil.which(name) for name in ("prometheus", "promtool")}
    missing = [name for name, path in paths.items() if path is None]
    if missing:
        pytest.skip(f"package {PROMETHEUS_PACKAGE} installed but {missing} not on PATH")
    return {name: str(path) for name, path in paths.items()}


def promtool(prometheus_bin: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [prometheus_bin["promtool"], *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_S,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


# ------------------------------------------------------------------ static checks
def test_promtool_accepts_config_and_rules(prometheus_bin: dict[str, str]) -> None:
    assert "SUCCESS" in promtool(prometheus_bin, "check", "config", "deploy/prometheus.yml")
    assert "SUCCESS" in promtool(prometheus_bin, "check", "rules", "deploy/alerts.yml")
    # each alert fires on a series that should trigger it, and only then
    assert "SUCCESS" in promtool(prometheus_bin, "test", "rules", "deploy/alerts_test.yml")


def _families(registry: CollectorRegistry) -> dict[str, str]:
    """{metric family name: type} of our own metrics (not the standard collectors')."""
    return {m.name: m.type for m in registry.collect() if not m.name.startswith(STANDARD_PREFIXES)}


def test_metric_names_follow_the_conventions() -> None:
    consumer = _families(metrics.WORKER_REGISTRY)
    batch = _families(metrics.BATCH_REGISTRY)
    worker = {**consumer, **batch}  # one scrape shows both (stream.batch_process.ChildMetrics)
    finetune = _families(metrics.FINETUNE_REGISTRY)
    assert not set(consumer) & set(batch), "a metric in both of the worker's registries"
    assert not set(worker) & set(finetune), "a metric in both processes' registries"
    for name, kind in {**worker, **finetune}.items():
        assert name.startswith("glintstream_"), name
        assert not name.endswith("_total") or kind == "counter", name
        if kind == "histogram":
            assert name.endswith(("_seconds", "_clicks")), f"{name}: no unit in the name"
        if name.endswith("_seconds") and kind == "histogram":
            assert name in LATENCY_HISTOGRAMS, f"{name}: not checked below"
    for name in LATENCY_HISTOGRAMS:
        assert worker[name] == "histogram"
    buckets = metrics.LATENCY_BUCKETS
    assert buckets[0] <= 0.001 and buckets[-1] >= 10, "latency buckets must span 1 ms - 10 s"
    assert list(buckets) == sorted(buckets)


def _referenced_metrics(text: str) -> set[str]:
    """Metric family names used in PromQL text (series suffixes stripped)."""
    names = set()
    for series in METRIC_NAME.findall(text):
        for suffix in SERIES_SUFFIXES:
            if series.endswith(suffix) and series != "glintstream_" + suffix[1:]:
                series = series.removesuffix(suffix)
                break
        names.add(series)
    return names


def _dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def _alert_text() -> str:
    return (DEPLOY / "alerts.yml").read_text()


def test_dashboard_and_alerts_use_defined_metrics() -> None:
    defined = {
        name
        for registry in (metrics.WORKER_REGISTRY, metrics.BATCH_REGISTRY, metrics.FINETUNE_REGISTRY)
        for name in _families(registry)
    }
    queries = _dashboard_queries()
    assert queries
    for where, text in (("dashboard", "\n".join(queries)), ("alerts", _alert_text())):
        unknown = _referenced_metrics(text) - defined
        assert not unknown, f"{where} uses metrics nobody defines: {sorted(unknown)}"


def test_finetune_streak_counts_rejections_in_a_row() -> None:
    def streak() -> float | None:
        return metrics.FINETUNE_REGISTRY.get_sample_value(
            "glintstream_finetune_consecutive_rejections"
        )

    metrics.record_finetune_run(RunOutcome.PUBLISHED)
    assert streak() == 0
    metrics.record_finetune_run(RunOutcome.REJECTED)
    metrics.record_finetune_run(RunOutcome.REJECTED)
    assert streak() == 2
    metrics.record_finetune_run(RunOutcome.SKIPPED)  # neither a rejection nor a success
    assert streak() == 2
    metrics.record_finetune_run(RunOutcome.PUBLISHED)
    assert streak() == 0


# ------------------------------------------------------------------ a real scrape
def http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
        return response.read()


class SteadyClicks:
    """Valid clicks at a steady pace, plus one malformed one, from a background thread."""

    def __init__(self, bootstrap: str, topic: str, vocab: list[str]) -> None:
        self.producer = ClickProducer(bootstrap, topic, vocab, Ledger())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.producer.junk(b"u0", b"not json")  # counted as rejected, sent to the DLQ
        n = 0
        while not self._stop.wait(1 / CLICKS_PER_S):
            self.producer.click(f"u{n % NUM_USERS}", 1 + n % NUM_ITEMS, time.time())
            n += 1

    def __enter__(self) -> SteadyClicks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.producer.flush()


@dataclass
class ObservedWorker:
    process: WorkerProcess
    metrics_port: int
    clicks_topic: str
    vocab: list[str]


@pytest.fixture
def running_worker(
    bootstrap_servers: str, unique_name: Callable[[str], str], tmp_path: Path
) -> Iterator[ObservedWorker]:
    """A `glintstream worker` on a tiny checkpoint, serving metrics on a free port."""
    vocab = ["<pad>"] + [f"i{i}" for i in range(1, NUM_ITEMS + 1)]
    make_checkpoint(tmp_path / "checkpoint", vocab, seed=0)
    port = free_port()
    env, topics = private_worker_env(
        bootstrap_servers, tmp_path, unique_name, GLINTSTREAM_METRICS_PORT=port
    )
    worker = WorkerProcess(env, "obs", tmp_path).start()
    try:
        worker.wait_ready()  # also creates the topics
        yield ObservedWorker(worker, port, topics["clicks"], vocab)
    finally:
        worker.stop_quietly()


def _scrape(port: int) -> dict[str, float]:
    """The worker's /metrics as {series with labels: value}."""
    text = http_get(f"http://127.0.0.1:{port}/metrics").decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def _wait_for_value(prom: PrometheusServer, promql: str, timeout: float) -> float:
    """Poll until the query gives one finite, positive value; return it."""
    deadline = time.monotonic() + timeout
    last: list[dict] = []
    while time.monotonic() < deadline:
        last = prom.query(promql)
        values = [float(r["value"][1]) for r in last]
        if len(values) == 1 and math.isfinite(values[0]) and values[0] > 0:
            return values[0]
        time.sleep(POLL_S)
    raise AssertionError(f"{promql!r} gave no finite positive value in {timeout}s: {last}")


@pytest.mark.timeout(240)
def test_prometheus_scrapes_a_processing_worker(
    prometheus_bin: dict[str, str],
    bootstrap_servers: str,
    running_worker: ObservedWorker,
    tmp_path: Path,
) -> None:
    worker, port = running_worker.process, running_worker.metrics_port
    target = [f"127.0.0.1:{port}"]
    prom = PrometheusServer(prometheus_bin["prometheus"], tmp_path, target, SCRAPE_INTERVAL_S)
    try:
        prom.wait_ready(QUERY_TIMEOUT_S)
        with SteadyClicks(bootstrap_servers, running_worker.clicks_topic, running_worker.vocab):
            p99 = {
                name: _wait_for_value(
                    prom,
                    f"histogram_quantile(0.99, sum(rate({name}_bucket[{RATE_WINDOW}])) by (le))",
                    QUERY_TIMEOUT_S,
                )
                for name in LATENCY_HISTOGRAMS
            }
            # every query of the dashboard and the alerts is valid PromQL on real data
            for query in _dashboard_queries():
                for variable, value in GRAFANA_VARIABLES.items():
                    query = query.replace(variable, value)
                prom.query(query)
            samples = _scrape(port)
        assert p99["glintstream_read_to_publish_seconds"] <= max(metrics.LATENCY_BUCKETS)
        assert prom.query('up{job="glintstream-worker"} == 1'), "target not up"
        lag = prom.query("glintstream_consumer_lag_records")
        assert lag and all(float(r["value"][1]) >= 0 for r in lag)
    finally:
        prom.stop()

    # The endpoint itself (what `curl localhost:9300/metrics` shows): non-zero histograms.
    for name in WORKER_HISTOGRAMS:
        assert samples[f"{name}_count{{}}"] > 0, name
        assert samples[f'{name}_bucket{{le="+Inf"}}'] == samples[f"{name}_count{{}}"]
    assert samples['glintstream_clicks_total{outcome="applied"}'] > 0
    assert samples['glintstream_clicks_rejected_total{reason="invalid_json"}'] == 1
    assert samples["glintstream_recommendations_total{}"] > 0
    assert samples["glintstream_model_version{}"] == 0  # the fallback checkpoint
    assert samples["glintstream_rebalances_total{}"] >= 1  # its first assignment
    assert samples["glintstream_assigned_partitions{}"] > 0
    commit_age = time.time() - samples["glintstream_last_commit_timestamp_seconds{}"]
    assert 0 <= commit_age < QUERY_TIMEOUT_S, "offsets committed while clicks flowed"
    assert sum(v for k, v in samples.items() if k.startswith("glintstream_state_keys")) > 0
    assert worker.proc is not None and worker.proc.poll() is None, worker.tail()
