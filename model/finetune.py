"""Fine-tuning a served model on recent clicks: the pure part (no Kafka, no RocksDB, no files).

The fine-tune job (``stream.finetune``) calls these in order on every run:

1. ``grow_vocabulary``: items seen in the stream but unknown to the model are appended to the
   vocabulary. Existing indices never move, so per-user rings of item indices stored by the
   workers stay valid under the new model; the new embedding rows start at the mean of the
   known items (plus a little noise, so they are not identical) and are trained by step 3.
2. ``split_holdout``: each of the most recent users' last click is held out as a target.
3. ``finetune``: a bounded number of Adam steps on a copy of the model (every prefix in one
   pass, or chunks with the state carried for the streaming variant, as in ``model.train``).
4. ``holdout_metrics`` of the new and the current model, and ``gate``: publish only if the new
   model's NDCG@10 is not worse than the current one's (minus a tolerance).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from model.evaluate import masked_ranks, metrics_from_ranks, represent, score_fn
from model.glintru import GlintRU, build_glintru
from model.steps import LossStep, loss_steps
from model.weighting import TargetWeighting

K = 10  # the cut-off of the gate's figures: HR@10 and NDCG@10
GATE_METRIC = f"NDCG@{K}"
NEW_ITEM_NOISE = 0.1  # std of a new embedding row's noise, as a fraction of the rows' std
EVAL_BATCH_SIZE = 256  # holdout users scored per forward pass
MISS_RANK = 2**31 - 1  # the rank of a target a model cannot score: beyond any cut-off


# ----------------------------------------------------------------------------- new items
def new_items_in(vocab: list[str], sequences: Iterable[list[str]], min_clicks: int) -> list[str]:
    """External ids missing from ``vocab`` with at least ``min_clicks`` clicks, in order of first
    appearance (deterministic, so two runs on the same data grow the table the same way)."""
    known = set(vocab)
    counts: dict[str, int] = {}
    for seq in sequences:
        for item in seq:
            if item not in known:
                counts[item] = counts.get(item, 0) + 1
    return [item for item, n in counts.items() if n >= min_clicks]


def grow_vocabulary(
    model: GlintRU,
    vocab: list[str],
    new_items: list[str],
    seed: int = 0,
    contexts: dict[str, Tensor] | None = None,
) -> tuple[GlintRU, list[str]]:
    """A copy of ``model`` (whose vocabulary is ``vocab``) whose vocabulary ends with
    ``new_items`` (those it does not know yet).

    Returns (model, vocab). Rows 0..num_items keep their index and weights. A new item with a
    context (``item_contexts``) starts there: it scores high for users like those who clicked
    it, so it can be recommended before training has learned it. The others start at the mean
    of the real items' rows plus noise of ``NEW_ITEM_NOISE`` times their std per dimension.
    """
    if not isinstance(model, GlintRU):
        raise TypeError(f"only GLINT-RU models can grow their vocabulary, not {type(model)}")
    vocab = list(vocab)
    if len(vocab) != model.num_items + 1:
        raise ValueError(f"vocab has {len(vocab)} entries, the model {model.num_items + 1}")
    known = set(vocab)
    added = [item for item in dict.fromkeys(new_items) if item not in known]
    if not added:
        return copy.deepcopy(model), vocab
    grown = build_glintru(replace(model.config, num_items=model.num_items + len(added)))
    grown.to(model.item_embedding.weight.device)
    state = model.state_dict()
    old_table = state.pop("item_embedding.weight")
    grown.load_state_dict(state, strict=False)  # only the table differs
    with torch.no_grad():
        real = old_table[1:]
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(len(added), real.size(1), generator=generator)
        rows = real.mean(0) + NEW_ITEM_NOISE * real.std(0) * noise.to(real.device)
        for n, item in enumerate(added):
            if contexts and item in contexts:
                rows[n] = contexts[item].to(rows)
        grown.item_embedding.weight.copy_(torch.cat([old_table, rows.to(old_table.dtype)]))
    return grown.train(model.training), vocab + added


def graft_new_items(
    served: GlintRU, served_vocab: list[str], candidate: GlintRU, candidate_vocab: list[str]
) -> tuple[GlintRU, list[str]]:
    """``served``'s weights with ``candidate``'s embedding rows for the items ``served_vocab``
    lacks (``candidate_vocab`` extends it): the new items of a candidate whose other weights
    were rejected. Returns (model, vocab), the vocab equal to ``candidate_vocab``."""
    if candidate_vocab[: len(served_vocab)] != served_vocab:
        raise ValueError("the candidate's vocabulary does not extend the served one")
    rows = candidate.item_embedding.weight.detach()
    added = candidate_vocab[len(served_vocab) :]
    own = {item: rows[len(served_vocab) + n] for n, item in enumerate(added)}
    return grow_vocabulary(served, served_vocab, added, contexts=own)


@torch.no_grad()
def item_contexts(
    model: GlintRU, vocab: list[str], sequences: Iterable[list[str]], items: list[str]
) -> dict[str, Tensor]:
    """An embedding row for each of ``items`` (unknown to ``model``) from the clicks on it: the
    mean of the user representations just before them (what would have had to score it high),
    rescaled to the median norm of the real items' rows so it neither floods nor vanishes from
    the rankings. Items whose clicks have no known history before them get none."""
    wanted, index = set(items), {item: i for i, item in enumerate(vocab) if i > 0}
    histories, owners = [], []
    for seq in sequences:
        known: list[int] = []
        for item in seq:
            if item in wanted and known:
                histories.append(np.asarray(known, dtype=np.int64))
                owners.append(item)
            if item in index:
                known.append(index[item])
    if not histories:
        return {}
    was_training = model.training
    model.eval()
    try:
        device = model.item_embeddings().device
        vectors = torch.cat(
            [
                represent(model, histories[i : i + EVAL_BATCH_SIZE], device)
                for i in range(0, len(histories), EVAL_BATCH_SIZE)
            ]
        )
    finally:
        model.train(was_training)
    norm = model.item_embeddings()[1:].norm(dim=1).median()
    rows: dict[str, list[int]] = {}
    for n, item in enumerate(owners):
        rows.setdefault(item, []).append(n)
    out = {}
    for item, chosen in rows.items():
        mean = vectors[chosen].mean(0)
        out[item] = mean * (norm / mean.norm().clamp_min(1e-12))
    return out


def to_indices(sequences: Iterable[list[str]], vocab: list[str]) -> list[np.ndarray]:
    """External ids -> index arrays; ids missing from ``vocab`` are dropped from the sequence."""
    index = {item: i for i, item in enumerate(vocab) if i > 0}
    out = []
    for seq in sequences:
        kept = [index[item] for item in seq if item in index]
        out.append(np.asarray(kept, dtype=np.int64))
    return out


# ----------------------------------------------------------------------------- replay
def replay_mix(
    sequences: list[np.ndarray],
    recent: int,
    recent_share: float,
    rng: np.random.Generator,
    at_least: int = 0,
) -> list[np.ndarray]:
    """What a run trains on, from sequences ordered least recently active first whose last
    ``recent`` users clicked since the last run: those users, plus a random sample of the older
    ones (in order) so that the recent users make at most ``recent_share`` of the whole, and
    the whole is at least ``at_least`` users (a run's steps x batch size: each user once, not
    a few users over and over); everyone when the share is 0 or nobody is recent. The model
    adapts to who is active now, and the replay keeps it from forgetting everyone else."""
    recent = min(recent, len(sequences))
    if recent_share <= 0 or recent == 0:
        return list(sequences)
    older = len(sequences) - recent
    by_share = round(recent * (1 - recent_share) / recent_share)
    wanted = min(older, max(by_share, at_least - recent))
    chosen = np.sort(rng.choice(older, size=wanted, replace=False)) if wanted else np.zeros(0, int)
    return [sequences[i] for i in chosen] + list(sequences[older:])


# ----------------------------------------------------------------------------- holdout
def split_holdout(
    sequences: list[np.ndarray], holdout_users: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(training sequences, holdout sequences) from sequences ordered oldest-active first.

    The last ``holdout_users`` users with at least 2 clicks are held out: their whole sequence is
    a holdout sequence (last click = target) and only the clicks before it are trained on, so no
    target is ever seen in training. The training sequences stay one per user, in order (those
    too short to train on are skipped by ``finetune``).
    """
    eligible = [i for i, s in enumerate(sequences) if len(s) >= 2]
    chosen = set(eligible[-holdout_users:]) if holdout_users > 0 else set()
    train = [s[:-1] if i in chosen else s for i, s in enumerate(sequences)]
    holdout = [sequences[i] for i in sorted(chosen)]
    return train, holdout


