"""The time split and prequential scoring of `glintstream bench online` on a hand-made log."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.online_split import (
    NEVER,
    StreamClick,
    held_ranks,
    new_item_delays,
    quantile_or_never,
    score,
    time_split,
)
from model.data import PAD, SequenceData

#        user: (items, timestamps); T falls at 9 (the 60 % quantile of the nine timestamps)
LOG = {
    "a": (["10", "20", "30", "40"], [1, 2, 10, 11]),
    "b": (["20", "10"], [3, 12]),
    "c": (["50"], [13]),
    "d": (["10", "20"], [4, 5]),  # nothing after T
}
FRACTION = 0.6


def data() -> SequenceData:
    vocab = [PAD, "10", "20", "30", "40", "50"]
    index = {item: i for i, item in enumerate(vocab)}
    return SequenceData(
        name="hand-made",
        users=list(LOG),
        sequences=[np.array([index[i] for i in items]) for items, _ in LOG.values()],
        vocab=vocab,
        timestamps=[np.array(ts, dtype=np.float64) for _, ts in LOG.values()],
    )


def test_time_split_trains_on_the_past_and_streams_the_future_in_time_order() -> None:
    split = time_split(data(), FRACTION)
    assert split.t == 9.0
    before = split.before
    assert before.vocab == [PAD, "10", "20"]  # items first clicked after T are unknown at T
    assert before.users == ["a", "b", "d"]
    assert [[before.vocab[i] for i in s] for s in before.sequences] == [
        ["10", "20"],
        ["20"],
        ["10", "20"],
    ]
    assert split.stream == [
        StreamClick("a", "10", 1),  # warm-up: the pre-T clicks of the users who click after T
        StreamClick("a", "20", 2),
        StreamClick("b", "20", 3),
        StreamClick("a", "30", 10),  # then every post-T click in time order
        StreamClick("a", "40", 11),
        StreamClick("b", "10", 12),
        StreamClick("c", "50", 13),
    ]
    assert split.warmup == 3 and split.post == 4
    assert split.new_items() == {"30", "40", "50"}
    assert split.scored().tolist() == [3, 4, 5]  # c's first click has nothing to be scored on
    assert split.slice_bounds(2) == [(3, 5), (5, 7)]


def test_a_quick_split_keeps_the_first_users_and_only_their_clicks() -> None:
    split = time_split(data(), FRACTION, users=1)
    assert split.before.users == ["a"]
    assert {c.user for c in split.stream} == {"a"} and split.warmup == 2


def test_time_split_refuses_a_log_without_time_and_a_bad_fraction() -> None:
    untimed = SequenceData("x", ["a"], [np.array([1, 2])], [PAD, "1", "2"])
    with pytest.raises(ValueError, match="no timestamps"):
        time_split(untimed, FRACTION)
    with pytest.raises(ValueError, match="fraction"):
        time_split(data(), 1.0)


def test_each_click_is_scored_on_the_last_recommendation_for_an_earlier_click() -> None:
    split = time_split(data(), FRACTION)
    recs = {
        1: ["30", "99"],  # a after "20": holds "30" first -> a's click 3 is a hit at rank 0
        2: ["99", "10"],  # b after "20": b's click 5 ("10") is a hit at rank 1
        3: ["99"],  # a after "30": a's click 4 ("40") is a miss ...
        4: ["40"],  # ... even though the recommendation *for* click 4 holds it: no peeking
    }
    ranks, answered = held_ranks(split, recs, split.scored())
    assert ranks.tolist() == [0, 10, 1] and answered.all()
    overall, slices = score(split, recs, slices=2)
    assert overall.clicks == 3 and overall.answered == 3
    assert overall.hr == pytest.approx(2 / 3)
    assert overall.ndcg == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert [s.clicks for s in slices] == [2, 1]
    assert slices[1].hr == 1.0


def test_a_dead_lettered_click_leaves_the_recommendation_before_it_standing() -> None:
    split = time_split(data(), FRACTION)
    recs = {1: ["40", "30"]}  # nothing published for a's click 3 (say, dead-lettered)
    ranks, _ = held_ranks(split, recs, split.scored())
    assert ranks.tolist() == [1, 0, 10]  # clicks 3 and 4 both judged on the list after click 1
    overall, _ = score(split, {}, slices=1)
    assert overall.clicks == 3 and overall.answered == 0 and overall.hr == 0.0


def test_new_items_are_followed_from_their_first_click_to_their_first_top_k() -> None:
    split = time_split(data(), FRACTION)
    recs = {1: ["30"], 4: ["40"], 5: ["99", "30"]}  # rec 1 is before "30"'s first click (3)
    delays = new_item_delays(split, recs)
    assert delays == {"30": 2.0, "40": 0.0, "50": NEVER}
    assert quantile_or_never(list(delays.values()), 50) == 2.0
    assert quantile_or_never(list(delays.values()), 90) == NEVER
    assert math.isnan(quantile_or_never([], 50))
