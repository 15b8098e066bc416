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

Pure: the caller feeds it observations and acts on the returned ``Verdict`` (log, gauge,
readiness, exit); ``stream.app`` does that on faust's event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Reason(StrEnum):
    NO_PROGRESS = "no_progress"  # lag > 0 and no click arrived
    NO_FETCH = "no_fetch"  # no Fetch response (broker lost, paused or overloaded)


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
