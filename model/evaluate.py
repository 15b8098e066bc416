"""Offline evaluation: full ranking (seen items masked, only the last L masked, or none masked)
and RecBole's pop100, and the score functions that turn histories into scores (``score_fn``: the model's forward over its
window, or, for a model that ``chunks``, its state after each whole history).

Ranks are 0-based and pessimistic: rank = number of other candidates scoring >= the target,
so ties never help and a constant scorer gets no credit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from model.data import sequences_to_batch
from model.recommender import SequentialRecommender

KS = (5, 10, 20)
NUM_NEGATIVES = 100
# full ranking with the user's whole history masked (ours until now); with only the last L
# items masked (LRURec's and HSTU's protocol, and what the worker serves: its ring holds L);
# unmasked (RecBole's); 100 popularity-sampled negatives (the paper's)
PROTOCOLS = ("full_masked", "last_l_masked", "full", "pop100")
ScoreFn = Callable[[list[np.ndarray]], Tensor]


def metrics_from_ranks(ranks: np.ndarray) -> dict[str, float]:
    """HR@k, NDCG@k (k in 5, 10, 20) and MRR@10 from 0-based target ranks (one per user)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no ranks to average")
    out: dict[str, float] = {}
    for k in KS:
        hit = ranks < k
        out[f"HR@{k}"] = float(hit.mean())
        # one relevant item, so IDCG = 1
        out[f"NDCG@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
    out["MRR@10"] = float(np.where(ranks < 10, 1.0 / (ranks + 1.0), 0.0).mean())
    return out


def mask_seen(scores: Tensor, histories: list[np.ndarray], targets: Tensor) -> Tensor:
    """Copy of scores with each user's history set to -inf, except the target itself."""
    scores = scores.clone()
    rows = [np.full(len(h), b) for b, h in enumerate(histories)]
    if rows:
        r = torch.from_numpy(np.concatenate(rows).astype(np.int64))
        c = torch.from_numpy(np.concatenate(histories).astype(np.int64))
        kept = scores.gather(1, targets.view(-1, 1))
        scores[r, c] = float("-inf")
        scores.scatter_(1, targets.view(-1, 1), kept)  # a repeated item is still a valid target
    return scores


def full_ranks(scores: Tensor, targets: Tensor) -> Tensor:
    """0-based pessimistic rank of each target among items 1..V-1 (column 0 is the pad)."""
    items = scores[:, 1:]
    target_scores = scores.gather(1, targets.view(-1, 1))
    # int32 sum: summing bools into int64 is twice as slow; minus 1 for the target itself
    return (items >= target_scores).sum(dim=1, dtype=torch.int32).long() - 1


def sample_negatives(
    targets: np.ndarray, item_counts: np.ndarray, rng: np.random.Generator, n: int = NUM_NEGATIVES
) -> np.ndarray:
    """(B, n) negatives drawn with replacement proportional to popularity, never the target.

    Like RecBole's RepeatableSampler (pop, alpha 1): only the target is excluded, the user's
    history is not. Collisions are redrawn, which equals sampling from the renormalised rest.
    """
    p = np.asarray(item_counts, dtype=np.float64).copy()
    p[0] = 0.0
    if p.sum() <= 0:
        p[1:] = 1.0  # no popularity at all: uniform
    cdf = np.cumsum(p) / p.sum()

    def draw(size: int | tuple[int, int]) -> np.ndarray:
        # inverse CDF; the clip guards against rounding at the top of the cdf
        return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(p) - 1)

    neg = draw((len(targets), n))
    targets = np.asarray(targets).reshape(-1, 1)
    for _ in range(1000):
        clash = neg == targets
        if not clash.any():
            return neg
        neg[clash] = draw(int(clash.sum()))
    raise ValueError("cannot sample negatives: the target holds all the popularity mass")


def sampled_ranks(scores: Tensor, targets: Tensor, negatives: Tensor) -> Tensor:
    """Pessimistic 0-based rank of the target among itself + its negatives (gathered scores)."""
    target_scores = scores.gather(1, targets.view(-1, 1))
    return (scores.gather(1, negatives) >= target_scores).sum(dim=1, dtype=torch.int32).long()


def finite_scores(scores: Tensor) -> Tensor:
    """Scores as float on the CPU; NaN compares false, so it would rank first: make it the worst
    score instead."""
    scores = scores.detach().float().cpu()
    return torch.nan_to_num(scores, nan=-math.inf, posinf=math.inf, neginf=-math.inf)


