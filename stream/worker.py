"""`glintstream worker`: the faust app that feeds micro-batches to the batch process.

faust does what it is good at here: group membership (whose assignment also tells every worker
where the others serve lookups), fetching, offset commits, the worker lifecycle and signals. It
keeps no state: per-user state is ours (``stream.state``), because a batch needs its own write
order (outputs acked before state is written), changelog records smaller than the local ones,
and offsets we can trust on this broker (README, "Worker"). Batches run in the batch process.

Everything that touches faust (and, through it, aiokafka) is in this module: the app, the agent,
the timers, and four seams where faust is bent (``tests/test_worker_seams.py`` fails if a faust
or aiokafka upgrade moves what they rely on):

1. the clicks consumer's fetch wait (faust hard-codes 1,500 ms);
2. every rebalance resumes each partition after its *applied* offset, not the committed one;
3. every successful commit is stamped in a gauge;
4. the watchdog reads the time of each partition's last Fetch response from aiokafka.

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
from stream.framing import Framing
from stream.health import WorkerHealth
from stream.lookup import Routes, advertised_url
from stream.pipeline import RawClick
from stream.settings import Settings
from stream.topics import ensure_worker_topics
from stream.watchdog import PartitionClock, PartitionView, StallReport, Watchdog
from stream.worker_status import status_record

log = logging.getLogger(__name__)

# A crashed agent must take the process down (a supervisor restarts it) instead of leaving a
# worker that holds partitions and never commits (faust-streaming #175). The state is
# crash-consistent by construction, so dying at once is safe.
EXIT_AGENT_CRASHED = 70  # EX_SOFTWARE
EXIT_STALLED = 75  # EX_TEMPFAIL: the watchdog gave up on a stalled partition; a restart may cure it
# The lag and state-size gauges read cached figures (the last Fetch response, RocksDB's
# counters), so refreshing them well under any scrape interval costs nothing.
GAUGE_REFRESH_S = 1.0
WATCH_INTERVAL_S = 1.0  # the watchdog's look at the partitions; also the loop's heartbeat
# /healthz fails when the event loop has not ticked for this long: faust's loop must stay
# responsive (it heartbeats the group), so seconds without a tick mean it is blocked.
HEARTBEAT_TIMEOUT_S = 10.0


def faust_app(
    settings: Settings, app_id: str, datadir: Path, canonical_url: str | None = None
) -> faust.App:
    """A faust app with the engine settings this broker needs (the pass-through floor of the
    benchmark uses the same, so the comparison is engine against engine). ``canonical_url``:
    where the others reach this worker's lookups (spread with the group assignment)."""
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
        canonical_url=canonical_url,
    )