@torch.no_grad()
def holdout_metrics(
    model: GlintRU, sequences: list[np.ndarray], unranked: Iterable[int] = ()
) -> dict[str, float]:
    """Next-click HR@10 and NDCG@10 of each sequence's last click given the clicks before it.

    The evaluator's full ranking with the history masked (the worker masks seen items), and the
    ``unranked`` item indices left out of it (the fresh items, which the worker does not rank:
    ``model.new_items``). Items beyond the model's vocabulary (grown since) are dropped from
    histories, and a target the model cannot score or does not rank, or a user with no known
    history left, is a miss.
    """
    if not sequences:
        raise ValueError("no holdout sequences")
    histories = [s[:-1][s[:-1] <= model.num_items] for s in sequences]
    targets = torch.tensor([int(s[-1]) for s in sequences])
    known = (targets <= model.num_items) & torch.tensor([len(h) > 0 for h in histories])
    scorable = known.nonzero().squeeze(1).tolist()
    ranks = torch.full((len(sequences),), MISS_RANK, dtype=torch.long)
    score, left_out = score_fn(model), torch.tensor(sorted(set(unranked)), dtype=torch.long)

    def ranked(chunk: list[np.ndarray]) -> Tensor:
        scores = score(chunk)
        scores[:, left_out.to(scores.device)] = float("-inf")
        return scores

    was_training = model.training
    model.eval()
    try:
        ranks[known] = masked_ranks(
            ranked, [histories[i] for i in scorable], targets[known], EVAL_BATCH_SIZE
        )
    finally:
        model.train(was_training)
    figures = metrics_from_ranks(ranks.numpy())
    return {f"HR@{K}": figures[f"HR@{K}"], GATE_METRIC: figures[GATE_METRIC]}


