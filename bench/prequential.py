"""Online (prequential) accuracy of the served recommendations against the offline evaluation.

For each user's held-out last click (temporal leave-one-out, as ``glintstream evaluate``), the
online side reads the recommendation the worker published for the click just before it; the
offline side scores the same history with the same checkpoint. The worker masks the items of
its ring (the user's last L clicks), not the whole history, so the offline side masks the same
L items; with the same history and the same masking both sides must agree (the step is exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.data import SequenceData, leave_one_out
from model.evaluate import full_ranks, metrics_from_ranks, score_fn
from model.recommender import SequentialRecommender

METRICS = ("HR@10", "NDCG@10")
MISS = 10**9  # rank of a target that is not in the top-K list
OFFLINE_BATCH = 256


@dataclass(frozen=True)
class Heldout:
    """Users with a held-out click, their history (external item ids) and the target."""

    users: np.ndarray  # indices into data.users
    histories: list[list[str]]  # every click before the target
    targets: list[str]

    @staticmethod
    def of(data: SequenceData, users: np.ndarray) -> Heldout:
        split = leave_one_out(data)  # the users it evaluates (>= 3 clicks), in user order
        chosen = np.intersect1d(split.test_users, users)
        vocab = np.asarray(data.vocab, dtype=object)
        histories = [vocab[data.sequences[u][:-1]].tolist() for u in chosen]
        targets = [data.vocab[data.sequences[u][-1]] for u in chosen]
        return Heldout(chosen, histories, targets)


def online_metrics(top_items: list[list[str]], targets: list[str]) -> dict[str, float]:
    """HR@10 / NDCG@10 of published top-K lists (best first) against the targets."""
    ranks = [items.index(t) if t in items else MISS for items, t in zip(top_items, targets)]
    figures = metrics_from_ranks(np.asarray(ranks))
    return {m: figures[m] for m in METRICS}


@torch.no_grad()
def offline_metrics(
    model: SequentialRecommender, vocab: list[str], heldout: Heldout
) -> dict[str, float]:
    """The same figures from the offline model: ``score_fn`` as in ``glintstream evaluate`` (the
    window for the faithful model, the whole history for the streaming one), the last L history
    items masked as the worker masks its ring. Items the checkpoint does not know are dropped
    from the histories, as the worker dead-letters them."""
    index = {item: i for i, item in enumerate(vocab) if i > 0}
    score = score_fn(model.eval())
    ranks = []
    for start in range(0, len(heldout.targets), OFFLINE_BATCH):
        histories = [
            np.array([index[i] for i in h if i in index], dtype=np.int64)
            for h in heldout.histories[start : start + OFFLINE_BATCH]
        ]
        targets = torch.tensor(
            [index.get(t, 0) for t in heldout.targets[start : start + OFFLINE_BATCH]]
        )
        scores = score(histories).float().cpu()
        for row, history in enumerate(histories):
            scores[row, torch.from_numpy(history[-model.max_len :])] = float("-inf")
        ranks.append(full_ranks(scores, targets))
    figures = metrics_from_ranks(torch.cat(ranks).numpy())
    return {m: figures[m] for m in METRICS}
