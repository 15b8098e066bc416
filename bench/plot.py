"""The latency-distribution figure of `glintstream bench stream` (matplotlib, imported lazily:
only the benchmark needs it, from the optional `bench` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from bench.online import OnlineBenchResult
    from bench.soak import SoakResult
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


def soak_plot(result: SoakResult, path: Path) -> Path:
    """Latency (p50, p99 per row) and memory (broker, worker) over the soak."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.rows
    x = [r.index for r in rows]
    unit = "minute" if result.config.row_s == 60 else f"{result.config.row_s:.0f}-second row"
    fig, (lat, mem) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    lat.plot(x, [r.p99_ms for r in rows], marker="o", label="p99")
    lat.plot(x, [r.p50_ms for r in rows], marker=".", label="p50")
    lat.set_yscale("log")
    lat.set_ylabel("click -> recommendation (ms)")
    lat.grid(True, which="both", alpha=0.3)
    lat.legend()
    mem.plot(x, [r.broker_rss_mib for r in rows], marker="o", label="broker RSS")
    mem.plot(x, [r.worker_rss_mib for r in rows], marker="o", label="worker RSS (both processes)")
    mem.set_ylabel("MiB")
    mem.set_xlabel(unit)
    mem.grid(True, alpha=0.3)
    mem.legend()
    for r in rows:
        if r.events:
            for ax in (lat, mem):
                ax.axvline(r.index, color="grey", linestyle="--", alpha=0.6)
    c = result.config
    fig.suptitle(f"glintstream soak: {c.rate:,.0f} clicks/s for {c.seconds / 60:.0f} min")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def online_plot(result: OnlineBenchResult, path: Path) -> Path:
    """Prequential NDCG@10 per slice of the post-T stream, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, arm in result.arms.items():
        x = range(1, len(arm.slices) + 1)
        ax.plot(
            x, [s.ndcg for s in arm.slices], marker="o", label=f"{name} ({arm.overall.ndcg:.4f})"
        )
    ax.set_xlabel("slice of the post-T stream (equal numbers of clicks, in time order)")
    ax.set_ylabel("prequential NDCG@10")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
