"""The `worker-status` topic: what each live worker serves, for `glintstream model status`.

Each worker writes a ``WorkerStatus`` (key: its id) every ``worker.status_interval_s`` and after
each model swap; a worker whose last status is older than ``LIVE_INTERVALS`` intervals is gone.

The embedded broker never compacts it: it grows by 86,400 / interval records per worker and
day, and a reader lists all of them per Fetch (~1-2.5 us each, README, Embedded broker), so
``READ_FETCH_WAIT_MS`` lets `model status` read some two million records, months of several
workers. Deleting the topic resets it; workers recreate it when they start.
"""

from __future__ import annotations

import os
import socket
import time

from stream.messages import WorkerStatus
from stream.settings import Settings
from stream.topics import read_messages

LIVE_INTERVALS = 3
READ_FETCH_WAIT_MS = 5000
READ_TIMEOUT_S = 60.0


def status_record(
    settings: Settings, model_version: int, partitions: list[int]
) -> tuple[bytes, bytes]:
    """(key, value) of this worker's status now."""
    status = WorkerStatus(
        worker_id=settings.worker.id,
        host=socket.gethostname(),
        pid=os.getpid(),
        model_version=model_version,
        partitions=sorted(partitions),
        ts=time.time(),
    )
    return settings.worker.id.encode(), status.to_bytes()


def read_statuses(settings: Settings) -> dict[str, WorkerStatus]:
    """The last status of every worker that ever wrote one (malformed records are skipped)."""
    latest: dict[str, WorkerStatus] = {}
    topic, wait = settings.topics.worker_status, {"fetch.wait.max.ms": READ_FETCH_WAIT_MS}
    for _, status in read_messages(settings, topic, WorkerStatus, READ_TIMEOUT_S, **wait):
        latest[status.worker_id] = status
    return latest


def is_live(status: WorkerStatus, settings: Settings, now: float) -> bool:
    return now - status.ts <= LIVE_INTERVALS * settings.worker.status_interval_s
