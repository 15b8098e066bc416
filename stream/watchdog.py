"""The stall watchdog: a worker whose partitions stop moving says so, then exits.

A consumer can stop receiving clicks without any error reaching it: the embedded broker answers
a Fetch with nothing once listing a partition takes longer than the fetch wait (README,
"Embedded broker"), a paused or lost broker answers nothing at all, a stuck batch stops the
consumer loop through back-pressure. faust only notices after minutes. The watchdog looks at
every partition this worker has prepared, once a second, and calls it stalled when either

- clicks are waiting (the high watermark of the last Fetch response is past the applied
  offset) and none has arrived for ``timeout_s``: ``Reason.NO_PROGRESS``; or
- no Fetch response has come back for it for ``timeout_s``: ``Reason.NO_FETCH`` (the broker is
  lost or paused).

A partition stalled with no progress for ``exit_after_s`` more asks for an exit: a restart may
cure a stuck worker. A lost broker does not: the worker reports it and keeps waiting, since its
clients reconnect by themselves once the broker is back.

``Watchdog`` is pure: the worker (``stream.worker``) feeds it observations on faust's event
loop and hands the ``Verdict`` to ``StallReport``, which logs, sets the gauges and readiness,
and exits when asked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from stream import metrics
from stream.messages import StallReason as Reason

log = logging.getLogger(__name__)


class PartitionClock:
    """When each prepared clicks partition last received a click (or was prepared), for the
    watchdog; written by the consumer loop, one dict store per click."""

    def __init__(self) -> None:
        self.arrivals: dict[int, float] = {}
        self.prepared_at: dict[int, float] = {}

    def prepared(self, partitions: set[int]) -> None:
        now = time.monotonic()
        self.prepared_at = {p: now for p in partitions}
        self.arrivals = {p: now for p in partitions}


@dataclass(frozen=True, slots=True)
class PartitionView:
    """What the worker knows about one prepared partition, as of ``now`` (monotonic seconds)."""

    highwater: int | None  # from the last Fetch response; None before the first
    applied: int  # last applied offset (-1: none)
    last_arrival: float  # when a click of it last reached the consumer loop (or it was prepared)
    last_fetch: float  # when the last Fetch response for it came back (or it was prepared)

    @property
    def lag(self) -> int:
        return 0 if self.highwater is None else max(0, self.highwater - (self.applied + 1))


@dataclass(frozen=True)
class Verdict:
    stalled: dict[int, Reason]  # every stalled partition now
    newly_stalled: dict[int, Reason]  # stalled since the last check: log these once
    recovered: set[int]  # moving again since the last check
    exit_now: bool  # stalled for longer than the exit delay: leave for a restart


@dataclass
class Watchdog:
    timeout_s: float
    exit_after_s: float  # counted from the moment a partition is declared stalled
    # partition -> (declared stalled at, why)
    _since: dict[int, tuple[float, Reason]] = field(default_factory=dict)

    def check(self, now: float, partitions: dict[int, PartitionView]) -> Verdict:
        stalled: dict[int, Reason] = {}
        for partition, view in partitions.items():
            reason = self._reason(now, view)
            if reason is not None:
                stalled[partition] = reason
        newly = {p: r for p, r in stalled.items() if self._since.get(p, (0.0, None))[1] != r}
        recovered = set(self._since) - set(stalled)
        for partition in recovered:
            del self._since[partition]
        for partition, reason in newly.items():
            self._since[partition] = (now, reason)
        exit_now = any(
            reason is Reason.NO_PROGRESS and now - since >= self.exit_after_s
            for since, reason in self._since.values()
        )
        return Verdict(stalled, newly, recovered, exit_now)

    def forget(self, partitions: set[int]) -> None:
        """Partitions no longer assigned here (a rebalance moved them)."""
        for partition in partitions:
            self._since.pop(partition, None)

    def _reason(self, now: float, view: PartitionView) -> Reason | None:
        # A stuck consumer loop also stops fetching (its buffer stays full), so no progress
        # with clicks waiting comes first: it names the cure.
        if view.lag > 0 and now - view.last_arrival >= self.timeout_s:
            return Reason.NO_PROGRESS
        if now - view.last_fetch >= self.timeout_s:
            return Reason.NO_FETCH
        return None


class StallReport:
    """Acts on a verdict: an ERROR once per stall naming the partitions and the bootstrap
    servers, the gauges, readiness; and, asked to, the exit for a supervisor to restart."""

    def __init__(
        self,
        topic: str,
        servers: str,
        timeout_s: float,
        exit_after_s: float,
        on_stalled: Callable[[dict[int, Reason]], None],
        on_exit: Callable[[], NoReturn],
    ) -> None:
        self.topic, self.servers = topic, servers
        self.timeout_s, self.exit_after_s = timeout_s, exit_after_s
        self._on_stalled = on_stalled
        self._exit = on_exit

    def __call__(self, verdict: Verdict, views: dict[int, PartitionView]) -> None:
        for reason in verdict.newly_stalled.values():
            metrics.STALLS.labels(reason).inc()
        for partition in views:
            metrics.STALLED.labels(str(partition)).set(1 if partition in verdict.stalled else 0)
        self._on_stalled(verdict.stalled)
        if verdict.newly_stalled:
            log.error("%s", self.message(verdict.newly_stalled, views))
        if verdict.recovered:
            log.info("%s partitions %s are moving again", self.topic, sorted(verdict.recovered))
        if verdict.exit_now:
            log.critical(
                "%s partitions %s made no progress for %.0f s after the stall was reported: "
                "exiting for a supervisor to restart the worker",
                self.topic,
                sorted(p for p, r in verdict.stalled.items() if r is Reason.NO_PROGRESS),
                self.exit_after_s,
            )
            self._exit()

    def message(self, stalled: dict[int, Reason], views: dict[int, PartitionView]) -> str:
        parts = []
        for partition, reason in sorted(stalled.items()):
            if reason is Reason.NO_PROGRESS:
                parts.append(f"{self.topic}[{partition}]: {views[partition].lag} clicks waiting")
            else:
                parts.append(f"{self.topic}[{partition}]: no Fetch response")
        hint = (
            "the broker holds clicks the consumer does not receive; on the embedded broker a "
            "Fetch returns nothing once listing a partition's record batches takes longer than "
            "the fetch wait (README, Embedded broker)"
            if Reason.NO_PROGRESS in stalled.values()
            else "the broker does not answer"
        )
        return (
            f"STALLED for {self.timeout_s:.0f} s: {'; '.join(parts)} (bootstrap servers "
            f"{self.servers}): {hint}; /readyz fails until they move again"
        )