def gate(new: dict[str, float], current: dict[str, float], tolerance: float = 0.0) -> bool:
    """Publish only if the new model is not worse: NDCG@10 >= current NDCG@10 - tolerance."""
    value = new[GATE_METRIC]
    return math.isfinite(value) and value >= current[GATE_METRIC] - tolerance


def weights_finite(model: torch.nn.Module) -> bool:
    """A diverged fine-tune can leave NaN/inf weights that still rank something; never ship it."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


# ----------------------------------------------------------------------------- training
def _cycled(
    model: GlintRU,
    sequences: list[np.ndarray],
    batch_size: int,
    rng: np.random.Generator,
    weighting: TargetWeighting,
) -> Iterator[LossStep]:
    """The training loss steps, epoch after epoch, until the caller stops."""
    while True:
        yield from loss_steps(model, sequences, batch_size, rng, weighting=weighting)


def finetune(
    model: GlintRU,
    sequences: list[np.ndarray],
    steps: int,
    lr: float,
    *,
    batch_size: int = 32,
    seed: int = 0,
    weighting: TargetWeighting = TargetWeighting.STEP,
) -> GlintRU:
    """A fine-tuned copy of ``model`` (eval mode) after ``steps`` Adam steps on ``sequences``.

    The input model is left untouched: it is the "current" side of the gate. A non-finite loss
    stops training early; ``weights_finite`` and the gate then keep the result out.
    ``weighting``: how a step weighs its targets (``model.steps``).
    """
    usable = [s for s in sequences if len(s) >= 2]
    tuned = copy.deepcopy(model).train()
    if not usable or steps <= 0:
        return tuned.eval()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(tuned.parameters(), lr=lr)
    for _, loss_fn in zip(range(steps), _cycled(tuned, usable, batch_size, rng, weighting)):
        loss = loss_fn()
        if not torch.isfinite(loss):
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return tuned.eval()
