"""Drive real glintstream processes from Python, for integration tests of a deployment (the
project's own tests use it) and for the benchmarks: workers and their clients
(``stream.testkit.workers``) and a Prometheus scraping them (``stream.testkit.prometheus``)."""

from stream.testkit.prometheus import PrometheusServer
from stream.testkit.workers import (
    GLINTSTREAM,
    POLL_S,
    READY_LINE,
    SMALL_STORE,
    ClickProducer,
    Ledger,
    TopicReader,
    WorkerProcess,
    alive,
    gone_within,
    latest_records,
    offline_top_k,
    private_worker_env,
    read_log,
    settings_env,
    stored_records,
    worker_env,
)

__all__ = [
    "GLINTSTREAM",
    "POLL_S",
    "READY_LINE",
    "SMALL_STORE",
    "ClickProducer",
    "Ledger",
    "PrometheusServer",
    "TopicReader",
    "WorkerProcess",
    "alive",
    "gone_within",
    "latest_records",
    "offline_top_k",
    "private_worker_env",
    "read_log",
    "settings_env",
    "stored_records",
    "worker_env",
]