class Worker:
    """The faust app and what its agent, timers and seams share."""

    def __init__(self, settings: Settings, batch: BatchProcess, health: WorkerHealth) -> None:
        self.settings = settings
        self.batch = batch
        self.health = health
        self.clock = PartitionClock()
        self.framing = Framing(settings)
        w = settings.worker
        self.watchdog = Watchdog(w.stall_timeout_s, w.stall_exit_s)
        self.report = StallReport(
            settings.topics.clicks,
            settings.kafka.bootstrap_servers,
            w.stall_timeout_s,
            w.stall_exit_s,
            health.stalled,
            lambda: _exit(EXIT_STALLED),
        )
        self.lagging: set[int] = set()  # partitions with a lag series, to drop those revoked
        # faust keeps nothing in its datadir (no tables), but two workers must never share one
        datadir = settings.paths.state_dir / w.id / "faust"
        datadir.mkdir(parents=True, exist_ok=True)
        self.app = faust_app(settings, w.app_id, datadir, advertised_url(settings))
        self._seams()
        self._timers()
        self._agent()

    def routes(self, assigned: set[int]) -> Routes | None:
        """Where lookups go after this rebalance: faust spreads every member's URL and
        partitions with the assignment."""
        topic = self.settings.topics.clicks
        members = self.app.assignor.external_topics_metadata()  # type: ignore[attr-defined]
        owners = {p: url for url, topics in members.items() for p in topics.get(topic, ())}
        # a group assigns every partition: the owners name them all (aiokafka's own count is
        # known to the group's leader only)
        partitions = self.app.consumer.topic_partitions(topic) or max(owners, default=-1) + 1
        return Routes(partitions, frozenset(assigned), owners) if partitions else None

    # ------------------------------------------------------------------ the agent
    def _agent(self) -> None:
        clicks = self.app.topic(
            self.settings.topics.clicks,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",  # we parse ourselves: junk must never reach a codec
        )

        @self.app.agent(clicks)
        async def process_clicks(stream: faust.StreamT) -> None:
            # The consumer loop below fills the next batch while this task runs the current one.
            w = self.settings.worker
            batcher: MicroBatcher[RawClick] = MicroBatcher(w.batch_max_size, w.batch_max_ms / 1000)
            batches = asyncio.ensure_future(self._run_batches(batcher))
            batches.add_done_callback(_exit_if_crashed)
            try:
                # faust acks (and commits) each event once the loop moves past it, possibly
                # before it is applied: harmless, since every start seeks to the applied offsets
                async for event in stream.events():
                    message = event.message
                    self.clock.arrivals[message.partition] = time.monotonic()
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

    async def _run_batches(self, batcher: MicroBatcher[RawClick]) -> None:
        """Apply batches one after another in the batch process, as soon as each is ready."""
        topic = self.settings.topics.clicks
        while True:
            batch = await batcher.get()
            assigned = {tp.partition for tp in self.app.consumer.assignment() if tp.topic == topic}
            seeks = await self.batch.process(batch, assigned)
            for partition, offset in seeks.items():
                await self.app.consumer.seek(TP(topic, partition), offset)

    # ------------------------------------------------------------------ the timers
    def _timers(self) -> None:
        app, batch, health = self.app, self.batch, self.health

        @app.timer(self.settings.worker.model_check_interval_s)
        async def refresh_model() -> None:
            # in the batch process, so a swap always falls between two batches
            try:
                swapped = health.model_loaded(await batch.refresh_model())
            except BrokenProcessPool as e:
                _crash(e)
            if swapped:
                await self._send_status()

        @app.timer(self.settings.worker.status_interval_s)
        async def report_status() -> None:
            await self._send_status()

        # An exception in a faust timer crashes the app: a metric is never worth that, so these
        # timers log and carry on.
        @app.timer(GAUGE_REFRESH_S)
        async def refresh_gauges() -> None:
            try:
                self._update_lag()  # here, not in the batch process: a stuck batch shows as lag
                await batch.update_store_metrics()
            except BrokenProcessPool as e:
                _crash(e)
            except Exception:
                log.warning("cannot update the lag or state store metrics", exc_info=True)

        @app.timer(WATCH_INTERVAL_S)
        async def watch() -> None:
            health.beat()
            try:
                views = self._partition_views()
                self.report(self.watchdog.check(time.monotonic(), views), views)
            except Exception:  # the watchdog must never be what takes the worker down
                log.warning("the stall watchdog failed", exc_info=True)

    async def _send_status(self) -> None:
        """What this worker serves, to the worker-status topic (`glintstream model status`)."""
        topic, version = self.settings.topics.clicks, self.health.model_version
        partitions = [tp.partition for tp in self.app.consumer.assignment() if tp.topic == topic]
        key, value = status_record(self.settings, version or 0, partitions)
        topic = self.settings.topics.worker_status
        try:
            # a registry's framing may ask it over HTTP (once): never on the event loop
            value = await asyncio.to_thread(self.framing, topic, value)
            await self.app.producer.send_and_wait(topic, key, value, None, None, None)
        except Exception as e:  # a status is worth a warning, never the worker
            log.warning("cannot send this worker's status: %s", e)

    def _update_lag(self) -> None:
        """Each assigned clicks partition's lag: high watermark - (last applied offset + 1),
        the watermark of the last Fetch response (the embedded broker's ListOffsets(LATEST)
        under-reports the log end)."""
        topic = self.settings.topics.clicks
        applied = self.batch.applied_offsets()
        current: set[int] = set()
        for partition, highwater in self._highwaters().items():
            if partition in applied and highwater is not None:
                lag = max(0, highwater - (applied[partition] + 1))
                metrics.CONSUMER_LAG.labels(topic, str(partition)).set(lag)
                current.add(partition)
        for partition in self.lagging - current:  # another worker reports it now
            metrics.CONSUMER_LAG.remove(topic, str(partition))
        self.lagging = current

    def _partition_views(self) -> dict[int, PartitionView]:
        """What the watchdog needs of each prepared partition (seam 4)."""
        now, now_wall = time.monotonic(), time.time()
        applied = self.batch.applied_offsets()
        fetcher = self.app.consumer._thread._ensure_consumer()  # type: ignore[attr-defined]
        highwaters = self._highwaters()
        views = {}
        for partition, prepared_at in self.clock.prepared_at.items():
            if partition not in highwaters:  # revoked since the last rebalance
                continue
            try:  # wall-clock ms of the last Fetch response for it
                polled_ms = fetcher.last_poll_timestamp(TP(self.settings.topics.clicks, partition))
            except AssertionError:
                continue
            last_fetch = prepared_at if polled_ms is None else now - (now_wall - polled_ms / 1000)
            views[partition] = PartitionView(
                highwaters[partition],
                applied.get(partition, -1),
                self.clock.arrivals.get(partition, prepared_at),
                max(last_fetch, prepared_at),
            )
        return views

    def _highwaters(self) -> dict[int, int | None]:
        consumer, topic = self.app.consumer, self.settings.topics.clicks
        out: dict[int, int | None] = {}
        for tp in consumer.assignment():
            if tp.topic == topic:
                try:
                    out[tp.partition] = consumer.highwater(tp)
                except AssertionError:  # aiokafka: revoked since assignment() answered
                    continue
        return out

    # ------------------------------------------------------------------ the seams
    def _seams(self) -> None:
        self._set_fetch_wait()
        self._resume_from_applied_offsets()
        self._record_commits()

    def _set_fetch_wait(self) -> None:
        """Seam 1: the clicks consumer's fetch wait (``worker.fetch_max_wait_ms``; faust
        hard-codes 1,500 ms). aiokafka reads the attribute when the consumer starts, which is
        after faust creates it here."""
        thread = self.app.consumer._thread  # type: ignore[attr-defined]
        create, wait_ms = thread._create_worker_consumer, self.settings.worker.fetch_max_wait_ms

        def create_with_wait(transport: Any) -> Any:
            consumer = create(transport)
            consumer._fetch_max_wait_ms = wait_ms
            return consumer

        thread._create_worker_consumer = create_with_wait

    def _record_commits(self) -> None:
        """Seam 3: stamp ``glintstream_last_commit_timestamp_seconds`` on every successful
        commit. faust's ``Consumer.commit`` returns True only when it committed something; its
        commit timer and shutdown both call it through the instance."""
        consumer: Any = self.app.consumer
        commit = consumer.commit

        async def commit_and_record(*args: Any, **kwargs: Any) -> bool:
            did_commit: bool = await commit(*args, **kwargs)
            if did_commit:
                metrics.LAST_COMMIT.set_to_current_time()
            return did_commit

        consumer.commit = commit_and_record
        # Until the first commit the age counts from the start, not from 1970.
        metrics.LAST_COMMIT.set_to_current_time()

    def _resume_from_applied_offsets(self) -> None:
        """Seam 2: make every rebalance resume each clicks partition after its *applied* offset.

        faust seeks assigned partitions to their committed offsets (``seek_to_committed``) while
        the flow is stopped, after every rebalance. Wrapped: catch the partitions' state up from
        the changelog (in the batch process), then seek to the stored applied offset + 1 and
        report that as "committed", so faust's ack bookkeeping starts there.
        """
        consumer: Any = self.app.consumer
        seek_to_committed = consumer.seek_to_committed
        topic = self.settings.topics.clicks

        async def seek_to_applied() -> Mapping[TP, int]:
            committed = dict(await seek_to_committed())
            ours = {tp for tp in consumer.assignment() if tp.topic == topic}
            partitions = {tp.partition for tp in ours}
            metrics.REBALANCES.inc()
            metrics.ASSIGNED_PARTITIONS.set(len(partitions))
            self.health.assigned(partitions)
            self.watchdog.forget(set(self.clock.prepared_at) - partitions)
            self.clock.prepared(set())  # the watchdog waits until they are restored
            try:
                await self.batch.set_routes(None)  # lookups wait for the restore
                resume = await self.batch.prepare(partitions) if ours else {}
                await self.batch.set_routes(self.routes(partitions))
            except BrokenProcessPool as e:
                _crash(e)
            if not ours:
                return committed
            self.health.restored(partitions)
            self.clock.prepared(partitions)
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

        consumer.seek_to_committed = seek_to_applied


