"""The worker's Prometheus metrics (a later issue adds latency, lag and commit-age metrics)."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram, start_http_server

log = logging.getLogger(__name__)

CLICKS = Counter(
    "glintstream_clicks_total",
    "Click messages consumed, by outcome: applied, rejected (see the next metric), duplicate "
    "(already applied: redelivery), out_of_order (dropped while a gap is re-read).",
    ["outcome"],
)
REJECTED = Counter(
    "glintstream_clicks_rejected_total",
    "Click messages sent to the DLQ, by reason (stream.clicks.REASONS).",
    ["reason"],
)
RECOMMENDATIONS = Counter("glintstream_recommendations_total", "Recommendations published.")
GAPS = Counter(
    "glintstream_offset_gaps_total",
    "Times a clicks partition skipped offsets and the worker seeked back to re-read them.",
)
MODEL_SWAPS = Counter("glintstream_model_swaps_total", "Model versions hot-swapped in.")
BATCH_SECONDS = Histogram(
    "glintstream_batch_seconds",
    "Wall time of one micro-batch: model, publish + delivery wait, RocksDB write.",
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
)


def serve_metrics(host: str, port: int) -> None:
    """Expose /metrics; port 0 disables it. A busy port is logged, not fatal."""
    if not port:
        return
    try:
        start_http_server(port, addr=host)
        log.info("metrics on http://%s:%d/metrics", host, port)
    except OSError as e:
        log.warning("metrics not served on %s:%d: %s", host, port, e)
