"""The worker's batch process: the ``BatchPipeline`` in a child process of its own.

Why a process and not a thread: faust's event loop needs the GIL for every click it delivers,
and the batch's Python work (model dispatch, JSON, sends, RocksDB) would hold it much of the
time (docs/benchmarks.md has the measurements). The two share nothing but the micro-batches
going in (pickled ``RawClick`` lists) and small offset maps coming back.

Lifecycle:

- spawned, not forked (faust's threads are already running when it starts), once, by
  ``BatchProcess.start``; a failure while building the processor (e.g. no model to serve) is
  raised by ``start`` in the worker itself, as the original exception;
- one call at a time, in submission order (``ProcessPoolExecutor`` with one worker);
- it dies with the worker: the kernel kills it when the worker dies, even by SIGKILL
  (``PR_SET_PDEATHSIG``, Linux), so a restarted worker never finds RocksDB still locked. It
  ignores SIGINT/SIGTERM (Ctrl-C reaches the whole process group): the worker decides when it
  stops, after the batch in flight (``close``);
- if it dies anyway, every call raises ``BrokenProcessPool`` and the worker exits for a
  restart (``stream.worker``); the state is crash-consistent by construction.

Metrics: the child serves its registry (``metrics.BATCH_REGISTRY``) on a private loopback port,
and the worker's public endpoint includes it at every scrape (``ChildMetrics``), so a scrape
sees one worker. Lookups: the child answers ``GET /users/{id}/recommendations`` on
``worker.lookup_port`` (``stream.lookup``), from the store it holds; after every rebalance the
worker hands it the ``Routes`` to the other workers (``set_routes``).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from stream import endpoints, lookup_server, metrics
from stream.announcements import Announcements
from stream.lookup import LocalLookup, LookupRouter, Routes, advertised_url
from stream.model_source import ModelSource
from stream.pipeline import BatchPipeline, RawClick
from stream.publisher import Publisher
from stream.settings import Settings
from stream.state import ChangelogReader, StateStore

log = logging.getLogger(__name__)

T = TypeVar("T")
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
SCRAPE_TIMEOUT_S = 5.0  # the child answers between two batches' Python work: well under this


@dataclass(frozen=True)
class Outcome:
    """What a batch tells the worker: the seeks to perform and every partition's applied offset."""

    seeks: dict[int, int]
    applied: dict[int, int]


class BatchProcess:
    """The worker's handle on its batch process: async calls, run in the child one at a time."""

    def __init__(self, settings: Settings, loglevel: str = "info") -> None:
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_child_start,
            initargs=(settings, os.getpid(), loglevel.upper()),
        )
        self._applied: dict[int, int] = {}
        self.pid: int | None = None
        self.endpoint_port = 0  # the child's loopback port for its metrics

    def start(self) -> int:
        """Spawn the child and build its processor; the model version it serves.

        Raises what building the processor raised (e.g. no model to serve)."""
        # The first submit spawns the child from this (the main) thread, the one whose death
        # PR_SET_PDEATHSIG watches.
        self.pid, self.endpoint_port, version = self._pool.submit(_child_started).result()
        log.info(
            "batch process %d ready (metrics on loopback port %s)",
            self.pid,
            self.endpoint_port,
        )
        return version

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        job = self._pool.submit(fn, *args)
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            # Shutting down: let the call finish, so a batch in flight is really applied (the
            # wait is bounded by the delivery timeout).
            job.result()
            raise

    async def process(self, batch: list[RawClick], assigned: set[int]) -> dict[int, int]:
        """Apply a batch; the seeks {partition: offset} the consumer must perform."""
        outcome = await self._call(_child_process, batch, assigned)
        self._applied = outcome.applied
        return outcome.seeks

    async def prepare(self, partitions: set[int]) -> dict[int, int]:
        """Catch the partitions up from the changelog; where each resumes {partition: offset}."""
        resume = await self._call(_child_prepare, partitions)
        self._applied = {**self._applied, **{p: offset - 1 for p, offset in resume.items()}}
        return resume

    async def refresh_model(self) -> int:
        """Swap in the announced version, if it changed; the version served now."""
        return await self._call(_child_refresh_model)

    async def update_store_metrics(self) -> None:
        await self._call(_child_update_store_metrics)

    async def set_routes(self, routes: Routes | None) -> None:
        """Where lookups go from now on; None while a rebalance is under way."""
        await self._call(_child_set_routes, routes)

    def applied_offsets(self) -> dict[int, int]:
        """{partition: last applied offset} as of the last batch or rebalance (no call)."""
        return dict(self._applied)

    def alive(self) -> bool:
        """The child exists and is not a zombie (no call: safe from any thread)."""
        if self.pid is None:
            return False
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return False
        except OSError:  # no /proc: at least it exists
            try:
                os.kill(self.pid, 0)
            except OSError:
                return False
            return True
        return state not in ("Z", "X")

    def close(self) -> None:
        """Close the processor (producer flushed, RocksDB closed) and wait for the child."""
        try:
            self._pool.submit(_child_close).result()
        except Exception:  # a dead child has nothing left to close
            log.warning("the batch process did not close cleanly", exc_info=True)
        self._pool.shutdown(wait=True)


