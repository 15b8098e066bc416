"""The contract every sequential recommender here follows (RecBole-like), and what serving needs.

Batches are right-padded with item index 0. ``calculate_loss`` takes either one
target per sequence (``targets`` of shape (B,), the RecBole contract: the loss of
the last position) or one target per position (``targets`` of shape (B, T), 0 =
no target): the second form trains every prefix of a sequence in one pass.

Serving one click at a time asks more of a model, and each says what it can do:

- ``steps``: ``step`` advances a user's ``StreamState`` by one click (O(1) for GLINT-RU);
- ``chunks``: ``streaming_chunk`` advances it by a whole sequence of clicks at once;
- ``state_from_ring``: the state is a function of the last ``max_len`` clicks (the ring), so
  it can be rebuilt from the ring exactly and a stored record need not carry the vector.

A model that cannot step is served by recomputing its forward over the ring per click.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Batch = dict[str, Tensor]


class RecommenderConfig(Protocol):
    @property
    def num_items(self) -> int: ...

    @property
    def max_len(self) -> int: ...


@dataclass
class StreamState:
    """Per-user serving state for a batch of users, on the model's device.

    ``ring`` holds the last ``max_len`` item indices, most recent last (0 before the first
    click): seen-item masking, the window recompute and rebuilds after a model change read it.
    ``vec`` is the model's recurrent state (``state_dim`` floats; none for a stateless model).
    """

    n: Tensor  # (B,) int64 clicks applied
    ring: Tensor  # (B, L) int64
    vec: Tensor  # (B, state_dim) float

    def __getitem__(self, index: Tensor | slice) -> StreamState:
        return StreamState(self.n[index], self.ring[index], self.vec[index])

    def __setitem__(self, index: Tensor, value: StreamState) -> None:
        self.n[index], self.ring[index], self.vec[index] = value.n, value.ring, value.vec


def gather_last(x: Tensor, lengths: Tensor) -> Tensor:
    """x: (B, T, d), lengths: (B,) >= 1 -> x[b, lengths[b] - 1]: (B, d)."""
    index = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, x.size(-1))
    return x.gather(1, index).squeeze(1)


def target_loss(logits: Tensor, targets: Tensor, divisor: float | None = None) -> Tensor:
    """Mean cross-entropy (each target weighs 1 / the step's targets), or with a ``divisor``
    the sum over it: a fixed divisor weighs every target of an epoch the same."""
    if divisor is None:
        return F.cross_entropy(logits, targets)
    return F.cross_entropy(logits, targets, reduction="sum") / divisor


class SequentialRecommender(nn.Module, ABC):
    """Item index 0 is padding; scores have one column per index, column 0 = -inf."""

    num_items: int  # real items; the vocabulary has num_items + 1 rows (pad first)
    config: RecommenderConfig
    steps: ClassVar[bool] = False
    chunks: ClassVar[bool] = False
    state_from_ring: ClassVar[bool] = True

    @abstractmethod
    def forward(self, item_seq: Tensor, item_seq_len: Tensor) -> Tensor:
        """User representation at the last real position: (B, d)."""

    @abstractmethod
    def all_positions(self, item_seq: Tensor, item_seq_len: Tensor) -> Tensor:
        """Representation of every prefix seq[:t+1], t < T: (B, T, d)."""

    @abstractmethod
    def item_embeddings(self) -> Tensor:
        """Output embedding table (num_items + 1, d); row 0 is the pad."""

    @property
    def max_len(self) -> int:
        """The window L: how many of a user's last clicks the model reads (and serving keeps)."""
        return self.config.max_len

    @property
    def state_dim(self) -> int:
        """Floats of recurrent state per user (0: the model keeps none)."""
        return 0

    def logits(self, user: Tensor) -> Tensor:
        scores = user @ self.item_embeddings().t()
        scores[..., 0] = float("-inf")
        return scores

    def calculate_loss(self, batch: Batch, divisor: float | None = None) -> Tensor:
        """Cross-entropy over the batch's targets: their mean, or their sum over ``divisor``."""
        seq, lengths, targets = batch["item_seq"], batch["item_seq_len"], batch["targets"]
        if targets.dim() == 1:
            return target_loss(self.logits(self.forward(seq, lengths)), targets, divisor)
        hidden = self.all_positions(seq, lengths)
        keep = targets > 0
        return target_loss(self.logits(hidden[keep]), targets[keep], divisor)

    @torch.no_grad()
    def full_sort_predict(self, item_seq: Tensor, item_seq_len: Tensor) -> Tensor:
        return self.logits(self.forward(item_seq, item_seq_len))

    # ------------------------------------------------------------------ serving
    def init_state(self, batch_size: int) -> StreamState:
        """Fresh users: no clicks, an empty ring, a zero state."""
        weights = self.item_embeddings()
        device, dtype = weights.device, weights.dtype
        return StreamState(
            torch.zeros(batch_size, dtype=torch.long, device=device),
            torch.zeros(batch_size, self.max_len, dtype=torch.long, device=device),
            torch.zeros(batch_size, self.state_dim, dtype=dtype, device=device),
        )

    def step(self, state: StreamState, item_ids: Tensor) -> tuple[StreamState, Tensor]:
        """One click per user: (new state, user representation (B, d)). Needs ``steps``."""
        raise NotImplementedError(f"{type(self).__name__} cannot step; recompute its forward")

    def streaming_chunk(
        self, item_seq: Tensor, item_seq_len: Tensor, state: StreamState, with_outputs: bool = True
    ) -> tuple[Tensor | None, StreamState]:
        """A right-padded chunk of clicks per user from ``state``: (outputs (B, T, d) or None,
        the state after each user's last click). Needs ``chunks``."""
        raise NotImplementedError(f"{type(self).__name__} has no streaming chunks")