@torch.no_grad()
def masked_ranks(
    score: ScoreFn, histories: list[np.ndarray], targets: Tensor, batch_size: int = 512
) -> Tensor:
    """Full-ranking ranks with each user's history masked (what the worker serves)."""
    ranks = []
    for start in range(0, len(histories), batch_size):
        chunk, tgt = histories[start : start + batch_size], targets[start : start + batch_size]
        scores = finite_scores(score(chunk))
        ranks.append(full_ranks(mask_seen(scores, chunk, tgt), tgt))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


@torch.no_grad()
def evaluate(
    score_fn: ScoreFn,
    inputs: list[np.ndarray],
    targets: np.ndarray,
    item_counts: np.ndarray,
    *,
    mask_last: int,
    batch_size: int = 512,
    seed: int = 0,
) -> dict:
    """Score every user once and report every protocol from the same score rows;
    ``mask_last`` is the L of ``last_l_masked``."""
    targets = np.asarray(targets, dtype=np.int64)
    if len(inputs) != len(targets):
        raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
    # draw all negatives up front so the result does not depend on batch_size
    negatives = sample_negatives(targets, item_counts, np.random.default_rng(seed))
    ranks: dict[str, list[Tensor]] = {protocol: [] for protocol in PROTOCOLS}
    for start in range(0, len(inputs), batch_size):
        end = min(start + batch_size, len(inputs))
        histories = inputs[start:end]
        tgt = torch.from_numpy(targets[start:end])
        scores = finite_scores(score_fn(histories))
        ranks["full"].append(full_ranks(scores, tgt))
        ranks["full_masked"].append(full_ranks(mask_seen(scores, histories, tgt), tgt))
        recent = [h[-mask_last:] for h in histories]
        ranks["last_l_masked"].append(full_ranks(mask_seen(scores, recent, tgt), tgt))
        ranks["pop100"].append(sampled_ranks(scores, tgt, torch.from_numpy(negatives[start:end])))
    out: dict = {k: metrics_from_ranks(torch.cat(v).numpy()) for k, v in ranks.items()}
    out["users"] = len(inputs)
    return out


def score_fn(model: SequentialRecommender, device: str | torch.device | None = None) -> ScoreFn:
    """Histories -> scores (call in eval mode). A model that ``chunks`` reads each whole history;
    the others keep their last ``max_len`` clicks, right-padded, as in training."""
    device = model.item_embeddings().device if device is None else device

    @torch.no_grad()
    def score(histories: list[np.ndarray]) -> Tensor:
        return model.logits(represent(model, histories, device))

    return score


@torch.no_grad()
def represent(
    model: SequentialRecommender, histories: list[np.ndarray], device: str | torch.device
) -> Tensor:
    """User representations after each history (what ``logits`` scores items with): a model
    that ``chunks`` reads each whole history, the others their last ``max_len`` clicks."""
    if model.chunks:
        return encode_histories(model, histories, device)
    item_seq, lengths = sequences_to_batch(histories, model.max_len)
    return model(item_seq.to(device), lengths.to(device))


@torch.no_grad()
def encode_histories(
    model: SequentialRecommender, histories: list[np.ndarray], device: str | torch.device = "cpu"
) -> Tensor:
    """User representations after whole histories, for a model that ``chunks``: replay all but
    the last click in chunks of L (state only), then one exact ``step`` for the last click."""
    L = model.max_len
    seq, lengths = sequences_to_batch([h[:-1] for h in histories], max_len=10**9)
    seq, lengths = seq.to(device), lengths.to(device)
    state = model.init_state(len(histories))
    for start in range(0, seq.size(1), L):
        rows = (lengths > start).nonzero().squeeze(1)  # users with clicks left: no padding work
        n = (lengths[rows] - start).clamp(max=L)
        _, state[rows] = model.streaming_chunk(
            seq[rows, start : start + L], n, state[rows], with_outputs=False
        )
    last = torch.tensor([int(h[-1]) for h in histories], device=device)
    return model.step(state, last)[1]


def evaluate_model(
    model: SequentialRecommender,
    inputs: list[np.ndarray],
    targets: np.ndarray,
    item_counts: np.ndarray,
    *,
    batch_size: int = 512,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict:
    """``evaluate`` for a model in eval mode (restores its training flag afterwards); the last
    ``max_len`` items are masked in ``last_l_masked``, as the worker's ring does."""
    was_training = model.training
    model.eval()
    try:
        fn = score_fn(model, device)
        return evaluate(
            fn,
            inputs,
            targets,
            item_counts,
            mask_last=model.max_len,
            batch_size=batch_size,
            seed=seed,
        )
    finally:
        model.train(was_training)
