"""Read a Prometheus text endpoint (the worker's and the fine-tune job's own metrics)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterable

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

SCRAPE_TIMEOUT_S = 5.0


def _families(url: str) -> Iterable[Metric]:
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
        text = response.read().decode()
    return text_string_to_metric_families(text)


def histogram_totals(url: str) -> dict[str, tuple[float, float]]:
    """{histogram name: (sum, count)} over all label sets, from one scrape of ``url``."""
    totals: dict[str, tuple[float, float]] = {}
    for family in _families(url):
        if family.type != "histogram":
            continue
        total = count = 0.0
        for sample in family.samples:
            if sample.name == f"{family.name}_sum":
                total += sample.value
            elif sample.name == f"{family.name}_count":
                count += sample.value
        totals[family.name] = (total, count)
    return totals


def sample_values(url: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """{sorted label pairs: value} of every sample called ``name``, from one scrape of ``url``."""
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in _families(url)
        for sample in family.samples
        if sample.name == name
    }
