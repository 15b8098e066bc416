"""The model side of the worker: batched GLINT-RU steps and top-K over a micro-batch of clicks.

Pure apart from the model's device: no Kafka, no RocksDB. A user with several clicks in one
batch needs several sequential steps. The streaming variant takes each user's clicks of the
batch as one causal chunk (``streaming_chunk``, all users at once), whatever their number; the
faithful one runs the batch in *rounds*: round r applies every user's r-th click of the batch,
all users at once, then scores them. A batch of 256 clicks over 256 users is one ``step`` and
one ``logits`` call either way.

Two scoring modes (``scoring_mode``): ``step`` (the default) advances GLINT-RU's recurrent state
by one O(1) step per click; ``recompute`` runs the model's full forward over the user's window
(the ring of the last L clicks, padded to L) for every click, as a model without a streaming
form must. ``recompute`` serves any checkpoint (SASRec too); it exists as the benchmark's
baseline (``glintstream bench stream``), and its records carry no vector.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from model.checkpoint import MANIFEST, load_checkpoint
from model.glintru import GlintRU, StreamState
from model.recommender import SequentialRecommender
from model.registry import Registry
from stream.state import UserRecord

log = logging.getLogger(__name__)

FALLBACK_VERSION = 0  # model_version of a checkpoint served from outside the registry
STEP, RECOMPUTE = "step", "recompute"
SCORING_MODES = (STEP, RECOMPUTE)


class ModelNotFoundError(RuntimeError):
    """Neither the registry nor the fallback checkpoint directory holds a model."""


@dataclass(frozen=True, slots=True)
class UserState:
    """A user's state after the batch, ready to become a ``UserRecord``."""

    n: int
    ring: np.ndarray
    vec: np.ndarray | None  # None in recompute mode: the model keeps no state vector


@dataclass(frozen=True, slots=True)
class TopK:
    items: list[int]  # item indices, best first
    scores: list[float]