def _exit_if_crashed(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _crash(task.exception())


def _crash(error: BaseException | None = None) -> NoReturn:
    log.critical("the click agent crashed; exiting for a restart", exc_info=error or True)
    _exit(EXIT_AGENT_CRASHED)


def _exit(code: int) -> NoReturn:
    logging.shutdown()
    os._exit(code)


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    """Run until SIGTERM/SIGINT (exit 0) or a crash (non-zero). Never returns.

    The model and device are checked first (the batch process loads the model), so a worker
    that cannot serve says so at once instead of waiting for a broker.
    """
    mode.loop.use(settings.worker.event_loop)
    batch = BatchProcess(settings, loglevel)
    version = batch.start()
    try:
        ensure_worker_topics(settings)
        health = WorkerHealth(HEARTBEAT_TIMEOUT_S, batch.alive)
        health.model_loaded(version)
        metrics.WORKER_REGISTRY.register(ChildMetrics(batch.endpoint_port))
        app = Worker(settings, batch, health).app
        routes = {"/healthz": health.live, "/readyz": health.ready}
        endpoints.serve(settings.metrics, settings.metrics.port, metrics.WORKER_REGISTRY, routes)
        faust.Worker(app, loglevel=loglevel, redirect_stdouts=False).execute_from_commandline()
    finally:
        batch.close()
