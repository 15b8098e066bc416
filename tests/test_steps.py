"""How a training step weighs its targets (model/steps.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.data import sequences_to_batch
from model.glintru import GlintRUConfig, build_glintru
from model.steps import loss_steps
from model.weighting import TargetWeighting

ITEMS = 30


def users(seed: int) -> list[np.ndarray]:
    """Histories of very different lengths, so steps hold very different numbers of targets."""
    rng = np.random.default_rng(seed)
    lengths = [3] * 12 + [40] * 4
    return [rng.integers(1, ITEMS + 1, size=n) for n in lengths]


def step_losses(
    variant: str, sequences: list[np.ndarray], weighting: TargetWeighting
) -> list[float]:
    torch.manual_seed(0)
    config = GlintRUConfig(num_items=ITEMS, hidden_size=16, n_heads=4, max_len=50, variant=variant)
    model = build_glintru(config).double().eval()  # no dropout: losses are comparable
    with torch.no_grad():
        steps = loss_steps(model, sequences, 4, np.random.default_rng(1), weighting=weighting)
        return [float(step()) for step in steps]


def mean_target_loss(sequences: list[np.ndarray]) -> float:
    """Cross-entropy of every target of every user, averaged: each target counted once."""
    torch.manual_seed(0)
    config = GlintRUConfig(num_items=ITEMS, hidden_size=16, n_heads=4, max_len=50)
    model = build_glintru(config).double().eval()
    total, targets = 0.0, 0
    with torch.no_grad():
        for seq in sequences:
            item_seq, lengths = sequences_to_batch([seq[:-1]], max_len=10**9)
            target, _ = sequences_to_batch([seq[1:]], max_len=10**9)
            batch = {"item_seq": item_seq, "item_seq_len": lengths, "targets": target}
            total += float(model.calculate_loss(batch, divisor=1.0))  # the sum
            targets += len(seq) - 1
    return total / targets


def test_equal_weighting_counts_every_target_once_and_the_step_mean_does_not() -> None:
    sequences = users(seed=0)
    want = mean_target_loss(sequences)
    equal = step_losses("faithful", sequences, TargetWeighting.EQUAL)
    assert np.mean(equal) == pytest.approx(want, rel=1e-9)
    step = step_losses("faithful", sequences, TargetWeighting.STEP)
    assert len(step) == len(equal)
    # a step of short users' targets weighs as much as one of long users': not the same mean
    assert abs(np.mean(step) - want) > 0.01 * want


@pytest.mark.parametrize("variant", ["faithful", "streaming"])
def test_equal_weighting_keeps_the_mean_step_size(variant: str) -> None:
    """The fixed divisor is the epoch's mean targets per step: losses stay on the same scale."""
    sequences = users(seed=1)
    equal = step_losses(variant, sequences, TargetWeighting.EQUAL)
    step = step_losses(variant, sequences, TargetWeighting.STEP)
    assert all(np.isfinite(equal)) and len(equal) == len(step)
    assert 0.5 < np.mean(equal) / np.mean(step) < 2.0
    assert max(equal) / min(equal) > max(step) / min(step)  # big steps now weigh more