class Scorer:
    """A loaded model on its device, with its vocabulary and version."""

    def __init__(
        self,
        model: SequentialRecommender,
        vocab: list[str],
        version: int,
        top_k: int,
        mask_seen: bool,
        mode: str = STEP,
    ) -> None:
        if mode not in SCORING_MODES:
            raise ValueError(f"unknown scoring mode {mode!r}; known: {', '.join(SCORING_MODES)}")
        if mode == STEP and not isinstance(model, GlintRU):
            raise TypeError(
                f"scoring mode {STEP!r} needs a GLINT-RU checkpoint, got {type(model).__name__} "
                f"(mode {RECOMPUTE!r} serves any model)"
            )
        self.model = model.eval()
        self.mode = mode
        self.vocab = vocab
        self.version = version
        self.k = min(top_k, model.num_items)
        self.mask_seen = mask_seen
        self.max_len: int = model.config.max_len  # type: ignore[assignment,union-attr]
        self.state_dim = model.state_dim if isinstance(model, GlintRU) else 0
        self.device = model.item_embeddings().device
        # The faithful model's vector is a function of the last L clicks, all in the ring: a
        # record without it loses nothing. The streaming variant's vector remembers more.
        # Recompute keeps no vector at all: its records are vector-less (a later step-mode
        # worker rebuilds them from the ring).
        self.ring_is_enough = mode == RECOMPUTE or (
            isinstance(model, GlintRU) and model.config.variant == "faithful"
        )
        self._index = {item: i for i, item in enumerate(vocab) if i > 0}
        # The streaming variant applies a user's clicks of a batch as one chunk (see _chunk).
        self.chunked = (
            mode == STEP and isinstance(model, GlintRU) and model.config.variant == "streaming"
        )

    @property
    def glint(self) -> GlintRU:
        """The model as GLINT-RU: what step mode serves (checked in ``__init__``)."""
        assert isinstance(self.model, GlintRU)
        return self.model

    def item_index(self, item_id: str) -> int | None:
        return self._index.get(item_id)

    def _ring(self, record: UserRecord) -> np.ndarray:
        """The stored ring fitted to this model's window (most recent last)."""
        ring = record.ring[-self.max_len :]
        if len(ring) < self.max_len:
            ring = np.concatenate([np.zeros(self.max_len - len(ring), np.int32), ring])
        return ring

    def _usable(self, record: UserRecord) -> bool:
        return (
            record.model_version == self.version
            and record.vec is not None
            and len(record.vec) == self.state_dim
            and len(record.ring) == self.max_len
        )

    def _init_state(self, batch_size: int) -> StreamState:
        if isinstance(self.model, GlintRU):
            return self.model.init_state(batch_size)
        ring = torch.zeros(batch_size, self.max_len, dtype=torch.long, device=self.device)
        n = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        return StreamState(n, ring, torch.zeros(batch_size, 0, device=self.device))

    def initial_states(self, records: list[UserRecord | None]) -> StreamState:
        """Stored states on the device; fresh for new users, rebuilt where the vector is stale."""
        if self.mode == RECOMPUTE:
            return self._ring_states(records)
        state = self.glint.init_state(len(records))
        usable = [i for i, r in enumerate(records) if r is not None and self._usable(r)]
        rebuild = [i for i, r in enumerate(records) if r is not None and not self._usable(r)]
        if usable:
            stored = [records[i] for i in usable]
            index = torch.tensor(usable, device=self.device)
            # one host->device copy per field, not one per user
            state.n[index] = torch.tensor([r.n for r in stored], device=self.device)  # type: ignore[union-attr]
            rings = np.stack([r.ring for r in stored]).astype(np.int64)  # type: ignore[union-attr]
            state.ring[index] = torch.from_numpy(rings).to(self.device)
            vecs = np.stack([r.vec for r in stored])  # type: ignore[union-attr]
            state.vec[index] = torch.from_numpy(vecs).to(self.device, state.vec.dtype)
        if rebuild:
            self._rebuild(state, [records[i] for i in rebuild], rebuild)  # type: ignore[misc]
        return state

    def _ring_states(self, records: list[UserRecord | None]) -> StreamState:
        """Click counts and rings only: all that the recompute needs (no vector)."""
        state = self._init_state(len(records))
        for i, record in enumerate(records):
            if record is not None:
                state.n[i] = record.n
                state.ring[i] = torch.from_numpy(self._ring(record).astype(np.int64))
        return state

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
        user = self.model.forward(window, lengths)
        return StreamState(n, ring, state.vec), user

    def _rebuild(self, state: StreamState, records: list[UserRecord], slots: list[int]) -> None:
        """Replay each ring through ``step`` from a fresh state (model change or vector-less
        record). Exact for the faithful model; the streaming one forgets clicks before the ring."""
        rings = torch.from_numpy(np.stack([self._ring(r) for r in records]).astype(np.int64))
        rings = rings.to(self.device)
        n_true = torch.tensor([r.n for r in records], device=self.device)
        n_replay = n_true.clamp(max=self.max_len).clamp(min=0)
        n_replay = torch.minimum(n_replay, (rings > 0).sum(1))
        sub = self.glint.init_state(len(records))
        start = self.max_len - n_replay
        for t in range(int(n_replay.max().item()) if len(records) else 0):
            active = (n_replay > t).nonzero().squeeze(1)
            items = rings[active, start[active] + t]
            new, _ = self.glint.step(sub[active], items)
            sub.n[active], sub.ring[active], sub.vec[active] = new.n, new.ring, new.vec
        index = torch.tensor(slots, device=self.device)
        state.n[index] = n_true  # the faithful step only asks "past the window?" of n
        state.ring[index] = sub.ring
        state.vec[index] = sub.vec

    @torch.inference_mode()
    def run(
        self, records: list[UserRecord | None], clicks: list[tuple[int, int]]
    ) -> tuple[list[UserState], list[TopK]]:
        """Apply ``clicks`` ((user slot, item index), in order) to the users' ``records``.

        Returns every user's new state (by slot) and the top-K after each click (by click).
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
        results: list[TopK | None] = [None] * len(clicks)
        if order:
            values = torch.cat(top_values).cpu().tolist()
            indices = torch.cat(top_indices).cpu().tolist()
            for c, v, i in zip(order, values, indices):
                results[c] = TopK(i, v)
        n = state.n.cpu().numpy()
        ring = state.ring.cpu().numpy().astype(np.int32)
        vec = state.vec.float().cpu().numpy()
        users = [
            UserState(int(n[u]), ring[u], vec[u] if self.mode == STEP else None)
            for u in range(len(records))
        ]
        return users, results  # type: ignore[return-value]

    def _top_k(self, user_repr: Tensor, rings: Tensor) -> tuple[Tensor, Tensor]:
        scores = self.model.logits(user_repr)  # column 0 (pad) is -inf
        if self.mask_seen:
            scores.scatter_(1, rings, float("-inf"))
        return scores.topk(self.k, dim=1)

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
            items = item_of_click[click_ids]
            if self.mode == RECOMPUTE:
                new, user_repr = self._recompute(state[index], items)
            else:
                new, user_repr = self.glint.step(state[index], items)
            state.n[index], state.ring[index], state.vec[index] = new.n, new.ring, new.vec
            values, indices = self._top_k(user_repr, new.ring)
            top_values.append(values)
            top_indices.append(indices)
            order.extend(click_ids)
        return order, top_values, top_indices

    def _chunk(
        self, state: StreamState, per_user: list[list[int]], item_of_click: Tensor
    ) -> tuple[list[int], list[Tensor], list[Tensor]]:
        """The streaming variant: each user's clicks of the batch as one causal chunk, all users
        in one ``streaming_chunk`` call, whatever the number of rounds. Replayed in time order,
        a batch holds few users with many clicks each (ML-1M: ~5 users per 256 clicks), so
        rounds would cost one step per ~2 clicks. The chunk equals the steps (the variant's
        property tests: chunks with the state carried = one pass = per-click steps)."""
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
        out, new = self.glint.streaming_chunk(seq, lengths, before)
        assert out is not None
        state.n[index], state.ring[index], state.vec[index] = new.n, new.ring, new.vec
        # the ring after click t of a user: its last L items of (ring before the batch, chunk)
        history = torch.cat([before.ring, seq], dim=1)
        window = (cols + 1).unsqueeze(1) + torch.arange(self.max_len, device=self.device)
        rings = history[rows.unsqueeze(1), window]
        values, indices = self._top_k(out[rows, cols], rings)
        return order, [values], [indices]


class ModelSource:
    """Finds the model to serve: the registry's current version, else the fallback checkpoint.

    ``poll`` is cheap (one small file read) and returns a new scorer when the registry moved,
    so the worker can swap models between batches.
    """

    def __init__(
        self,
        registry_dir: Path,
        checkpoint_dir: Path,
        device: str,
        top_k: int,
        mask_seen: bool,
        mode: str = STEP,
    ) -> None:
        self.registry = Registry(registry_dir)
        self.mode = mode
        self.checkpoint_dir = checkpoint_dir
        self.device = device
        self.top_k = top_k
        self.mask_seen = mask_seen
        self._failed_version: int | None = None

    def _scorer(self, path: Path, version: int) -> Scorer:
        model, manifest = load_checkpoint(path, device=self.device)
        scorer = Scorer(
            model,  # type: ignore[arg-type]
            manifest["vocab"],
            version,
            self.top_k,
            self.mask_seen,
            self.mode,
        )
        log.info(
            "serving model version %d from %s on %s (%s)", version, path, self.device, self.mode
        )
        return scorer

    def load(self) -> Scorer:
        info = self.registry.current()
        if info is not None:
            return self._scorer(info.path, info.version)
        if (self.checkpoint_dir / MANIFEST).is_file():
            return self._scorer(self.checkpoint_dir, FALLBACK_VERSION)
        raise ModelNotFoundError(
            f"no model to serve: the registry {self.registry.root} has no current version and "
            f"{self.checkpoint_dir} holds no checkpoint ({MANIFEST}). Train one "
            "(glintstream train ...) or publish one (glintstream model publish DIR)."
        )

    def poll(self, current: Scorer) -> Scorer | None:
        """A scorer for the registry's new current version, or None when nothing changed."""
        version = None
        try:
            version = self.registry.current_version()
            if version is None or version in (current.version, self._failed_version):
                return None
            return self._scorer(self.registry.get(version).path, version)
        except Exception as e:  # noqa: BLE001 - any load failure (shape mismatch included)
            # Keep serving the old model; a broken version is not retried until CURRENT moves.
            log.error("cannot load model version %s, keeping %d: %s", version, current.version, e)
            self._failed_version = version
            return None
