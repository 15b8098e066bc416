"""The faust app of `glintstream worker`: one agent that feeds micro-batches to the processor.

faust does what it is good at here: group membership, fetching, offset commits, the worker
lifecycle and signals. It keeps no state: per-user state is ours (``stream.state`` +
``stream.changelog``), because the batch needs its own write order (outputs acked before state
is written), records smaller than the local ones, and offsets we can trust on this broker (see
README "Worker" for why not a faust Table). The batches run in the worker's batch process
(``stream.batch_process``), so the model never competes with faust's loop for the GIL.

Settings that matter on the embedded broker (Tansu): at_least_once (its transactions are broken),
a short session timeout (it holds a JoinGroup for half of it), earliest offset reset (its
ListOffsets(LATEST) under-reports), no web server (two workers on one host would clash).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, NoReturn

import faust
import mode.loop
from faust.types import TP

from stream import endpoints, metrics
from stream.batch_process import BatchProcess, ChildMetrics
from stream.batcher import MicroBatcher
from stream.changelog import ensure_worker_topics
from stream.health import WorkerHealth
from stream.processor import RawClick
from stream.settings import Settings
from stream.watchdog import PartitionView, Reason, Watchdog

log = logging.getLogger(__name__)

# A crashed agent must take the process down (a supervisor restarts it) instead of leaving a
# worker that holds partitions and never commits (faust-streaming #175). The state is
# crash-consistent by construction, so dying at once is safe; the tests kill -9 anyway.
EXIT_AGENT_CRASHED = 70  # EX_SOFTWARE
EXIT_STALLED = 75  # EX_TEMPFAIL: the watchdog gave up on a stalled partition; a restart may cure it
# How often the lag and state-size gauges are refreshed: both read cached figures (the last
# Fetch response, RocksDB's counters), so well under any scrape interval costs nothing.
GAUGE_REFRESH_S = 1.0
WATCH_INTERVAL_S = 1.0  # the watchdog's look at the partitions; also the loop's heartbeat
# /healthz fails when the event loop has not ticked for this long: faust's loop must stay
# responsive (it heartbeats the group), so seconds without a tick mean it is blocked.
HEARTBEAT_TIMEOUT_S = 10.0


def faust_app(settings: Settings, app_id: str, datadir: Path) -> faust.App:
    """A faust app with the engine settings this broker needs (the pass-through floor of the
    benchmark uses the same, so the comparison is engine against engine)."""
    return faust.App(
        app_id,
        broker=settings.kafka.faust_broker_url(),
        broker_credentials=settings.kafka.faust_credentials(),
        processing_guarantee="at_least_once",
        broker_session_timeout=settings.worker.session_timeout_s,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=settings.worker.commit_interval_s,
        topic_partitions=settings.topics.partitions,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        web_enabled=False,
        datadir=str(datadir),
    )


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


def create_app(settings: Settings, processor: BatchProcess, health: WorkerHealth) -> faust.App:
    # faust keeps nothing in its datadir (no tables), but two workers must never share one
    datadir = settings.paths.state_dir / settings.worker.id / "faust"
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust_app(settings, settings.worker.app_id, datadir)
    clock = PartitionClock()
    watchdog = Watchdog(settings.worker.stall_timeout_s, settings.worker.stall_exit_s)
    clicks = app.topic(
        settings.topics.clicks,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",  # we parse ourselves: junk must never reach a codec
    )
    _set_fetch_wait(app, settings.worker.fetch_max_wait_ms)
    _resume_from_applied_offsets(app, settings.topics.clicks, processor, health, clock, watchdog)
    _record_commits(app)

    @app.timer(WATCH_INTERVAL_S)
    async def watch() -> None:
        health.beat()
        try:
            _watch(app, settings, processor, clock, watchdog, health)
        except Exception:  # the watchdog must never be what takes the worker down
            log.warning("the stall watchdog failed", exc_info=True)

    @app.timer(settings.worker.model_check_interval_s)
    async def refresh_model() -> None:
        # in the batch process, so a swap always falls between two batches
        try:
            health.model_loaded(await processor.refresh_model())
        except BrokenProcessPool as e:
            _crash(e)

    lagging: set[int] = set()  # partitions with a lag series, to drop those revoked

    # An exception in a faust timer crashes the app: a metric is never worth that, so both
    # gauge timers log and carry on.
    @app.timer(GAUGE_REFRESH_S)
    async def refresh_lag() -> None:
        # here, not in the batch process: a stuck batch must show as growing lag
        try:
            _update_lag(app, settings.topics.clicks, processor, lagging)
        except Exception:
            log.warning("cannot update the lag metrics", exc_info=True)

    @app.timer(GAUGE_REFRESH_S)
    async def refresh_store_metrics() -> None:
        try:
            await processor.update_store_metrics()
        except BrokenProcessPool as e:
            _crash(e)
        except Exception:
            log.warning("cannot update the state store metrics", exc_info=True)

    @app.agent(clicks)
    async def process_clicks(stream: faust.StreamT) -> None:
        # The consumer loop below fills the next batch while this task runs the current one.
        batcher: MicroBatcher[RawClick] = MicroBatcher(
            settings.worker.batch_max_size, settings.worker.batch_max_ms / 1000
        )
        batches = asyncio.ensure_future(_run_batches(app, settings, processor, batcher))
        batches.add_done_callback(_exit_if_crashed)
        try:
            # faust acks (and commits) each event once the loop moves past it, possibly before
            # it is applied: harmless, since every start seeks to the applied offsets instead
            async for event in stream.events():
                message = event.message
                clock.arrivals[message.partition] = time.monotonic()
                await batcher.put(
                    RawClick(
                        message.partition,
                        message.offset,
                        message.key,
                        message.value,
                        message.timestamp,
                        # set by faust's monitor (time.monotonic) when the consumer delivered it
                        message.time_in or time.monotonic(),
                    )
                )
        except asyncio.CancelledError:
            batches.cancel()
            # let the batch in flight finish, so what faust committed on the way out is applied
            await asyncio.gather(batches, return_exceptions=True)
            raise
        except BaseException:
            _crash()

    return app


async def _run_batches(
    app: faust.App,
    settings: Settings,
    processor: BatchProcess,
    batcher: MicroBatcher[RawClick],
) -> None:
    """Apply batches one after another in the batch process, as soon as each is ready."""
    while True:
        batch = await batcher.get()
        assigned = {
            tp.partition for tp in app.consumer.assignment() if tp.topic == settings.topics.clicks
        }
        seeks = await processor.process(batch, assigned)
        for partition, offset in seeks.items():
            await app.consumer.seek(TP(settings.topics.clicks, partition), offset)


def _exit_if_crashed(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        _crash(task.exception())


def _crash(error: BaseException | None = None) -> NoReturn:
    log.critical("the click agent crashed; exiting for a restart", exc_info=error or True)
    logging.shutdown()
    os._exit(EXIT_AGENT_CRASHED)


def _update_lag(app: faust.App, topic: str, processor: BatchProcess, lagging: set[int]) -> None:
    """Set each assigned clicks partition's lag: high watermark - (last applied offset + 1).

    The high watermark is the one of the last Fetch response (aiokafka keeps it per partition),
    not ListOffsets: the embedded broker's ListOffsets(LATEST) under-reports the log end.
    """
    consumer = app.consumer
    applied = processor.applied_offsets()
    current: set[int] = set()
    for tp in consumer.assignment():
        if tp.topic != topic or tp.partition not in applied:  # not prepared yet
            continue
        try:
            highwater = consumer.highwater(tp)
        except AssertionError:  # aiokafka: revoked since assignment() answered
            continue
        if highwater is None:  # no Fetch response for this partition yet
            continue
        lag = max(0, highwater - (applied[tp.partition] + 1))
        metrics.CONSUMER_LAG.labels(topic, str(tp.partition)).set(lag)
        current.add(tp.partition)
    for partition in lagging - current:  # another worker reports it now
        metrics.CONSUMER_LAG.remove(topic, str(partition))
    lagging.clear()
    lagging.update(current)


def _watch(
    app: faust.App,
    settings: Settings,
    processor: BatchProcess,
    clock: PartitionClock,
    watchdog: Watchdog,
    health: WorkerHealth,
) -> None:
    """One look at every prepared clicks partition; log, gauge, readiness and exit on a stall."""
    now, now_wall = time.monotonic(), time.time()
    applied = processor.applied_offsets()
    consumer = app.consumer
    fetcher = consumer._thread._ensure_consumer()  # type: ignore[attr-defined]
    views: dict[int, PartitionView] = {}
    for partition, prepared_at in clock.prepared_at.items():
        tp = TP(settings.topics.clicks, partition)
        try:
            highwater = consumer.highwater(tp)
            polled_ms = fetcher.last_poll_timestamp(tp)  # wall-clock ms of its last Fetch response
        except AssertionError:  # aiokafka: revoked since the last rebalance
            continue
        last_fetch = prepared_at if polled_ms is None else now - (now_wall - polled_ms / 1000)
        views[partition] = PartitionView(
            highwater,
            applied.get(partition, -1),
            clock.arrivals.get(partition, prepared_at),
            max(last_fetch, prepared_at),
        )
    verdict = watchdog.check(now, views)
    for reason in verdict.newly_stalled.values():
        metrics.STALLS.labels(reason).inc()
    for partition in views:
        metrics.STALLED.labels(str(partition)).set(1 if partition in verdict.stalled else 0)
    health.stalled(verdict.stalled)
    if verdict.newly_stalled:
        log.error("%s", _stall_message(settings, verdict.newly_stalled, views))
    if verdict.recovered:
        log.info("clicks partitions %s are moving again", sorted(verdict.recovered))
    if verdict.exit_now:
        log.critical(
            "clicks partitions %s made no progress for %.0f s after the stall was reported: "
            "exiting (%d) for a supervisor to restart the worker",
            sorted(p for p, r in verdict.stalled.items() if r is Reason.NO_PROGRESS),
            settings.worker.stall_timeout_s + settings.worker.stall_exit_s,
            EXIT_STALLED,
        )
        logging.shutdown()
        os._exit(EXIT_STALLED)


def _stall_message(
    settings: Settings, stalled: dict[int, Reason], views: dict[int, PartitionView]
) -> str:
    topic, servers = settings.topics.clicks, settings.kafka.bootstrap_servers
    timeout = settings.worker.stall_timeout_s
    parts = []
    for partition, reason in sorted(stalled.items()):
        if reason is Reason.NO_PROGRESS:
            parts.append(f"{topic}[{partition}]: {views[partition].lag} clicks waiting")
        else:
            parts.append(f"{topic}[{partition}]: no Fetch response")
    hint = (
        "the broker holds clicks the consumer does not receive; on the embedded broker a Fetch "
        "returns nothing once listing a partition's record batches takes longer than the fetch "
        "wait (README, Embedded broker)"
        if Reason.NO_PROGRESS in stalled.values()
        else "the broker does not answer"
    )
    return (
        f"STALLED for {timeout:.0f} s: {'; '.join(parts)} (bootstrap servers {servers}): {hint}; "
        f"/readyz fails until they move again"
    )


def _set_fetch_wait(app: faust.App, wait_ms: int) -> None:
    """Give the clicks consumer a fetch wait of ``wait_ms`` (faust hard-codes 1,500 ms).

    The embedded broker (Tansu) answers a Fetch that found no data only when the wait is over,
    even if clicks arrive meanwhile, so at low rates a click waited up to that long before the
    worker saw it (measured: p50 ~0.5 s at 200 clicks/s). aiokafka reads the attribute when the
    consumer starts, which is after faust creates it here.
    """
    thread = app.consumer._thread  # type: ignore[attr-defined]
    create = thread._create_worker_consumer

    def create_with_wait(transport: Any) -> Any:
        consumer = create(transport)
        consumer._fetch_max_wait_ms = wait_ms
        return consumer

    thread._create_worker_consumer = create_with_wait


def _record_commits(app: faust.App) -> None:
    """Stamp ``glintstream_last_commit_timestamp_seconds`` on every successful offset commit.

    faust's ``Consumer.commit`` returns True only when it committed something; its commit timer
    and shutdown both call it through the instance, so wrapping it here sees every commit.
    """
    consumer = app.consumer
    commit = consumer.commit

    async def commit_and_record(*args: Any, **kwargs: Any) -> bool:
        did_commit = await commit(*args, **kwargs)
        if did_commit:
            metrics.LAST_COMMIT.set_to_current_time()
        return did_commit

    consumer.commit = commit_and_record  # type: ignore[method-assign]
    # Until the first commit the age counts from the start, not from 1970.
    metrics.LAST_COMMIT.set_to_current_time()


def _resume_from_applied_offsets(
    app: faust.App,
    topic: str,
    processor: BatchProcess,
    health: WorkerHealth,
    clock: PartitionClock,
    watchdog: Watchdog,
) -> None:
    """Make every rebalance resume each clicks partition after its last *applied* offset.

    faust seeks assigned partitions to their committed offsets (``perform_seek``) while the
    flow is stopped, after every rebalance. We wrap its ``seek_to_committed`` on our consumer:
    catch the partitions' state up from the changelog (in the batch process), then seek to the stored
    applied offset + 1 and report that as "committed", so faust's ack bookkeeping starts there.
    """
    consumer = app.consumer
    seek_to_committed = consumer.seek_to_committed

    async def seek_to_applied() -> Mapping[TP, int]:
        committed = dict(await seek_to_committed())
        ours = {tp for tp in consumer.assignment() if tp.topic == topic}
        partitions = {tp.partition for tp in ours}
        health.assigned(partitions)
        watchdog.forget(set(clock.prepared_at) - partitions)
        clock.prepared(set())  # the watchdog waits until they are restored
        if not ours:
            return committed
        try:
            resume = await processor.prepare(partitions)
        except BrokenProcessPool as e:
            _crash(e)
        health.restored(partitions)
        clock.prepared(partitions)
        for tp in ours:
            offset = resume[tp.partition]
            if committed.get(tp) != offset:
                log.info(
                    "%s[%d]: resuming at applied offset + 1 = %d (committed %s)",
                    topic,
                    tp.partition,
                    offset,
                    committed.get(tp),
                )
                await consumer.seek(tp, offset)
                committed[tp] = offset
        return committed

    consumer.seek_to_committed = seek_to_applied  # type: ignore[method-assign]


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run until SIGTERM/SIGINT (exit 0) or a crash (non-zero). Never returns."""
    mode.loop.use(settings.worker.event_loop)
    ensure_worker_topics(settings)
    processor = BatchProcess(settings, loglevel)
    version = processor.start()
    health = WorkerHealth(HEARTBEAT_TIMEOUT_S, processor.alive)
    health.model_loaded(version)
    if processor.metrics_port is not None:
        metrics.WORKER_REGISTRY.register(ChildMetrics(processor.metrics_port))
    endpoints.serve(
        settings.metrics.host,
        settings.metrics.port,
        metrics.WORKER_REGISTRY,
        {"/healthz": health.live, "/readyz": health.ready},
    )
    app = create_app(settings, processor, health)
    worker = faust.Worker(app, loglevel=loglevel, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    finally:
        processor.close()
