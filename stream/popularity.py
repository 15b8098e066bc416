"""The items clicked most of late: what a user with no state is recommended.

Each valid click a worker applies counts for its item with a weight that halves every
``half_life_s``: an exponentially decayed count, so today's hits outrank last week's. Weights
grow instead of old counts shrinking (a click at time t weighs 2^((t - t0) / half_life)), which
keeps an update O(clicks) and the ranking unchanged; they are rescaled before they overflow.

A worker counts the clicks of its own partitions; with keyed clicks each partition is a random
sample of users, so every worker ranks about the same items. The counts live in memory: a
restarted worker starts counting again.

Written by the batch process's main thread, read by its endpoint thread: both under the lock.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Iterable

MAX_EXPONENT = 500.0  # weights up to 2^500: far from float overflow (2^1024), past any count


class Popularity:
    def __init__(self, half_life_s: float, clock_start: float) -> None:
        self._half_life_s = half_life_s
        self._t0 = clock_start
        self._weights: dict[str, float] = {}
        self._total = 0.0
        self._lock = threading.Lock()

    def add(self, items: Iterable[str], now: float) -> None:
        with self._lock:
            exponent = (now - self._t0) / self._half_life_s
            if exponent > MAX_EXPONENT:
                self._rescale(exponent, now)
                exponent = 0.0
            weight = 2.0**exponent
            for item in items:
                self._weights[item] = self._weights.get(item, 0.0) + weight
                self._total += weight

    def _rescale(self, exponent: float, now: float) -> None:
        """Make ``now`` the new origin: every weight times 2^-exponent (what faded to 0 goes)."""
        factor = 2.0**-exponent
        self._weights = {item: w * factor for item, w in self._weights.items() if w * factor}
        self._total = sum(self._weights.values())
        self._t0 = now

    def top(self, k: int) -> list[tuple[str, float]]:
        """The k most popular items with their share of the decayed clicks, best first; none
        before the first click. O(items seen) per call."""
        with self._lock:
            if not self._total:
                return []
            best = heapq.nlargest(k, self._weights.items(), key=lambda pair: pair[1])
            return [(item, w / self._total) for item, w in best]
