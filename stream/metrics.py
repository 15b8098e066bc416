"""Prometheus metrics of the worker and of the fine-tune job (README "Observability").

Each process serves only its own registry (``WORKER_REGISTRY`` / ``FINETUNE_REGISTRY``, each with
the usual process and Python collectors), so neither exposes the other's metrics as zeros. The
worker's batch process (``stream.batch_process``) keeps the processing metrics in
``BATCH_REGISTRY``, which the worker's endpoint includes at every scrape.
Names follow the Prometheus conventions: a ``glintstream_`` prefix, base units (seconds, bytes)
in the name, ``_total`` on counters, ``_timestamp_seconds`` on unix-time gauges.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from stream.messages import ClickOutcome, RejectReason, RunOutcome, StallReason

# Latency buckets: 1 ms doubling up to 16.4 s (15 buckets) cover the 1 ms - 10 s range with a
# worst-case quantile error of one bucket width (a factor of 2) anywhere in it.
LATENCY_MIN_S = 0.001
LATENCY_DOUBLINGS = 15
LATENCY_BUCKETS = tuple(LATENCY_MIN_S * 2**k for k in range(LATENCY_DOUBLINGS))
# Clicks per micro-batch: powers of two up to 4096, beyond any sensible batch_max_size.
BATCH_SIZE_DOUBLINGS = 13
BATCH_SIZE_BUCKETS = tuple(float(2**k) for k in range(BATCH_SIZE_DOUBLINGS))


def _registry() -> CollectorRegistry:
    """A registry with process (CPU, memory, fds), platform and GC metrics, like the default."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


WORKER_REGISTRY = _registry()
FINETUNE_REGISTRY = _registry()
# The batch process's own CPU and memory, under names that cannot clash with the worker's.
BATCH_REGISTRY = CollectorRegistry()
ProcessCollector(namespace="glintstream_batch", registry=BATCH_REGISTRY)

# ============================================ worker (glintstream worker): its batch process
_B = BATCH_REGISTRY

CLICKS = Counter(
    "glintstream_clicks_total",
    "Click messages consumed, by outcome: applied, rejected (see the next metric), duplicate "
    "(already applied: redelivery), out_of_order (dropped while a gap is re-read).",
    ["outcome"],
    registry=_B,
)
REJECTED = Counter(
    "glintstream_clicks_rejected_total",
    "Click messages sent to the DLQ, by reason (stream.clicks.REASONS).",
    ["reason"],
    registry=_B,
)
RECOMMENDATIONS = Counter(
    "glintstream_recommendations_total", "Recommendations published.", registry=_B
)
DELIVERY_FAILURES = Counter(
    "glintstream_delivery_failures_total",
    "Micro-batches whose outputs the broker did not acknowledge; each is retried with a new "
    "producer (worker_delivery_attempts) before the worker gives up and exits.",
    registry=_B,
)
GAPS = Counter(
    "glintstream_offset_gaps_total",
    "Times a clicks partition skipped offsets and the worker seeked back to re-read them.",
    registry=_B,
)
MODEL_SWAPS = Counter(
    "glintstream_model_swaps_total", "Model versions hot-swapped in.", registry=_B
)
RING_ITEMS_DROPPED = Counter(
    "glintstream_ring_items_dropped_total",
    "Items of users' stored histories the served model does not know (a swap to a model "
    "without them): left out of the history the model reads.",
    registry=_B,
)
MODEL_LOAD_FAILURES = Counter(
    "glintstream_model_load_failures_total",
    "Announced versions the worker could not fetch or load (it keeps serving the old one).",
    registry=_B,
)
MODEL_VERSION = Gauge(
    "glintstream_model_version",
    "Registry version of the model being served (0 = the fallback checkpoint).",
    registry=_B,
)
CLICK_TO_PUBLISH = Histogram(
    "glintstream_click_to_publish_seconds",
    "From a click's Kafka timestamp to its recommendation acked by the broker: what a user "
    "sees, including time in the topic (lag).",
    buckets=LATENCY_BUCKETS,
    registry=_B,
)
READ_TO_PUBLISH = Histogram(
    "glintstream_read_to_publish_seconds",
    "From the worker receiving a click from its consumer to the recommendation acked by the "
    "broker: the worker's own share of the latency.",
    buckets=LATENCY_BUCKETS,
    registry=_B,
)
MODEL_SECONDS = Histogram(
    "glintstream_model_step_score_seconds",
    "One batched model step + top-K scoring of a micro-batch (all its rounds).",
    buckets=LATENCY_BUCKETS,
    registry=_B,
)
BATCH_SECONDS = Histogram(
    "glintstream_batch_seconds",
    "Wall time of one micro-batch: model, publish + delivery wait, RocksDB write.",
    buckets=LATENCY_BUCKETS,
    registry=_B,
)
DELIVERY_WAIT_SECONDS = Histogram(
    "glintstream_delivery_wait_seconds",
    "Time a micro-batch waits for the broker's acks: its outputs, then its changelog records "
    "(two round trips, one after the other).",
    buckets=LATENCY_BUCKETS,
    registry=_B,
)
BATCH_CLICKS = Histogram(
    "glintstream_batch_clicks",
    "Click messages per micro-batch, as delivered by the consumer.",
    buckets=BATCH_SIZE_BUCKETS,
    registry=_B,
)
STATE_KEYS = Gauge(
    "glintstream_state_keys",
    "Keys in the partition's RocksDB state store (RocksDB's estimate: users + 2 bookkeeping).",
    ["partition"],
    registry=_B,
)
STATE_BYTES = Gauge(
    "glintstream_state_bytes",
    "Size of the partition's RocksDB state store: SST files on disk + memtables.",
    ["partition"],
    registry=_B,
)


