"""The latency-distribution figure of `glintstream bench stream` (matplotlib, imported lazily:
only the benchmark needs it, from the optional `bench` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from bench.stream import Latency


def latency_plot(latencies: list[Latency], path: Path) -> Path:
    """One empirical CDF of click->recommendation latency per offered rate, log time axis."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4))
    for lat in latencies:
        ms = np.sort(lat.ms)
        share = np.arange(1, len(ms) + 1) / len(ms)
        p99 = lat.quantile(99)
        ax.step(ms, share, where="post", label=f"{lat.offered:,.0f} clicks/s (p99 {p99:.0f} ms)")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())  # 20, not 2 x 10^1
    ax.set_xlabel("click -> recommendation latency (ms)")
    ax.set_ylabel("share of clicks")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("glintstream worker: latency at fixed offered rates")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
