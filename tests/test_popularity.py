"""Recent clicks outrank old ones; shares are of the decayed total; rescaling keeps the order."""

from __future__ import annotations

import pytest

from stream.popularity import Popularity

HOUR = 3600.0


def test_nothing_before_the_first_click() -> None:
    assert Popularity(HOUR, 0.0).top(5) == []


def test_recent_clicks_outrank_old_ones() -> None:
    popularity = Popularity(HOUR, 0.0)
    popularity.add(["old"] * 10, now=0.0)
    popularity.add(["new"] * 3, now=4 * HOUR)  # 3 x 16 = 48 > 10: four half-lives later
    popularity.add(["new", "rare"], now=4 * HOUR)
    top = popularity.top(5)
    assert [item for item, _ in top] == ["new", "rare", "old"]
    total = 4 * 16 + 16 + 10
    assert [share for _, share in top] == pytest.approx([64 / total, 16 / total, 10 / total])
    assert popularity.top(1) == [("new", pytest.approx(64 / total))]


def test_rescaling_before_overflow_keeps_the_ranking_and_forgets_what_faded() -> None:
    popularity = Popularity(1.0, 0.0)
    popularity.add(["a", "a", "a", "b"], now=0.0)
    popularity.add(["b"], now=501.0)  # 2^501 is past the limit: rescaled, a and b kept
    assert [item for item, _ in popularity.top(3)] == ["b", "a"]
    assert sum(share for _, share in popularity.top(3)) == pytest.approx(1.0)
    popularity.add(["c"], now=5000.0)  # 2^4499 would overflow a float; a and b faded to 0
    assert popularity.top(3) == [("c", 1.0)]
