"""Baselines: causality of all_positions, padding invariance, learning, beating popularity."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from model.baselines import (
    GRU4Rec,
    GRU4RecConfig,
    LRURec,
    LRURecConfig,
    Popularity,
    PopularityConfig,
    SASRec,
    SASRecConfig,
    linear_scan,
)
from model.data import Split, item_counts, leave_one_out, synthetic, training_batch
from model.evaluate import evaluate_model
from model.recommender import SequentialRecommender

MAX_LEN = 12


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    # tiny tensors on a shared 2-core machine: intra-op threads only contend (25x slower)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_models(num_items: int = 50) -> list[SequentialRecommender]:
    torch.manual_seed(0)
    return [
        SASRec(SASRecConfig(num_items, d=16, n_heads=2, max_len=MAX_LEN)),
        GRU4Rec(GRU4RecConfig(num_items, d=16, hidden=24)),
        LRURec(LRURecConfig(num_items, d=16, max_len=MAX_LEN)),
    ]


def random_batch(num_items: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([MAX_LEN, 5, 1, 8])
    seq = torch.randint(1, num_items + 1, (4, MAX_LEN), generator=gen)
    seq[torch.arange(MAX_LEN).view(1, -1) >= lengths.view(-1, 1)] = 0  # right padding
    return seq, lengths


@pytest.mark.parametrize("model", small_models(), ids=lambda m: type(m).__name__)
def test_all_positions_equal_forward_on_every_prefix(model: SequentialRecommender) -> None:
    model.eval()
    seq, lengths = random_batch()
    with torch.no_grad():
        every = model.all_positions(seq, lengths)
        for b in range(len(seq)):
            for t in range(int(lengths[b])):
                prefix = model(seq[b : b + 1, : t + 1], torch.tensor([t + 1]))
                torch.testing.assert_close(prefix[0], every[b, t], atol=1e-5, rtol=0)


@pytest.mark.parametrize("model", small_models(), ids=lambda m: type(m).__name__)
def test_extra_padding_changes_nothing(model: SequentialRecommender) -> None:
    model.eval()
    seq, lengths = random_batch()
    short = seq[:, : int(lengths.max())]
    with torch.no_grad():
        scores = model.full_sort_predict(short, lengths)
        assert torch.isneginf(scores[:, 0]).all() and torch.isfinite(scores[:, 1:]).all()
        trimmed = model.full_sort_predict(seq[1:2, :5], lengths[1:2])
    torch.testing.assert_close(trimmed[0], scores[1], atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def synth() -> tuple[Split, np.ndarray, int]:
    data = synthetic(num_users=200, max_len=20, seed=0)  # small: 2 shared CPU cores
    split = leave_one_out(data)
    return split, item_counts(split.train, data.num_items), data.num_items


def train(model: SequentialRecommender, split: Split, steps: int, lr: float) -> list[float]:
    """Full-batch Adam on every prefix of the training sequences (seeded, a second or two)."""
    batch = training_batch([s for s in split.train if len(s) >= 2], max_len=20)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model.calculate_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("length", [1, 2, 5, 8, 13])
def test_linear_scan_is_the_recurrence(length: int) -> None:
    torch.manual_seed(length)
    decay = torch.polar(torch.rand(6), 2 * np.pi * torch.rand(6))
    inputs = torch.randn(3, length, 6, dtype=torch.cfloat)
    h, expected = torch.zeros(3, 6, dtype=torch.cfloat), []
    for t in range(length):
        h = decay * h + inputs[:, t]
        expected.append(h)
    torch.testing.assert_close(linear_scan(decay, inputs), torch.stack(expected, dim=1))


@pytest.mark.parametrize("kind", ["sasrec", "gru4rec", "lrurec"])
def test_loss_decreases_on_synthetic(kind: str, synth: tuple[Split, np.ndarray, int]) -> None:
    split, _, num_items = synth
    torch.manual_seed(0)
    if kind == "sasrec":
        model: SequentialRecommender = SASRec(SASRecConfig(num_items, d=32, max_len=20))
    elif kind == "lrurec":
        model = LRURec(LRURecConfig(num_items, d=32, max_len=20))
    else:
        model = GRU4Rec(GRU4RecConfig(num_items, d=32, hidden=32))
    losses = train(model, split, steps=8, lr=2e-2)
    assert losses[-1] < losses[0] - 0.3, losses


def test_last_target_loss_form(synth: tuple[Split, np.ndarray, int]) -> None:
    split, _, num_items = synth
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items, d=16, max_len=20)).eval()
    batch = training_batch(split.train[:10], max_len=20)
    last = batch["targets"].gather(1, (batch["item_seq_len"] - 1).view(-1, 1)).squeeze(1)
    loss = model.calculate_loss({**batch, "targets": last})
    assert torch.isfinite(loss) and loss.item() > 0


def test_popularity(synth: tuple[Split, np.ndarray, int]) -> None:
    _, counts, num_items = synth
    pop = Popularity(PopularityConfig(num_items)).fit(counts)
    assert not list(pop.parameters())
    seq = torch.tensor([[1, 2, 0], [3, 0, 0]])
    scores = pop.full_sort_predict(seq, torch.tensor([2, 1]))
    torch.testing.assert_close(
        scores[:, 1:], torch.log1p(torch.tensor(counts[1:])).float().expand(2, -1)
    )
    assert pop.all_positions(seq, torch.tensor([2, 1])).shape == (2, 3, 1)
    with pytest.raises(TypeError, match="fit"):
        pop.calculate_loss({"item_seq": seq, "item_seq_len": torch.tensor([2, 1]), "targets": seq})


def test_sasrec_beats_popularity(synth: tuple[Split, np.ndarray, int]) -> None:
    split, counts, num_items = synth
    torch.manual_seed(0)
    sasrec = SASRec(SASRecConfig(num_items, d=32, max_len=20))
    train(sasrec, split, steps=12, lr=1e-2)
    pop = Popularity(PopularityConfig(num_items)).fit(counts)
    args = (split.test_inputs, split.test_targets, counts)
    ours = evaluate_model(sasrec, *args)
    base = evaluate_model(pop, *args)
    assert base["full"]["HR@10"] < 0.3  # the planted order is invisible to popularity
    assert ours["full"]["HR@10"] > base["full"]["HR@10"] + 0.3
    assert ours["full_masked"]["NDCG@10"] > base["full_masked"]["NDCG@10"]
    assert sasrec.training  # evaluate_model puts back the mode it found
