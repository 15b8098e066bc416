"""The contract every sequential recommender here follows (RecBole-like).

Batches are right-padded with item index 0. ``calculate_loss`` takes either one
target per sequence (``targets`` of shape (B,), the RecBole contract: the loss of
the last position) or one target per position (``targets`` of shape (B, T), 0 =
no target): the second form trains every prefix of a sequence in one pass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Batch = dict[str, Tensor]


def gather_last(x: Tensor, lengths: Tensor) -> Tensor:
    """x: (B, T, d), lengths: (B,) >= 1 -> x[b, lengths[b] - 1]: (B, d)."""
    index = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, x.size(-1))
    return x.gather(1, index).squeeze(1)


class SequentialRecommender(nn.Module, ABC):
    """Item index 0 is padding; scores have one column per index, column 0 = -inf."""

    num_items: int  # real items; the vocabulary has num_items + 1 rows (pad first)

    @abstractmethod
    def forward(self, item_seq: Tensor, item_seq_len: Tensor) -> Tensor:
        """User representation at the last real position: (B, d)."""

    @abstractmethod
    def all_positions(self, item_seq: Tensor, item_seq_len: Tensor) -> Tensor:
        """Representation of every prefix seq[:t+1], t < T: (B, T, d)."""

    @abstractmethod
    def item_embeddings(self) -> Tensor:
        """Output embedding table (num_items + 1, d); row 0 is the pad."""

    def logits(self, user: Tensor) -> Tensor:
        scores = user @ self.item_embeddings().t()
        scores[..., 0] = float("-inf")
        return scores

    def calculate_loss(self, batch: Batch) -> Tensor:
        seq, lengths, targets = batch["item_seq"], batch["item_seq_len"], batch["targets"]
        if targets.dim() == 1:
            return F.cross_entropy(self.logits(self.forward(seq, lengths)), targets)
        hidden = self.all_positions(seq, lengths)
        keep = targets > 0
        return F.cross_entropy(self.logits(hidden[keep]), targets[keep])

    @torch.no_grad()
    def full_sort_predict(self, item_seq: Tensor, item_seq_len: Tensor) -> Tensor:
        return self.logits(self.forward(item_seq, item_seq_len))
