"""Training and the evaluate command, end to end on real and synthetic data."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from model.baselines import Popularity, PopularityConfig
from model.data import (
    SequenceData,
    before_time,
    item_counts,
    leave_one_out,
    load_dataset,
    synthetic,
    time_at_fraction,
)
from model.evaluate import PROTOCOLS, encode_histories, evaluate_model
from model.glintru import GlintRUConfig, build_glintru
from model.steps import windows
from model.train import TrainConfig, evaluate_checkpoint, train
from stream.cli import main
from stream.settings import load_settings

DATA_DIR = load_settings().paths.data_dir
needs_ml100k = pytest.mark.skipif(
    not (DATA_DIR / "ml-100k" / "ml-100k.inter.gz").exists(),
    reason=f"ML-100k not found under {DATA_DIR} (set GLINTSTREAM_DATA_DIR)",
)


def test_windows_cover_every_target_once_newest_window_full():
    seq = np.arange(1, 24)  # 22 targets
    rows = windows([seq], max_len=5)
    targets = np.concatenate([t for _, t in rows])
    assert sorted(targets.tolist()) == list(range(2, 24))
    inputs, newest = rows[0]
    assert len(inputs) == 5 and newest[-1] == 23  # the most recent targets see a full window
    for inp, tgt in rows:
        assert np.array_equal(tgt, inp + 1)  # target t is the item after input t


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 60), max_len=st.integers(1, 12), data=st.data())
def test_overlapping_windows_train_each_target_once_with_enough_context(n, max_len, data):
    stride = data.draw(st.integers(1, max_len))
    seq = np.arange(1, n + 1)  # item i is the user's i-th click: it counts its own history
    trained = []
    for inputs, targets in windows([seq], max_len, stride):
        assert len(inputs) <= max_len
        for position in np.flatnonzero(targets):
            assert targets[position] == inputs[position] + 1
            history, context = inputs[position], position + 1  # clicks seen, overall / here
            assert context >= min(history, max_len - stride + 1)
            if stride == 1:  # the official semantics: the L clicks before the target
                assert context == min(history, max_len)
            trained.append(int(targets[position]))
    assert sorted(trained) == list(range(2, n + 1))


def train_on_planted(tmp_path: Path, **overrides) -> tuple[dict, float, SequenceData]:
    """Train a small model on planted sequences (histories of 8-30 clicks, window 12);
    returns the training metrics, popularity's test NDCG@10 (full ranking) and the data."""
    data = synthetic(num_users=150, num_items=30, min_len=8, max_len=30, seed=1)
    fields = {"epochs": 3, "hidden_size": 32, "batch_size": 32, "seed": 0} | overrides
    config = TrainConfig(
        dataset="synthetic", out_dir=tmp_path, max_len=12, threads=1, progress=False, **fields
    )
    metrics = train(config, data=data)
    split = leave_one_out(data)
    counts = item_counts(split.train, data.num_items)
    pop = Popularity(PopularityConfig(data.num_items)).fit(counts)
    pop_test = evaluate_model(pop, split.test_inputs, split.test_targets, counts)
    return metrics, pop_test["full"]["NDCG@10"], data


@pytest.mark.parametrize("model_name", ["glintru", "glintru-streaming"])
def test_training_learns_planted_sequences(tmp_path: Path, model_name: str):
    metrics, popularity_ndcg, data = train_on_planted(tmp_path, model=model_name)
    assert metrics["test"]["full"]["NDCG@10"] > 2 * popularity_ndcg
    # the saved checkpoint reproduces the training run's figures through the evaluate path
    again = evaluate_checkpoint(tmp_path, "synthetic", None, seed=0, data=data)
    assert again == metrics["test"]


def test_overlapping_windows_and_sparse_validation_train(tmp_path: Path):
    # most histories are longer than the window of 12: the windows overlap
    metrics, popularity_ndcg, _ = train_on_planted(
        tmp_path, epochs=5, window_stride=4, eval_every=2
    )
    assert [h["epoch"] for h in metrics["history"]] == [2, 4, 5]  # and after the last epoch
    assert metrics["test"]["full"]["NDCG@10"] > 2 * popularity_ndcg
    with pytest.raises(ValueError, match="eval_every"):
        TrainConfig(eval_every=0)


