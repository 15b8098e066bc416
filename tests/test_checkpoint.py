"""Checkpoint round trips (identical outputs), manifest contents, corruption is rejected."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from model.baselines import (
    GRU4Rec,
    GRU4RecConfig,
    LRURec,
    LRURecConfig,
    Popularity,
    PopularityConfig,
    SASRec,
    SASRecConfig,
)
from model.checkpoint import (
    MANIFEST,
    WEIGHTS,
    CheckpointError,
    load_checkpoint,
    model_kind,
    save_checkpoint,
    sha256_file,
)

NUM_ITEMS = 20
VOCAB = ["<pad>"] + [f"item{i}" for i in range(1, NUM_ITEMS + 1)]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    # tiny tensors on a shared 2-core machine: intra-op threads only contend
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SEQ = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 0, 0]])
LENGTHS = torch.tensor([5, 3])


def build(kind: str) -> tuple[nn.Module, Any]:
    torch.manual_seed(0)
    if kind == "sasrec":
        config: Any = SASRecConfig(NUM_ITEMS, d=16, max_len=8)
        return SASRec(config), config
    if kind == "gru4rec":
        config = GRU4RecConfig(NUM_ITEMS, d=16, hidden=8)
        return GRU4Rec(config), config
    if kind == "lrurec":
        config = LRURecConfig(NUM_ITEMS, d=16, max_len=8)
        return LRURec(config), config
    config = PopularityConfig(NUM_ITEMS)
    return Popularity(config).fit(torch.arange(NUM_ITEMS + 1).numpy()), config


def save(directory: Path, model: nn.Module, config: Any, kind: str) -> Path:
    return save_checkpoint(
        directory,
        model,
        kind=kind,
        config=config,
        vocab=VOCAB,
        dataset="synthetic",
        metrics={"full_masked": {"HR@10": 0.5}},
        extra={"epochs": 3},
    )


@pytest.mark.parametrize("kind", ["sasrec", "gru4rec", "lrurec", "popularity"])
def test_round_trip_identical_outputs(kind: str, tmp_path: Path) -> None:
    model, config = build(kind)
    model.eval()
    save(tmp_path / "ckpt", model, config, kind)
    loaded, manifest = load_checkpoint(tmp_path / "ckpt")
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.config == config
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.full_sort_predict(SEQ, LENGTHS),  # type: ignore[operator]
            model.full_sort_predict(SEQ, LENGTHS),  # type: ignore[operator]
            atol=0,
            rtol=0,
        )
    assert manifest["kind"] == kind and manifest["vocab"] == VOCAB
    assert manifest["dataset"] == "synthetic" and manifest["extra"] == {"epochs": 3}
    assert manifest["metrics"]["full_masked"]["HR@10"] == 0.5
    assert manifest["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert manifest["weights_sha256"] == sha256_file(tmp_path / "ckpt" / WEIGHTS)
    assert datetime.fromisoformat(manifest["created"]).utcoffset() is not None
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [MANIFEST, WEIGHTS]


def test_corrupted_weights_are_rejected(tmp_path: Path) -> None:
    model, config = build("sasrec")
    directory = save(tmp_path, model, config, "sasrec")
    weights = directory / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # flip one byte of tensor data: still a parseable file
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(directory)


def test_bad_directories(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=MANIFEST):
        load_checkpoint(tmp_path)
    model, config = build("gru4rec")
    save(tmp_path, model, config, "gru4rec")
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    (tmp_path / MANIFEST).write_text(json.dumps({**manifest, "kind": "bert4rec"}))
    with pytest.raises(CheckpointError, match="unknown model kind"):
        load_checkpoint(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version"):
        load_checkpoint(tmp_path)


def test_save_checks_kind_and_vocab(tmp_path: Path) -> None:
    model, config = build("gru4rec")
    with pytest.raises(CheckpointError, match="expects"):
        save(tmp_path, model, config, "sasrec")
    with pytest.raises(CheckpointError, match="vocab"):
        save_checkpoint(
            tmp_path,
            model,
            kind="gru4rec",
            config=config,
            vocab=VOCAB[:-1],
            dataset="x",
            metrics={},
        )


def test_glintru_round_trip(tmp_path: Path) -> None:
    glintru = pytest.importorskip("model.glintru")
    config_cls = model_kind("glintru").config_cls()
    assert config_cls is glintru.GlintRUConfig
    torch.manual_seed(0)
    config = config_cls(num_items=NUM_ITEMS)
    model = glintru.build_glintru(config).eval()
    save(tmp_path, model, config, "glintru")
    loaded, _ = load_checkpoint(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.full_sort_predict(SEQ, LENGTHS),  # type: ignore[operator]
            model.full_sort_predict(SEQ, LENGTHS),
            atol=0,
            rtol=0,
        )