# ====================================== worker (glintstream worker): its consumer process
_C = WORKER_REGISTRY

CONSUMER_LAG = Gauge(
    "glintstream_consumer_lag_records",
    "Click messages not yet applied: the partition's high watermark (from the last Fetch "
    "response) minus the next offset to apply.",
    ["topic", "partition"],
    registry=_C,
)
STALLED = Gauge(
    "glintstream_consumer_stalled",
    "1 while the watchdog calls this clicks partition stalled (clicks waiting and none "
    "arriving, or no Fetch response, for worker_stall_timeout_s), else 0.",
    ["partition"],
    registry=_C,
)
STALLS = Counter(
    "glintstream_consumer_stalls_total",
    "Stalls the watchdog reported, by reason: no_progress (clicks waiting, none arriving) or "
    "no_fetch (no Fetch response: the broker is lost or paused).",
    ["reason"],
    registry=_C,
)
REBALANCES = Counter(
    "glintstream_rebalances_total",
    "Consumer-group rebalances this worker went through (each restores the partitions it got).",
    registry=_C,
)
ASSIGNED_PARTITIONS = Gauge(
    "glintstream_assigned_partitions", "clicks partitions assigned to this worker.", registry=_C
)
LAST_COMMIT = Gauge(
    "glintstream_last_commit_timestamp_seconds",
    "Unix time of the last successful Kafka offset commit (the worker's start before the "
    "first). Idle workers have nothing to commit: read it together with the lag.",
    registry=_C,
)


def observe_published(
    now_unix: float, now_monotonic: float, clicks: Iterable[tuple[float | None, float | None]]
) -> None:
    """Latencies of clicks whose recommendations were just acked: (Kafka ts, read time) each.

    Producer clocks may run ahead of ours: a negative age is recorded as 0, not dropped, so the
    counts still match the recommendations.
    """
    for kafka_ts, read_at in clicks:
        if kafka_ts is not None:
            CLICK_TO_PUBLISH.observe(max(0.0, now_unix - kafka_ts))
        if read_at is not None:
            READ_TO_PUBLISH.observe(max(0.0, now_monotonic - read_at))


# ====================================================================== fine-tune job
# (`glintstream finetune`, stream/finetune.py)
_F = FINETUNE_REGISTRY


FINETUNE_RUNS = Counter(
    "glintstream_finetune_runs_total",
    "Fine-tune runs by outcome: published (passed the gate), held (passed, a version is "
    "pinned), rejected (failed the gate), items (failed the gate, its new items published "
    "alone), skipped (too few holdout users), failed (an error, logged).",
    ["outcome"],
    registry=_F,
)
FINETUNE_REJECTED_IN_A_ROW = Gauge(
    "glintstream_finetune_consecutive_rejections",
    "Runs rejected by the evaluation gate since the last published one (a run whose new items "
    "alone were published counts: its weights were rejected; skipped and failed runs neither "
    "count nor reset it).",
    registry=_F,
)
FINETUNE_LAST_RUN = Gauge(
    "glintstream_finetune_last_run_timestamp_seconds",
    "Unix time at which the last fine-tune run ended, by outcome.",
    ["outcome"],
    registry=_F,
)
FINETUNE_CLICKS = Counter(
    "glintstream_finetune_clicks_total",
    "Click messages consumed by the fine-tune job, by outcome: stored, duplicate (redelivered), "
    "rejected (not a valid click; the worker dead-letters it).",
    ["outcome"],
    registry=_F,
)
FINETUNE_HR = Gauge(
    "glintstream_finetune_last_hr10",
    "Holdout HR@10 of the last evaluated run, by model: current (served) or new (candidate).",
    ["model"],
    registry=_F,
)
FINETUNE_NDCG = Gauge(
    "glintstream_finetune_last_ndcg10",
    "Holdout NDCG@10 of the last evaluated run, by model: current (served) or new (candidate); "
    "the gate compares these.",
    ["model"],
    registry=_F,
)
FINETUNE_SECONDS = Gauge(
    "glintstream_finetune_last_run_seconds", "Wall time of the last run.", registry=_F
)
FINETUNE_VERSION = Gauge(
    "glintstream_finetune_last_published_version",
    "Registry version of the last publish.",
    registry=_F,
)
FINETUNE_USERS = Gauge(
    "glintstream_finetune_users", "Users in the fine-tune job's store.", registry=_F
)
FINETUNE_VOCAB_ITEMS = Gauge(
    "glintstream_finetune_vocab_items", "Items in the last fine-tuned vocabulary.", registry=_F
)


def record_finetune_run(outcome: RunOutcome) -> None:
    """Count a finished run and keep the rejected-in-a-row streak the alerts watch."""
    FINETUNE_RUNS.labels(outcome).inc()
    FINETUNE_LAST_RUN.labels(outcome).set_to_current_time()
    if outcome in (RunOutcome.REJECTED, RunOutcome.ITEMS):
        FINETUNE_REJECTED_IN_A_ROW.inc()
    elif outcome is RunOutcome.PUBLISHED:
        FINETUNE_REJECTED_IN_A_ROW.set(0)


def _initialise_labels() -> None:
    """Every label value exists from the start, at 0: a rate over a series that appears only
    with its first event misses that event, and dashboards show nothing instead of 0."""
    for outcome in ClickOutcome:
        CLICKS.labels(outcome)
    for reason in RejectReason:
        REJECTED.labels(reason)
    for stall in StallReason:
        STALLS.labels(stall)
    for run in RunOutcome:
        FINETUNE_RUNS.labels(run)


_initialise_labels()
