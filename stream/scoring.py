"""The model side of the worker: a micro-batch of clicks in, users' new states and top-K out.

Pure apart from the model's device: no Kafka, no RocksDB. It asks the model what it can do
(``model.recommender``): a model that ``chunks`` takes each user's clicks of the batch as one
causal chunk, all users in one ``streaming_chunk`` call, whatever their number; a model that
only ``steps`` runs the batch in *rounds* (round r applies every user's r-th click of the batch,
all users at once, then scores them). In ``recompute`` mode (``ScoringMode``) any model is
served by its full forward over the user's ring per click: the benchmark's baseline.

A stored state is used as it is only when it was computed by this model version; otherwise
(a model change, or a record without its vector) the user is rebuilt from the ring: exactly,
for a model whose state is a function of the ring. Rings hold external item ids, mapped to this
model's indices here; items this model does not know leave the ring (and are counted).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from model.new_items import fresh_items
from model.recommender import StreamState
from stream import metrics
from stream.messages import ScoringMode
from stream.model_source import LoadedModel
from stream.user_record import UserRecord


@dataclass(frozen=True, slots=True)
class TopK:
    items: list[int]  # item indices, best first
    scores: list[float]


# The fresh slot's draws (``fresh_draw``): multiplicative hashes of the user's last two clicks,
# mod a prime. Pure, so a replay of the same clicks gets the same lists and items.
_LIST_MULTIPLIERS = (2654435761, 40503)
_ITEM_MULTIPLIERS = (40503, 2654435761)
_DRAW_MODULUS = 10007


def _hash(rings: Tensor, multipliers: tuple[int, int]) -> Tensor:
    before = rings[:, -2] if rings.size(1) > 1 else torch.zeros_like(rings[:, -1])
    return (rings[:, -1] * multipliers[0] + before * multipliers[1]) % _DRAW_MODULUS


def fresh_draw(rings: Tensor, share: float, fresh: int) -> tuple[Tensor, Tensor]:
    """(drawn, pick): which lists offer their last place to a fresh item, a ``share`` of them,
    and which of the ``fresh`` items each offers, drawn from each user's last two clicks
    (``rings``: item indices, most recent last). A user's lists take turns as their clicks
    change; every fresh item is offered about as often, so none waits on its score to be shown,
    and the cost to the lists is bounded by the share."""
    drawn = _hash(rings, _LIST_MULTIPLIERS) < share * _DRAW_MODULUS  # all of them at share 1
    return drawn, _hash(rings, _ITEM_MULTIPLIERS) % max(fresh, 1)


class Scorer:
    """A loaded model on its device, with its vocabulary and version."""

    def __init__(
        self,
        loaded: LoadedModel,
        top_k: int,
        mask_seen: bool,
        mode: ScoringMode,
        fresh_share: float = 0.0,
    ) -> None:
        model = loaded.model
        if mode is ScoringMode.STEP and not model.steps:
            raise TypeError(
                f"scoring mode {mode} needs a model that steps (GLINT-RU), got "
                f"{type(model).__name__} (mode {ScoringMode.RECOMPUTE} serves any model)"
            )
        self.model = model.eval()
        self.mode = mode
        self.vocab = loaded.vocab
        self.version = loaded.served.version
        self.k = min(top_k, model.num_items)
        self.mask_seen = mask_seen
        self.max_len = model.max_len
        self.device = model.item_embeddings().device
        # A record needs its vector only when the model's state is more than its ring;
        # recompute keeps no vector at all (a later step-mode worker rebuilds from the ring).
        self.records_need_vec = mode is ScoringMode.STEP and not model.state_from_ring
        self.chunked = mode is ScoringMode.STEP and model.chunks
        self._index = {item: i for i, item in enumerate(self.vocab) if i > 0}
        fresh = [self._index[i] for i in fresh_items(loaded.manifest) if i in self._index]
        self.fresh = torch.tensor(fresh, dtype=torch.long, device=self.device)
        self.fresh_share = fresh_share if self.k > 0 else 0.0

    def item_index(self, item_id: str) -> int | None:
        return self._index.get(item_id)

    # ------------------------------------------------------------------ stored states in
    def _ring(self, record: UserRecord) -> np.ndarray:
        """The stored ring as this model's item indices, fitted to its window (most recent
        last, 0 = empty). Items it does not know leave the ring."""
        if record.legacy_ring is not None:  # indices, meaningful in their own version only
            same = record.model_version == self.version
            indices = record.legacy_ring.tolist() if same else []
            dropped = 0 if same else len(record.legacy_ring)
        else:
            known = [self._index.get(item) for item in record.ring[-self.max_len :]]
            indices = [i for i in known if i is not None]
            dropped = len(known) - len(indices)
        if dropped:
            metrics.RING_ITEMS_DROPPED.inc(dropped)
        indices = indices[-self.max_len :]
        ring = np.zeros(self.max_len, np.int64)
        ring[self.max_len - len(indices) :] = indices
        return ring

    def _usable(self, record: UserRecord) -> bool:
        return (
            record.model_version == self.version
            and record.vec is not None
            and len(record.vec) == self.model.state_dim
        )

    def initial_states(self, records: list[UserRecord | None]) -> StreamState:
        """Stored states on the device; fresh for new users, rebuilt where the vector is stale."""
        state = self.model.init_state(len(records))
        stored = [(i, r) for i, r in enumerate(records) if r is not None]
        if self.mode is ScoringMode.RECOMPUTE:
            usable, rebuild = stored, []  # the recompute reads the ring only
        else:
            usable = [(i, r) for i, r in stored if self._usable(r)]
            rebuild = [(i, r) for i, r in stored if not self._usable(r)]
        if usable:
            # one host->device copy per field, not one per user
            index = torch.tensor([i for i, _ in usable], device=self.device)
            state.n[index] = torch.tensor([r.n for _, r in usable], device=self.device)
            rings = np.stack([self._ring(r) for _, r in usable])
            state.ring[index] = torch.from_numpy(rings).to(self.device)
            if self.mode is ScoringMode.STEP:
                vecs = np.stack([r.vec for _, r in usable if r.vec is not None])
                state.vec[index] = torch.from_numpy(vecs).to(self.device, state.vec.dtype)
        if rebuild:
            self._rebuild(state, rebuild)
        return state

    def _rebuild(self, state: StreamState, stored: list[tuple[int, UserRecord]]) -> None:
        """Replay each ring through ``step`` from a fresh state (model change or vector-less
        record). Exact for a model whose state is a function of the ring; the streaming
        GLINT-RU forgets clicks before the ring."""
        records = [r for _, r in stored]
        rings = torch.from_numpy(np.stack([self._ring(r) for r in records]))
        rings = rings.to(self.device)
        n_true = torch.tensor([r.n for r in records], device=self.device)
        n_replay = torch.minimum(n_true.clamp(0, self.max_len), (rings > 0).sum(1))
        sub = self.model.init_state(len(records))
        start = self.max_len - n_replay
        for t in range(int(n_replay.max().item())):
            active = (n_replay > t).nonzero().squeeze(1)
            sub[active], _ = self.model.step(sub[active], rings[active, start[active] + t])
        index = torch.tensor([i for i, _ in stored], device=self.device)
        state[index] = StreamState(n_true, sub.ring, sub.vec)  # a step only asks n "past L?"

    # ------------------------------------------------------------------ the batch
    @torch.inference_mode()
    def run(
        self, records: list[UserRecord | None], clicks: list[tuple[int, int]]
    ) -> tuple[StreamState, list[TopK]]:
        """Apply ``clicks`` ((user slot, item index), in order) to the users' ``records``.

        Returns every user's new state (by slot, on the CPU) and the top-K after each click.
        """
        state = self.initial_states(records)
        per_user: list[list[int]] = [[] for _ in records]
        for c, (slot, _) in enumerate(clicks):
            per_user[slot].append(c)
        item_of_click = torch.tensor([item for _, item in clicks], device=self.device)
        if self.chunked and clicks:
            order, top_values, top_indices = self._chunk(state, per_user, item_of_click)
        else:
            order, top_values, top_indices = self._rounds(state, per_user, item_of_click)
        results: list[TopK] = [TopK([], [])] * len(clicks)
        if order:
            values = torch.cat(top_values).cpu().tolist()
            indices = torch.cat(top_indices).cpu().tolist()
            for c, v, i in zip(order, values, indices):
                results[c] = TopK(i, v)
        cpu = StreamState(state.n.cpu(), state.ring.cpu(), state.vec.float().cpu())
        return cpu, results

    def _top_k(self, user_repr: Tensor, rings: Tensor) -> tuple[Tensor, Tensor]:
        scores = self.model.logits(user_repr)  # column 0 (pad) is -inf
        if self.mask_seen:
            scores.scatter_(1, rings, float("-inf"))
        if not len(self.fresh):
            values, indices = scores.topk(self.k, dim=1)
            return values, indices
        # fresh items are not ranked with the others (model.new_items): on a drawn share of
        # lists a drawn one takes the last place, and the list is put back in score order
        fresh = scores[:, self.fresh]
        scores[:, self.fresh] = float("-inf")
        values, indices = scores.topk(self.k, dim=1)
        if self.fresh_share > 0:
            drawn, pick = fresh_draw(rings, self.fresh_share, len(self.fresh))
            offered = fresh.gather(1, pick.unsqueeze(1)).squeeze(1)
            take = drawn & torch.isfinite(offered)  # not one the user has clicked
            values[take, -1], indices[take, -1] = offered[take], self.fresh[pick][take]
            values, order = values.sort(dim=1, descending=True, stable=True)
            indices = indices.gather(1, order)
        return values, indices

    def _advance(self, state: StreamState, items: Tensor) -> tuple[StreamState, Tensor]:
        if self.mode is ScoringMode.STEP:
            return self.model.step(state, items)
        return self._recompute(state, items)

    def _recompute(self, state: StreamState, items: Tensor) -> tuple[StreamState, Tensor]:
        """Push the click into the ring, then the full forward over the window of L slots: the
        last min(n, L) clicks, left-aligned and right-padded to L (every model's forward reads
        the window this way; the faithful GLINT-RU's output is exactly its step's)."""
        L = self.max_len
        n = state.n + 1
        ring = torch.cat([state.ring[:, 1:], items.unsqueeze(1)], dim=1)
        lengths = n.clamp(max=L)
        # window[b, j] = ring[b, L - lengths[b] + j] for j < lengths[b], else the pad (0)
        slots = torch.arange(L, device=self.device).unsqueeze(0)
        source = (L - lengths.unsqueeze(1) + slots).clamp(max=L - 1)
        window = torch.where(slots < lengths.unsqueeze(1), ring.gather(1, source), 0)
        return StreamState(n, ring, state.vec), self.model.forward(window, lengths)

    def _rounds(
        self, state: StreamState, per_user: list[list[int]], item_of_click: Tensor
    ) -> tuple[list[int], list[Tensor], list[Tensor]]:
        """Round r = every user's r-th click of the batch: one step + one scoring per round."""
        rounds = max((len(cs) for cs in per_user), default=0)
        order: list[int] = []
        top_values, top_indices = [], []
        for r in range(rounds):
            slots = [u for u, cs in enumerate(per_user) if len(cs) > r]
            click_ids = [per_user[u][r] for u in slots]
            index = torch.tensor(slots, device=self.device)
            new, user_repr = self._advance(state[index], item_of_click[click_ids])
            state[index] = new
            values, indices = self._top_k(user_repr, new.ring)
            top_values.append(values)
            top_indices.append(indices)
            order.extend(click_ids)
        return order, top_values, top_indices

    def _chunk(
        self, state: StreamState, per_user: list[list[int]], item_of_click: Tensor
    ) -> tuple[list[int], list[Tensor], list[Tensor]]:
        """Each user's clicks of the batch as one causal chunk, all users in one
        ``streaming_chunk`` call, whatever the number of rounds: replayed in time order, a batch
        holds few users with many clicks each, where rounds would cost a step per ~2 clicks.
        The chunk equals the steps (the model's property tests)."""
        slots = [u for u, cs in enumerate(per_user) if cs]
        lengths = torch.tensor([len(per_user[u]) for u in slots], device=self.device)
        T = int(lengths.max())
        seq = torch.zeros(len(slots), T, dtype=torch.long, device=self.device)
        rows = torch.repeat_interleave(torch.arange(len(slots), device=self.device), lengths)
        cols = torch.cat([torch.arange(n, device=self.device) for n in lengths.tolist()])
        order = [c for u in slots for c in per_user[u]]
        seq[rows, cols] = item_of_click[order]
        index = torch.tensor(slots, device=self.device)
        before = state[index]
        out, state[index] = self.model.streaming_chunk(seq, lengths, before)
        assert out is not None
        # the ring after click t of a user: its last L items of (ring before the batch, chunk)
        history = torch.cat([before.ring, seq], dim=1)
        window = (cols + 1).unsqueeze(1) + torch.arange(self.max_len, device=self.device)
        rings = history[rows.unsqueeze(1), window]
        values, indices = self._top_k(out[rows, cols], rings)
        return order, [values], [indices]
