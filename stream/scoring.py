"""The model side of the worker: batched GLINT-RU steps and top-K over a micro-batch of clicks.

Pure apart from the model's device: no Kafka, no RocksDB. A user with several clicks in one
batch needs several sequential steps, so the batch runs in *rounds*: round r applies every
user's r-th click of the batch, all users at once, then scores them. A batch of 256 clicks over
256 users is one ``step`` and one ``logits`` call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import MANIFEST, load_checkpoint
from model.glintru import GlintRU, StreamState
from model.registry import Registry, RegistryError
from stream.state import UserRecord

log = logging.getLogger(__name__)

FALLBACK_VERSION = 0  # model_version of a checkpoint served from outside the registry


class ModelNotFoundError(RuntimeError):
    """Neither the registry nor the fallback checkpoint directory holds a model."""


@dataclass(frozen=True, slots=True)
class UserState:
    """A user's state after the batch, ready to become a ``UserRecord``."""

    n: int
    ring: np.ndarray
    vec: np.ndarray


@dataclass(frozen=True, slots=True)
class TopK:
    items: list[int]  # item indices, best first
    scores: list[float]


class Scorer:
    """A loaded model on its device, with its vocabulary and version."""

    def __init__(
        self, model: GlintRU, vocab: list[str], version: int, top_k: int, mask_seen: bool
    ) -> None:
        if not isinstance(model, GlintRU):
            raise TypeError(f"the worker serves GLINT-RU checkpoints, got {type(model).__name__}")
        self.model = model.eval()
        self.vocab = vocab
        self.version = version
        self.k = min(top_k, model.num_items)
        self.mask_seen = mask_seen
        self.max_len = model.config.max_len
        self.state_dim = model.state_dim
        self.device = model.item_embedding.weight.device
        # The faithful model's vector is a function of the last L clicks, all in the ring: a
        # record without it loses nothing. The streaming variant's vector remembers more.
        self.ring_is_enough = model.config.variant == "faithful"
        self._index = {item: i for i, item in enumerate(vocab) if i > 0}

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

    def initial_states(self, records: list[UserRecord | None]) -> StreamState:
        """Stored states on the device; fresh for new users, rebuilt where the vector is stale."""
        state = self.model.init_state(len(records))
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

    def _rebuild(self, state: StreamState, records: list[UserRecord], slots: list[int]) -> None:
        """Replay each ring through ``step`` from a fresh state (model change or vector-less
        record). Exact for the faithful model; the streaming one forgets clicks before the ring."""
        rings = torch.from_numpy(np.stack([self._ring(r) for r in records]).astype(np.int64))
        rings = rings.to(self.device)
        n_true = torch.tensor([r.n for r in records], device=self.device)
        n_replay = n_true.clamp(max=self.max_len).clamp(min=0)
        n_replay = torch.minimum(n_replay, (rings > 0).sum(1))
        sub = self.model.init_state(len(records))
        start = self.max_len - n_replay
        for t in range(int(n_replay.max().item()) if len(records) else 0):
            active = (n_replay > t).nonzero().squeeze(1)
            items = rings[active, start[active] + t]
            new, _ = self.model.step(sub[active], items)
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
        rounds = max((len(cs) for cs in per_user), default=0)
        order: list[int] = []
        top_values, top_indices = [], []
        for r in range(rounds):
            slots = [u for u, cs in enumerate(per_user) if len(cs) > r]
            click_ids = [per_user[u][r] for u in slots]
            index = torch.tensor(slots, device=self.device)
            new, user_repr = self.model.step(state[index], item_of_click[click_ids])
            state.n[index], state.ring[index], state.vec[index] = new.n, new.ring, new.vec
            scores = self.model.logits(user_repr)  # column 0 (pad) is -inf
            if self.mask_seen:
                scores.scatter_(1, new.ring, float("-inf"))
            values, indices = scores.topk(self.k, dim=1)
            top_values.append(values)
            top_indices.append(indices)
            order.extend(click_ids)
        results: list[TopK | None] = [None] * len(clicks)
        if order:
            values = torch.cat(top_values).cpu().tolist()
            indices = torch.cat(top_indices).cpu().tolist()
            for c, v, i in zip(order, values, indices):
                results[c] = TopK(i, v)
        n = state.n.cpu().numpy()
        ring = state.ring.cpu().numpy().astype(np.int32)
        vec = state.vec.float().cpu().numpy()
        users = [UserState(int(n[u]), ring[u], vec[u]) for u in range(len(records))]
        return users, results  # type: ignore[return-value]


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
    ) -> None:
        self.registry = Registry(registry_dir)
        self.checkpoint_dir = checkpoint_dir
        self.device = device
        self.top_k = top_k
        self.mask_seen = mask_seen
        self._failed_version: int | None = None

    def _scorer(self, path: Path, version: int) -> Scorer:
        model, manifest = load_checkpoint(path, device=self.device)
        scorer = Scorer(model, manifest["vocab"], version, self.top_k, self.mask_seen)  # type: ignore[arg-type]
        log.info("serving model version %d from %s on %s", version, path, self.device)
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
        except (RegistryError, OSError, ValueError) as e:
            # Keep serving the old model; a broken version is not retried until CURRENT moves.
            log.error("cannot load model version %s, keeping %d: %s", version, current.version, e)
            self._failed_version = version
            return None