@needs_ml100k
@pytest.mark.timeout(600)
def test_train_command_on_ml100k_beats_popularity(tmp_path: Path):
    runner = CliRunner()
    out = tmp_path / "ckpt"
    args = [
        "train",
        "--dataset",
        "ml-100k",
        "--max-len",
        "50",
        "--hidden-size",
        "64",
        "--lr",
        "3e-3",
        "--epochs",
        "3",
        "--threads",
        "1",  # `make test` runs two test processes on CI's two cores
        "--no-progress",
        "--out",
        str(out),
    ]
    result = runner.invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        main, ["evaluate", "--checkpoint", str(out), "--dataset", "ml-100k", "--json"]
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output.strip().splitlines()[-1])
    assert set(figures) == {*PROTOCOLS, "users"}
    assert figures["users"] == 943

    data = load_dataset("ml-100k", DATA_DIR)
    split = leave_one_out(data)
    counts = item_counts(split.train, data.num_items)
    pop = Popularity(PopularityConfig(data.num_items)).fit(counts)
    pop_test = evaluate_model(pop, split.test_inputs, split.test_targets, counts)
    assert figures["full_masked"]["NDCG@10"] > pop_test["full_masked"]["NDCG@10"]


def test_streaming_encoding_of_long_histories_equals_one_pass():
    torch.manual_seed(0)
    model = build_glintru(
        GlintRUConfig(num_items=20, hidden_size=16, n_heads=4, max_len=4, variant="streaming")
    )
    model = model.double().eval()
    rng = np.random.default_rng(0)
    histories = [rng.integers(1, 21, n) for n in (1, 3, 9, 14)]
    encoded = encode_histories(model, histories)
    for h, u in zip(histories, encoded):
        full = model.all_positions(torch.from_numpy(h)[None], torch.tensor([len(h)]))[0, -1]
        assert torch.allclose(u, full, atol=1e-10)


def test_training_continues_from_a_checkpoint(tmp_path: Path):
    data = synthetic(num_users=60, num_items=20, min_len=6, max_len=15, seed=2)
    base = TrainConfig(
        dataset="synthetic",
        out_dir=tmp_path / "a",
        epochs=2,
        max_len=8,
        hidden_size=16,
        batch_size=16,
        threads=1,
        progress=False,
    )
    first = train(base, data=data)
    # zero further epochs from the saved weights reproduces the saved model exactly
    again = train(
        replace(base, out_dir=tmp_path / "b", epochs=0, init_from=tmp_path / "a"), data=data
    )
    assert again["test"] == first["test"]
    # the continuation names its starting weights by content, not only by their path
    start = json.loads((tmp_path / "a" / "manifest.json").read_text())
    continued = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert continued["extra"]["init_from_sha256"] == start["weights_sha256"]
    assert start["extra"]["init_from_sha256"] is None
    with pytest.raises(ValueError, match="another vocabulary"):
        train(
            replace(base, out_dir=tmp_path / "c", hidden_size=8, init_from=tmp_path / "a"),
            data=data,
        )


def test_a_killed_training_keeps_its_best_epoch(tmp_path: Path):
    """The best-so-far checkpoint is on disk from the first epoch on, not only at the end."""
    out = tmp_path / "run"
    glintstream = Path(sys.executable).parent / "glintstream"  # the installed console script
    command = [str(glintstream), "train", "--dataset", "synthetic"]
    command += ["--out", str(out), "--epochs", "1000", "--threads", "1", "--no-progress"]
    command += ["--max-len", "12", "--hidden-size", "16", "--patience", "1000"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "manifest.json").exists():
            assert proc.poll() is None, "training exited before saving anything"
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.2)
        time.sleep(0.5)  # let the write complete (the manifest is renamed into place last)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["interrupted_at_best"] is True
    assert manifest["metrics"]["best_epoch"] >= 1
    assert (out / "model.safetensors").stat().st_size > 0


@needs_ml100k
@pytest.mark.timeout(300)
def test_train_before_a_time_knows_nothing_of_the_clicks_after_it(tmp_path: Path):
    """`--before 0.8`: the starting checkpoint of `bench online` sees only the pre-T clicks."""
    runner = CliRunner()
    out = tmp_path / "before"
    args = ["train", "--dataset", "ml-100k", "--before", "0.8", "--epochs", "1", "--max-len"]
    args += ["20", "--hidden-size", "16", "--threads", "1", "--no-progress", "--out", str(out)]
    result = runner.invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = load_dataset("ml-100k", DATA_DIR)
    before = before_time(data, time_at_fraction(data, 0.8))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["vocab"] == before.vocab and manifest["dataset"] == "ml-100k-before-T"
    assert before.num_clicks == 79_999 and before.num_items < data.num_items
    result = runner.invoke(main, [*args[:3], "--before", "1.5", *args[5:]])
    assert result.exit_code == 2 and "fraction must be in (0, 1)" in result.output
