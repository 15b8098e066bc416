"""`glintstream bench stream` at tiny scale: synthetic clicks, small models, a few hundred
clicks. Every figure of the table is measured (positive) and the online (prequential) accuracy
of both policies equals the offline evaluation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from bench.stream import StreamBench, StreamBenchConfig, StreamBenchResult
from model.checkpoint import save_checkpoint
from model.data import synthetic
from model.glintru import GlintRUConfig, build_glintru

NUM_ITEMS = 60
MAX_LEN = 8  # short: most histories cross the window

pytestmark = pytest.mark.timeout(240)


def checkpoint(directory: Path, vocab: list[str], variant: str) -> Path:
    torch.manual_seed(0)
    config = GlintRUConfig(
        num_items=NUM_ITEMS, hidden_size=16, n_heads=2, max_len=MAX_LEN, variant=variant
    )
    model = build_glintru(config).eval()
    kwargs = {"kind": "glintru", "config": config, "dataset": "synthetic", "metrics": {}}
    return save_checkpoint(directory, model, vocab=vocab, **kwargs)


def test_bench_stream_tiny(tmp_path: Path) -> None:
    data = synthetic(num_users=60, num_items=NUM_ITEMS, min_len=8, max_len=20, seed=3)
    config = StreamBenchConfig(
        checkpoint=checkpoint(tmp_path / "streaming", data.vocab, "streaming"),
        faithful_checkpoint=checkpoint(tmp_path / "faithful", data.vocab, "faithful"),
        dataset="synthetic",
        users=None,
        throughput_clicks=400,
        recompute_clicks=400,
        rates=(200.0,),
        rate_seconds=1.0,
        work_dir=tmp_path / "work",
        plot=None,  # matplotlib is the bench extra's, not the tests'
    )
    result = StreamBench(config, data=data).run()

    assert set(result.throughput) == {"worker", "faust", "raw", "recompute", "sasrec", "faithful"}
    for name, figures in result.throughput.items():
        assert figures.rate > 0 and figures.peak_rss_mib > 0, name
    assert result.throughput["worker"].cpu_s_per_1k > 0
    [latency] = result.latency
    assert len(latency.ms) == 200 and latency.quantile(50) > 0 and latency.achieved > 0
    assert (tmp_path / "work" / "latency.csv").read_text().count("\n") == 201

    assert [a.policy for a in result.accuracy] == ["streaming", "window (faithful)"]
    for accuracy in result.accuracy:
        assert accuracy.users > 0
        assert accuracy.max_diff <= 1e-6, accuracy

    table = result.table()
    for metric, value, _ in result.rows():
        assert f"| {metric} | {value} |" in table
        numbers = [float(n.replace(",", "")) for n in re.findall(r"[\d,]*\.?\d+", value)]
        assert numbers, metric
        # accuracy may be 0 for an untrained model; the "to the reader" share of the latency
        # breakdown is a difference of two means and may round to 0 or below
        if " online / offline " not in metric and "mean ms" not in metric:
            assert all(n > 0 for n in numbers), (metric, value)


def test_a_failed_phase_is_the_first_row_and_what_ran_is_still_reported() -> None:
    result = StreamBenchResult(failed="worker: worker exited")
    assert result.rows() == [("FAILED phase (the later ones not run)", "worker: worker exited", "")]
    assert "worker exited" in result.table()
