"""A worker's liveness and readiness, for ``/healthz`` and ``/readyz`` (``stream.endpoints``).

- **live**: faust's event loop ticks (its heartbeat is recent) and the batch process is alive.
  A supervisor restarts a worker that is not live.
- **ready**: live, the model is loaded, the consumer group has assigned partitions, every
  assigned partition is restored from its changelog, and none is stalled (``stream.watchdog``).
  A load balancer or a rollout waits for it.

The event loop writes, the endpoint thread reads: every field is replaced whole under a lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from stream.messages import StallReason as Reason


class WorkerHealth:
    def __init__(self, heartbeat_timeout_s: float, batch_process_alive: Callable[[], bool]) -> None:
        self._heartbeat_timeout_s = heartbeat_timeout_s
        self._batch_process_alive = batch_process_alive
        self._lock = threading.Lock()
        self._heartbeat = time.monotonic()
        self._model_version: int | None = None
        self._assigned: frozenset[int] | None = None  # None: no assignment yet
        self._restored: frozenset[int] = frozenset()
        self._stalled: dict[int, Reason] = {}

    # ------------------------------------------------------------- written by the event loop
    def beat(self) -> None:
        with self._lock:
            self._heartbeat = time.monotonic()

    def model_loaded(self, version: int) -> bool:
        """Record the version served; True if it changed."""
        with self._lock:
            changed, self._model_version = version != self._model_version, version
        return changed

    @property
    def model_version(self) -> int | None:
        return self._model_version

    def assigned(self, partitions: set[int]) -> None:
        """A rebalance handed these partitions over; none is restored yet."""
        with self._lock:
            self._assigned = frozenset(partitions)
            self._restored = frozenset()
            self._stalled = {p: r for p, r in self._stalled.items() if p in partitions}

    def restored(self, partitions: set[int]) -> None:
        with self._lock:
            self._restored = self._restored | partitions

    def stalled(self, partitions: Mapping[int, Reason]) -> None:
        with self._lock:
            self._stalled = dict(partitions)

    # ------------------------------------------------------------- read by the endpoints
    def live(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            heartbeat_age = time.monotonic() - self._heartbeat
        batch_process = self._batch_process_alive()
        ok = heartbeat_age <= self._heartbeat_timeout_s and batch_process
        return ok, {
            "event_loop_heartbeat_age_s": round(heartbeat_age, 3),
            "batch_process_alive": batch_process,
        }

    def ready(self) -> tuple[bool, dict[str, Any]]:
        live, body = self.live()
        with self._lock:
            assigned, restored = self._assigned, self._restored
            stalled, version = dict(self._stalled), self._model_version
        reasons = [] if live else ["not live"]
        if version is None:
            reasons.append("no model loaded")
        if assigned is None:
            reasons.append("no partitions assigned yet")
        elif assigned - restored:
            reasons.append(f"restoring partitions {sorted(assigned - restored)}")
        if stalled:
            reasons.append(
                "stalled partitions " + ", ".join(f"{p} ({r})" for p, r in sorted(stalled.items()))
            )
        return not reasons, {
            **body,
            "reasons": reasons,
            "model_version": version,
            "partitions": sorted(assigned or ()),
            "stalled": {str(p): str(r) for p, r in sorted(stalled.items())},
        }
