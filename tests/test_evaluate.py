"""Metrics by hand, pessimistic ties, seen-item masking and the pop100 sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from model.evaluate import (
    PROTOCOLS,
    evaluate,
    full_ranks,
    mask_seen,
    metrics_from_ranks,
    sample_negatives,
    sampled_ranks,
)

KEYS = {"HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR@10"}


def test_metrics_by_hand() -> None:
    top = metrics_from_ranks(np.array([0]))
    assert set(top) == KEYS and all(v == 1.0 for v in top.values())
    m = metrics_from_ranks(np.array([3]))
    assert m["HR@5"] == 1.0 and m["NDCG@5"] == pytest.approx(1 / math.log2(5))
    assert m["MRR@10"] == pytest.approx(0.25)
    m = metrics_from_ranks(np.array([7]))
    assert m["HR@5"] == 0.0 and m["NDCG@5"] == 0.0 and m["HR@10"] == 1.0
    assert m["NDCG@10"] == pytest.approx(1 / math.log2(9))
    m = metrics_from_ranks(np.array([0, 25]))  # averaged over users
    assert m["HR@20"] == 0.5 and m["NDCG@20"] == 0.5 and m["MRR@10"] == 0.5


@settings(max_examples=60, deadline=None, derandomize=True)
@given(arrays(np.int64, st.integers(1, 30), elements=st.integers(0, 100)))
def test_metrics_bounded_and_monotone(ranks: np.ndarray) -> None:
    m = metrics_from_ranks(ranks)
    assert all(0.0 <= v <= 1.0 for v in m.values())
    assert m["HR@5"] <= m["HR@10"] <= m["HR@20"]
    assert m["NDCG@5"] <= m["NDCG@10"] <= m["NDCG@20"]
    assert m["MRR@10"] <= m["HR@10"]
    for k in (5, 10, 20):
        assert m[f"NDCG@{k}"] <= m[f"HR@{k}"] + 1e-12
    worse = metrics_from_ranks(ranks + 1)  # pushing every target down never helps
    assert all(worse[k] <= m[k] + 1e-12 for k in m)


def test_full_ranks_pessimistic_ties() -> None:
    scores = torch.tensor([[float("-inf"), 1.0, 5.0, 5.0, 2.0]])
    assert full_ranks(scores, torch.tensor([2])).tolist() == [1]  # tie with item 3 counts
    assert full_ranks(scores, torch.tensor([4])).tolist() == [2]
    constant = torch.zeros(1, 31)
    assert full_ranks(constant, torch.tensor([5])).tolist() == [29]  # last of 30 items


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(0, 2**31 - 1), st.integers(2, 40), st.integers(1, 8))
def test_full_ranks_in_range(seed: int, num_items: int, batch: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(-3, 3, (batch, num_items + 1), generator=gen).float()
    targets = torch.randint(1, num_items + 1, (batch,), generator=gen)
    ranks = full_ranks(scores, targets)
    assert ((ranks >= 0) & (ranks <= num_items - 1)).all()


def test_masking_seen_items_lifts_the_target() -> None:
    scores = torch.tensor([[float("-inf"), 9.0, 8.0, 1.0, 0.0, 7.0]])
    target = torch.tensor([5])
    history = [np.array([1, 2, 5])]  # the target itself was seen too: it must stay
    assert full_ranks(scores, target).item() == 2
    masked = mask_seen(scores, history, target)
    assert full_ranks(masked, target).item() == 0
    assert masked[0, 5] == 7.0 and scores[0, 1] == 9.0  # the input is not modified


def test_constant_scorer_gets_no_credit() -> None:
    n, num_items = 50, 60
    rng = np.random.default_rng(0)
    inputs = [rng.integers(1, num_items + 1, size=5) for _ in range(n)]
    targets = rng.integers(1, num_items + 1, size=n)
    counts = np.r_[0, np.ones(num_items, dtype=np.int64)]
    out = evaluate(
        lambda h: torch.zeros(len(h), num_items + 1), inputs, targets, counts, mask_last=3
    )
    assert out["users"] == n
    for protocol in PROTOCOLS:
        assert out[protocol]["HR@10"] == 0.0 and set(out[protocol]) == KEYS


def test_nan_scores_get_no_credit() -> None:
    nan = lambda h: torch.full((len(h), 41), float("nan"))  # noqa: E731
    out = evaluate(nan, [np.array([1])] * 4, np.array([1, 2, 3, 4]), np.ones(41), mask_last=1)
    assert out["full"]["HR@20"] == 0.0 and out["pop100"]["HR@20"] == 0.0


def test_oracle_scores_everything_first() -> None:
    num_items = 30
    targets = np.arange(1, 21)
    inputs = [np.array([t]) for t in targets]  # history holds the target: masking must spare it

    def oracle(histories: list[np.ndarray]) -> torch.Tensor:
        scores = torch.zeros(len(histories), num_items + 1)
        scores[torch.arange(len(histories)), torch.from_numpy(np.concatenate(histories))] = 1.0
        return scores

    counts = np.r_[0, np.arange(1, num_items + 1)]
    out = evaluate(oracle, inputs, targets, counts, mask_last=1, batch_size=7)
    assert all(out[p]["NDCG@10"] == 1.0 for p in PROTOCOLS)


def test_only_the_last_l_items_are_masked_in_last_l_masked() -> None:
    """An item clicked long ago (before the last L) is still a candidate, as in the worker."""
    scores = torch.tensor([[float("-inf"), 9.0, 8.0, 1.0, 5.0]])  # items 1..4

    def score(histories: list[np.ndarray]) -> torch.Tensor:
        return scores.expand(len(histories), -1)

    history, target = np.array([1, 2]), np.array([4])  # item 1 long ago, item 2 recent
    out = evaluate(score, [history], target, np.ones(5), mask_last=1)
    assert out["full"]["MRR@10"] == 1 / 3  # items 1 and 2 ahead of the target
    assert out["full_masked"]["MRR@10"] == 1.0  # both masked
    assert out["last_l_masked"]["MRR@10"] == 1 / 2  # only item 2 masked


def test_negatives_exclude_target_and_follow_popularity() -> None:
    counts = np.array([0, 1, 2, 3, 4, 0, 10])  # item 5 never seen: never a negative
    targets = np.full(3000, 6)  # the most popular item is the target: it must never appear
    neg = sample_negatives(targets, counts, np.random.default_rng(0))
    assert neg.shape == (3000, 100)
    assert not (neg == 6).any() and not (neg == 5).any() and not (neg == 0).any()
    freq = np.bincount(neg.ravel(), minlength=7)[1:5] / neg.size
    np.testing.assert_allclose(freq, np.array([1, 2, 3, 4]) / 10, atol=0.01)


def test_negatives_mixed_targets_and_seeded() -> None:
    counts = np.r_[0, np.arange(1, 51)]
    targets = np.random.default_rng(1).integers(1, 51, size=500)
    a = sample_negatives(targets, counts, np.random.default_rng(7))
    b = sample_negatives(targets, counts, np.random.default_rng(7))
    assert np.array_equal(a, b) and not (a == targets[:, None]).any()


def test_sampled_ranks_gather_the_full_rows() -> None:
    scores = torch.tensor([[float("-inf"), 3.0, 1.0, 2.0, 3.0]])
    negatives = torch.tensor([[2, 3, 4, 4]])  # duplicates count once each, like RecBole
    assert sampled_ranks(scores, torch.tensor([1]), negatives).tolist() == [2]


def test_evaluate_independent_of_batch_size() -> None:
    num_items = 40
    rng = np.random.default_rng(3)
    inputs = [rng.integers(1, num_items + 1, size=rng.integers(1, 9)) for _ in range(70)]
    targets = rng.integers(1, num_items + 1, size=70)
    table = torch.randn(num_items + 1, generator=torch.Generator().manual_seed(0))

    def score(histories: list[np.ndarray]) -> torch.Tensor:
        # depends on the history so masking matters; deterministic per history
        last = torch.tensor([int(h[-1]) for h in histories]).view(-1, 1)
        return table.view(1, -1) * last.float().sin()

    counts = np.r_[0, rng.integers(1, 20, size=num_items)]
    assert evaluate(score, inputs, targets, counts, mask_last=4, batch_size=8) == evaluate(
        score, inputs, targets, counts, mask_last=4, batch_size=512
    )
