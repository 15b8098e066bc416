"""What one optimiser step computes: the loss-step iterator training and fine-tuning share.

Every prefix of a user is trained in one pass (``calculate_loss`` with per-position targets),
instead of RecBole's one sample per prefix. Histories longer than the window L are cut into
windows of L, newest first, that overlap by L - stride: each window trains only the targets of
its newest ``stride`` positions (the oldest window trains all of its own), so every target is
trained once and sees at least L - stride + 1 clicks of context. The official model gives every
target the L clicks before it: stride 1 is exact, stride L (the default) cheapest, and targets
early in an older window see fewer clicks (the documented deviation). A model that ``chunks``
(the streaming GLINT-RU) instead runs each user's whole history in chunks of L with its
recurrent state carried between chunks (truncated backpropagation).

Steps hold very different numbers of targets (short rows batch together), so a step's mean
weighs one target by 1 / its step's targets: a short user's clicks count several times more
than a long user's. ``TargetWeighting.EQUAL`` divides every step's summed loss by one fixed
divisor instead (the epoch's mean targets per step), so every target weighs the same, as in
RecBole's one-sample-per-prefix training, at the same overall step size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np
from torch import Tensor

from model.data import sequences_to_batch
from model.recommender import SequentialRecommender, target_loss
from model.weighting import TargetWeighting

LossStep = Callable[[], Tensor]


def windows(
    sequences: list[np.ndarray], max_len: int, stride: int | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets) windows of at most L positions, newest first, every target trained once.

    A window ending at ``end`` trains the targets at [end - stride, end); the others are set to
    0 (the pad, which the loss skips) because a newer window already trained them.
    """
    stride = max_len if stride is None else stride
    if not 1 <= stride <= max_len:
        raise ValueError(f"window stride {stride} must be in 1..{max_len}")
    rows = []
    for seq in sequences:
        inputs, targets = seq[:-1], seq[1:]
        end = len(inputs)
        while end > 0:
            start = max(0, end - max_len)
            trained_from = start if start == 0 else end - stride
            tgt = targets[start:end].copy()
            tgt[: trained_from - start] = 0
            rows.append((inputs[start:end], tgt))
            end = start if start == 0 else end - stride
    return rows


def batches(
    rows: list[tuple[np.ndarray, np.ndarray]], batch_size: int, rng: np.random.Generator
) -> Iterator[dict[str, Tensor]]:
    """Rows of similar length together (little padding), in a random order of batches."""
    order = sorted(rng.permutation(len(rows)), key=lambda i: len(rows[i][0]))
    groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for g in rng.permutation(len(groups)):
        chosen = [rows[i] for i in groups[g]]
        item_seq, lengths = sequences_to_batch([r[0] for r in chosen], max_len=10**9)
        targets, _ = sequences_to_batch([r[1] for r in chosen], max_len=10**9)
        yield {"item_seq": item_seq, "item_seq_len": lengths, "targets": targets}


def loss_steps(
    model: SequentialRecommender,
    sequences: list[np.ndarray],
    batch_size: int,
    rng: np.random.Generator,
    window_stride: int | None = None,
    weighting: TargetWeighting = TargetWeighting.STEP,
) -> Iterator[LossStep]:
    """One epoch: a closure per optimiser step computing its loss (the caller steps)."""
    if model.chunks:
        yield from _chunked_loss_steps(model, sequences, batch_size, rng, weighting)
        return
    device = model.item_embeddings().device
    epoch = list(batches(windows(sequences, model.max_len, window_stride), batch_size, rng))
    divisor = None
    if weighting is TargetWeighting.EQUAL and epoch:
        targets = sum(int((b["targets"] > 0).sum()) for b in epoch)
        divisor = targets / len(epoch)
    for batch in epoch:

        def loss(b: dict[str, Tensor] = batch) -> Tensor:
            return model.calculate_loss({k: v.to(device) for k, v in b.items()}, divisor)

        yield loss


def _chunked_loss_steps(
    model: SequentialRecommender,
    sequences: list[np.ndarray],
    batch_size: int,
    rng: np.random.Generator,
    weighting: TargetWeighting,
) -> Iterator[LossStep]:
    """Per chunk of L clicks, a closure computing the loss; the state is carried across chunks."""
    L = model.max_len
    users = [s for s in sequences if len(s) >= 2]
    order = sorted(rng.permutation(len(users)), key=lambda i: len(users[i]))
    groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    device = model.item_embeddings().device
    divisor = None
    if weighting is TargetWeighting.EQUAL and groups:
        chunks = sum(-(-max(len(users[i]) - 1 for i in g) // L) for g in groups)
        divisor = sum(len(s) - 1 for s in users) / chunks
    for g in rng.permutation(len(groups)):
        chosen = [users[i] for i in groups[g]]
        inputs, lengths = sequences_to_batch([s[:-1] for s in chosen], max_len=10**9)
        targets, _ = sequences_to_batch([s[1:] for s in chosen], max_len=10**9)
        state = model.init_state(len(chosen))
        for start in range(0, inputs.size(1), L):
            chunk_len = (lengths - start).clamp(0, L)
            batch = (inputs[:, start : start + L], chunk_len, targets[:, start : start + L])

            def loss(batch: tuple[Tensor, Tensor, Tensor] = batch) -> Tensor:
                nonlocal state
                seq, n, tgt = (t.to(device) for t in batch)
                out, new_state = model.streaming_chunk(seq, n, state)
                state = replace(new_state, vec=new_state.vec.detach())
                assert out is not None
                keep = tgt > 0
                return target_loss(model.logits(out[keep]), tgt[keep], divisor)

            yield loss
