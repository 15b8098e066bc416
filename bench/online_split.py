"""The time split of `glintstream bench online` and its prequential scoring (pure: no Kafka).

A click log is cut at a global time T: the model starts from the clicks before T only, and the
clicks after T are the stream it serves. Each post-T click is scored against the recommendation
its user held at that moment: the last one published for one of their earlier clicks (a click
the worker dead-lettered publishes nothing, so the one before it still stands). The clicks
scored are fixed by the stream alone (every post-T click whose user clicked before it), so every
arm is judged on the same clicks; an arm with no recommendation for one counts a miss.

An independent scorer needs only the stream (the clicks' ``event_id`` is their index in it) and
the recommendations topic: ``score`` and ``new_item_delays`` take exactly those.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from model.data import SequenceData, before_time, time_at_fraction

K = 10  # HR@10 / NDCG@10
NEVER = math.inf  # the delay of a new item that never reached a published top-K


@dataclass(frozen=True)
class StreamClick:
    user: str
    item: str
    ts: float


@dataclass(frozen=True)
class TimeSplit:
    """``before``: the clicks before T (its own vocabulary: items unknown at T are not in it).
    ``stream``: what is produced, in order: the warm-up (the pre-T clicks of the users who click
    after T, so the worker holds their histories at T) and then the post-T clicks in time order.
    """

    t: float
    before: SequenceData
    stream: list[StreamClick]
    warmup: int  # stream[:warmup] are pre-T; stream[warmup:] is what is scored

    @property
    def post(self) -> int:
        return len(self.stream) - self.warmup

    def new_items(self) -> set[str]:
        """Items first clicked after T."""
        known = set(self.before.vocab[1:])
        return {c.item for c in self.stream[self.warmup :] if c.item not in known}

    def scored(self) -> np.ndarray:
        """Stream indices of the post-T clicks whose user clicked earlier in the stream."""
        seen: set[str] = {c.user for c in self.stream[: self.warmup]}
        out = []
        for i in range(self.warmup, len(self.stream)):
            user = self.stream[i].user
            if user in seen:
                out.append(i)
            seen.add(user)
        return np.asarray(out, dtype=np.int64)

    def slice_bounds(self, slices: int) -> list[tuple[int, int]]:
        """[start, stop) stream indices of ``slices`` equal parts of the post-T stream."""
        edges = np.linspace(self.warmup, len(self.stream), slices + 1).round().astype(int)
        return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def time_split(data: SequenceData, fraction: float, users: int | None = None) -> TimeSplit:
    """Cut ``data`` where ``fraction`` of its clicks have happened (over all users). ``users``:
    a quick run on the first N users who click after T, and on their clicks alone (``before``
    too)."""
    t = time_at_fraction(data, fraction)
    vocab = data.vocab
    warmup: list[StreamClick] = []
    post: list[tuple[float, int, StreamClick]] = []  # (ts, order, click): stable time sort
    streamed: set[str] = set()
    assert data.timestamps is not None  # time_at_fraction checked
    for user, seq, ts in zip(data.users, data.sequences, data.timestamps):
        cut = int(np.searchsorted(ts, t, side="left"))  # sequences are in time order
        if cut == len(seq) or (users is not None and len(streamed) >= users):
            continue
        streamed.add(user)
        warmup += [StreamClick(user, vocab[i], float(s)) for i, s in zip(seq[:cut], ts[:cut])]
        post += [
            (float(s), len(post) + j, StreamClick(user, vocab[i], float(s)))
            for j, (i, s) in enumerate(zip(seq[cut:], ts[cut:]))
        ]
    post.sort(key=lambda x: (x[0], x[1]))
    before = before_time(data, t, streamed if users is not None else None)
    return TimeSplit(t, before, warmup + [c for _, _, c in post], len(warmup))


# ----------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class Figures:
    hr: float
    ndcg: float
    clicks: int  # clicks scored
    answered: int  # of them, with a recommendation held

    def row(self) -> str:
        return f"{self.hr:.4f} / {self.ndcg:.4f}"


def _figures(ranks: np.ndarray, answered: int) -> Figures:
    hit = ranks < K
    gains = np.where(hit, 1.0 / np.log2(np.minimum(ranks, K) + 2.0), 0.0)
    n = len(ranks)
    return Figures(float(hit.mean()) if n else 0.0, float(gains.mean()) if n else 0.0, n, answered)


def held_ranks(
    split: TimeSplit, recs: Mapping[int, Sequence[str]], scored: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The rank of each scored click's item in the top-K its user held (``K``: a miss), and
    whether its user held a recommendation at all. ``recs``: stream index of the click a
    recommendation answers -> its items, best first."""
    by_user: dict[str, list[int]] = defaultdict(list)
    for i in sorted(recs):
        by_user[split.stream[i].user].append(i)
    ranks = np.full(len(scored), K, dtype=np.int64)
    answered = np.zeros(len(scored), dtype=bool)
    for n, i in enumerate(scored):
        click = split.stream[int(i)]
        mine = by_user.get(click.user, [])
        j = bisect_left(mine, int(i)) - 1  # the last recommendation for an earlier click
        if j < 0:
            continue
        answered[n] = True
        items = list(recs[mine[j]][:K])
        if click.item in items:
            ranks[n] = items.index(click.item)
    return ranks, answered


def score(
    split: TimeSplit, recs: Mapping[int, Sequence[str]], slices: int
) -> tuple[Figures, list[Figures]]:
    """Prequential HR@10 / NDCG@10 over all scored clicks and per slice of the post-T stream."""
    scored = split.scored()
    ranks, has = held_ranks(split, recs, scored)
    overall = _figures(ranks, int(has.sum()))
    per_slice = []
    for a, b in split.slice_bounds(slices):
        inside = (scored >= a) & (scored < b)
        per_slice.append(_figures(ranks[inside], int(has[inside].sum())))
    return overall, per_slice


def new_item_delays(split: TimeSplit, recs: Mapping[int, Sequence[str]]) -> dict[str, float]:
    """For each item first clicked after T: stream clicks from its first click to the first
    recommendation (for any user) whose top-K holds it; ``NEVER`` if none did."""
    new = split.new_items()
    first: dict[str, int] = {}
    for i in range(split.warmup, len(split.stream)):
        item = split.stream[i].item
        if item in new:
            first.setdefault(item, i)
    delay = dict.fromkeys(first, NEVER)
    for i in sorted(recs):
        for item in recs[i][:K]:
            if item in delay and delay[item] == NEVER and i >= first[item]:
                delay[item] = float(i - first[item])
    return delay


def quantile_or_never(delays: Sequence[float], q: float) -> float:
    """The q-th percentile, ``NEVER`` when it falls on items that never appeared (the lower of
    the two middle values, so that it is always a delay some item had)."""
    if not delays:
        return math.nan
    ordered = sorted(delays)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]
