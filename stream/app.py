"""The faust app of `glintstream worker`: one agent that feeds micro-batches to the processor.

faust does what it is good at here: group membership, fetching, offset commits, the worker
lifecycle and signals. It keeps no state: per-user state is ours (``stream.state`` +
``stream.changelog``), because the batch needs its own write order (outputs acked before state
is written), records smaller than the local ones, and offsets we can trust on this broker (see
README "Worker" for why not a faust Table).

Settings that matter on the embedded broker (Tansu): at_least_once (its transactions are broken),
a short session timeout (it holds a JoinGroup for half of it), earliest offset reset (its
ListOffsets(LATEST) under-reports), no web server (two workers on one host would clash).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import faust
import torch
from faust.types import TP

from stream.changelog import ChangelogReader, ensure_worker_topics
from stream.metrics import serve_metrics
from stream.processor import ClickProcessor, RawClick
from stream.publisher import Publisher
from stream.scoring import ModelSource
from stream.settings import Settings
from stream.state import StateStore, StoreOptions

log = logging.getLogger(__name__)

# A crashed agent must take the process down (a supervisor restarts it) instead of leaving a
# worker that holds partitions and never commits (faust-streaming #175). The state is
# crash-consistent by construction, so dying at once is safe; the tests kill -9 anyway.
EXIT_AGENT_CRASHED = 70  # EX_SOFTWARE


def build_processor(settings: Settings) -> ClickProcessor:
    torch.set_num_threads(settings.worker_torch_threads)
    models = ModelSource(
        settings.registry_dir,
        settings.checkpoint_dir,
        settings.torch_device(),
        settings.top_k,
        settings.mask_seen,
    )
    options = StoreOptions(
        settings.rocksdb_block_cache_mb,
        settings.rocksdb_write_buffer_mb,
        settings.rocksdb_max_write_buffers,
    )
    return ClickProcessor(
        settings,
        StateStore(settings.state_dir / settings.worker_id / "users", options),
        Publisher(settings),
        ChangelogReader(settings),
        models,
    )


def create_app(settings: Settings, processor: ClickProcessor) -> faust.App:
    app = faust.App(
        settings.worker_app_id,
        broker=settings.faust_broker_url(),
        broker_credentials=settings.faust_credentials(),
        processing_guarantee="at_least_once",
        broker_session_timeout=settings.worker_session_timeout_s,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=settings.worker_commit_interval_s,
        topic_partitions=settings.partitions,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        web_enabled=False,
        # faust keeps nothing there (no tables), but two workers must never share a datadir
        datadir=str(settings.state_dir / settings.worker_id / "faust"),
    )
    clicks = app.topic(
        settings.topic_clicks,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",  # we parse ourselves: junk must never reach a codec
    )
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="glintstream-batch")
    _resume_from_applied_offsets(app, settings.topic_clicks, processor, executor)

    @app.timer(settings.model_check_interval_s)
    async def refresh_model() -> None:
        # on the batch thread, so a swap always falls between two batches
        await asyncio.get_running_loop().run_in_executor(executor, processor.refresh_model)

    @app.agent(clicks)
    async def process_clicks(stream: faust.StreamT) -> None:
        within = settings.batch_max_ms / 1000
        try:
            async for events in stream.take_events(settings.batch_max_size, within):
                batch = [
                    RawClick(e.message.partition, e.message.offset, e.message.key, e.message.value)
                    for e in events
                ]
                assigned = {
                    tp.partition
                    for tp in app.consumer.assignment()
                    if tp.topic == settings.topic_clicks
                }
                job = executor.submit(processor.process, batch, assigned)
                try:
                    seeks = await asyncio.wrap_future(job)
                except asyncio.CancelledError:
                    # Shutting down: let the batch finish, so its clicks (acked by faust on the
                    # way out) are really applied; the wait is bounded by the delivery timeout.
                    job.result()
                    raise
                for partition, offset in seeks.items():
                    await app.consumer.seek(TP(settings.topic_clicks, partition), offset)
        except asyncio.CancelledError:
            raise
        except BaseException:
            log.critical("the click agent crashed; exiting for a restart", exc_info=True)
            logging.shutdown()
            os._exit(EXIT_AGENT_CRASHED)

    return app


def _resume_from_applied_offsets(
    app: faust.App, topic: str, processor: ClickProcessor, executor: ThreadPoolExecutor
) -> None:
    """Make every rebalance resume each clicks partition after its last *applied* offset.

    faust seeks assigned partitions to their committed offsets (``perform_seek``) while the
    flow is stopped, after every rebalance. We wrap its ``seek_to_committed`` on our consumer:
    catch the partitions' state up from the changelog (off the loop), then seek to the stored
    applied offset + 1 and report that as "committed", so faust's ack bookkeeping starts there.
    """
    consumer = app.consumer
    seek_to_committed = consumer.seek_to_committed

    async def seek_to_applied() -> Mapping[TP, int]:
        committed = dict(await seek_to_committed())
        ours = {tp for tp in consumer.assignment() if tp.topic == topic}
        if not ours:
            return committed
        loop = asyncio.get_running_loop()
        resume = await loop.run_in_executor(
            executor, processor.prepare, {tp.partition for tp in ours}
        )
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
    ensure_worker_topics(settings)
    processor = build_processor(settings)
    serve_metrics(settings.metrics_host, settings.metrics_port)
    app = create_app(settings, processor)
    worker = faust.Worker(app, loglevel=loglevel, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    finally:
        processor.close()