class ChildMetrics(Collector):
    """The batch process's metrics, fetched from its private port at every scrape."""

    def __init__(self, port: int) -> None:
        self._url = f"http://127.0.0.1:{port}/metrics"

    def collect(self) -> Iterator[Metric]:
        try:
            with urllib.request.urlopen(self._url, timeout=SCRAPE_TIMEOUT_S) as response:
                text = response.read().decode()
        except OSError as e:
            # the worker's own metrics still go out: the lag shows whether it is stuck
            log.warning("cannot read the batch process's metrics: %s", e)
            return
        yield from text_string_to_metric_families(text)


# ---------------------------------------------------------------------- in the child
def build_pipeline(settings: Settings) -> BatchPipeline:
    torch.set_num_threads(settings.worker.torch_threads)
    return BatchPipeline(
        settings,
        StateStore(settings.paths.state_dir / settings.worker.id / "users", settings.rocksdb),
        Publisher(settings),
        ChangelogReader.from_settings(settings),
        ModelSource.from_settings(settings, settings.worker.id),
        Announcements(settings),
    )


_pipeline: BatchPipeline | None = None  # set by _child_start
_endpoint_port: int | None = None
_router: LookupRouter | None = None
_start_error: BaseException | None = None


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(1)


def _child_start(settings: Settings, parent_pid: int, loglevel: str) -> None:
    global _pipeline, _endpoint_port, _router, _start_error
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=loglevel, format=LOG_FORMAT)
    try:
        endpoints.answer_promptly()
        pipeline = _pipeline = build_pipeline(settings)
        _endpoint_port = endpoints.serve_private(metrics.BATCH_REGISTRY)
        _router = _serve_lookups(settings, pipeline)
    except BaseException as e:  # raised again by _child_started, in the worker
        _start_error = e


def _serve_lookups(settings: Settings, pipeline: BatchPipeline) -> LookupRouter:
    w = settings.worker
    local = LocalLookup(
        pipeline.store,
        pipeline.popularity,
        pipeline.prepared,
        lambda: pipeline.scorer.version,
        w.id,
        w.top_k,
    )
    token = settings.metrics.secret_token()
    router = LookupRouter(local, advertised_url(settings), w.lookup_forward_timeout_s, token)
    lookup_server.serve(settings.metrics, w.lookup_port, router)
    return router


def _the_pipeline() -> BatchPipeline:
    assert _pipeline is not None, "the batch process did not start"
    return _pipeline


def _child_started() -> tuple[int, int, int]:
    if _start_error is not None:
        raise _start_error
    assert _endpoint_port is not None
    return os.getpid(), _endpoint_port, _the_pipeline().scorer.version


def _child_process(batch: list[RawClick], assigned: set[int]) -> Outcome:
    seeks = _the_pipeline().process(batch, assigned)
    return Outcome(seeks, _the_pipeline().applied_offsets())


def _child_prepare(partitions: set[int]) -> dict[int, int]:
    return _the_pipeline().prepare(partitions)


def _child_refresh_model() -> int:
    _the_pipeline().refresh_model()
    return _the_pipeline().scorer.version


def _child_update_store_metrics() -> None:
    _the_pipeline().update_store_metrics()


def _child_set_routes(routes: Routes | None) -> None:
    if _router is not None:
        _router.routes = routes
    if routes is not None:
        log.info(
            "lookups: partitions %s answered here, %d of %d forwarded to %d other workers",
            sorted(routes.assigned),
            len(set(routes.owners) - routes.assigned),
            routes.partitions,
            len(set(routes.owners.values())) - (1 if routes.assigned else 0),
        )


def _child_close() -> None:
    if _pipeline is not None:
        _pipeline.close()
