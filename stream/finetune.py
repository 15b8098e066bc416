"""`glintstream finetune`: keep the served model learning from the click stream.

The job has its own consumer group on `clicks` and its own store of recent per-user clicks
(``stream.finetune_store``). Every ``every_clicks`` new clicks, or ``every_s`` seconds after the
last run if any click came in, it runs once (``FinetuneJob.run_once``):

1. load the current model: the model store's current version, else the fallback checkpoint;
2. grow its vocabulary with the new items of the stream (``model.finetune.grow_vocabulary``);
3. hold out the most recent users' last clicks, fine-tune a copy for a bounded number of steps;
4. gate: publish only if the new model's holdout NDCG@10 is not worse than the current one's;
5. publish it (``stream.releases``: the registry, with the gate figures in the version's entry,
   then the model store, then `model-updates`); workers swap between batches. While an operator
   pins a version (`glintstream model pin`, `rollback`), a candidate that passes is held instead.

Every run, published, held, rejected or skipped, is logged with its figures and counted in
metrics.
The fine-tune runs on the consumer thread: librdkafka keeps the group session alive from its own
thread, and a run is bounded by its step count, well under the consumer's max poll interval.
"""

from __future__ import annotations

import logging
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch
from confluent_kafka import Consumer, KafkaError

from model.checkpoint import save_checkpoint
from model.finetune import (
    GATE_METRIC,
    K,
    finetune,
    gate,
    graft_new_items,
    grow_vocabulary,
    holdout_metrics,
    item_contexts,
    new_items_in,
    replay_mix,
    split_holdout,
    to_indices,
    weights_finite,
)
from model.glintru import GlintRU
from model.new_items import FRESH_ITEMS, NewItemInit, add_fresh, carry_fresh, fresh_items
from model.registry import RegistryPinned
from stream import endpoints, metrics
from stream.clicks import Click, parse_click
from stream.finetune_store import RecentClicks, StoredClick
from stream.messages import RunOutcome
from stream.model_source import ModelSource
from stream.releases import Releases
from stream.settings import Settings
from stream.topics import ensure_topics

log = logging.getLogger(__name__)

CONSUME_BATCH = 500  # messages per consume() call
POLL_S = 0.5  # consume() timeout: how often the stop flag and the schedule are checked
HR, NDCG = f"HR@{K}", GATE_METRIC

# The job's metrics live in stream.metrics (FINETUNE_*), served from FINETUNE_REGISTRY.


@dataclass
class RunResult:
    outcome: RunOutcome
    parent: int | None = None  # the version fine-tuned from (None: the fallback checkpoint)
    version: int | None = None  # the published version
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class Carried:
    """A rejected candidate the next run trains on from, instead of the served model: training
    is kept, only publishing is gated. Valid while ``parent`` is still what the workers serve."""

    model: GlintRU
    vocab: list[str]
    parent: int | None
    added: list[str]  # items it added to the parent's vocabulary
    runs: int  # rejected runs it went through


def job_dir(settings: Settings) -> Path:
    """The job's own directory: its store and the checkpoints it stages."""
    return settings.paths.state_dir / "finetune"


def recent_clicks(settings: Settings) -> RecentClicks:
    """The job's store of recent clicks (one process at a time may open it)."""
    options = settings.finetune
    return RecentClicks(
        job_dir(settings) / "recent",
        options.user_clicks,
        options.max_users,
        settings.rocksdb.model_copy(update={"block_cache_mb": options.block_cache_mb}),
    )


class FinetuneJob:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.options = options = settings.finetune
        self.root = job_dir(settings)
        self.releases = Releases(settings, keep=options.keep_versions)
        self.models = ModelSource.from_settings(settings, "finetune")
        self.store = recent_clicks(settings)
        self.device = settings.torch_device()
        self.runs = 0
        self.trained_tick = 0  # the store's tick at the last run that trained: who is recent
        self.carried: Carried | None = None

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------ one run
    def load_current(self) -> tuple[GlintRU, dict[str, Any], int | None]:
        """(model, manifest, registry version or None for the fallback checkpoint)."""
        loaded = self.models.load(self.device)
        if not isinstance(loaded.model, GlintRU):
            raise TypeError(
                f"the fine-tune job trains GLINT-RU models, not {loaded.manifest['kind']}"
            )
        version = loaded.served.version if loaded.served.from_registry else None
        return loaded.model, loaded.manifest, version

    def run_once(self) -> RunResult:
        """One fine-tune run on the stored clicks; logged and counted whatever the outcome."""
        started = time.monotonic()
        self.runs += 1
        try:
            result = self._run()
        except Exception:
            log.exception("fine-tune run %d failed", self.runs)
            result = RunResult(RunOutcome.FAILED)
        result.seconds = round(time.monotonic() - started, 2)
        self._report(result)
        return result

    def _run(self) -> RunResult:
        opts = self.options
        torch.set_num_threads(opts.torch_threads)
        model, manifest, parent = self.load_current()
        carried, self.carried = self.carried, None
        if carried is not None and (carried.parent != parent or carried.runs >= opts.carry_runs):
            carried = None  # another version is served, or it has failed the gate enough times
        start, start_vocab = (
            (model, manifest["vocab"]) if carried is None else (carried.model, carried.vocab)
        )
        raw = [items for _, items in self.store.sequences()]  # least recently active first
        recent, tick = self.store.active_since(self.trained_tick), self.store.tick
        added = new_items_in(start_vocab, raw, opts.new_item_min_clicks)
        contexts = (
            item_contexts(start, start_vocab, raw, added)
            if opts.new_item_init is NewItemInit.CONTEXT
            else None
        )
        grown, vocab = grow_vocabulary(
            start, start_vocab, added, seed=opts.seed + self.runs, contexts=contexts
        )
        added = [*(carried.added if carried else []), *added]  # since the served version
        everyone, holdout = split_holdout(to_indices(raw, vocab), opts.holdout_users)
        rng = np.random.default_rng(opts.seed + self.runs)
        one_pass = opts.steps * opts.batch_size
        mixed = replay_mix(everyone, recent, opts.recent_share, rng, at_least=one_pass)
        train = [s for s in mixed if len(s) >= 2]
        figures: dict[str, Any] = {
            "holdout_users": len(holdout),
            "train_users": len(train),
            "new_items": len(added),
            "recent_users": recent,
            "num_items": grown.num_items,
            "steps": opts.steps,
            "lr": opts.lr,
            "target_weighting": opts.target_weighting.value,
            "tolerance": opts.tolerance,
            "carried_runs": 0 if carried is None else carried.runs,
        }
        if len(holdout) < opts.min_holdout_users:
            return RunResult(RunOutcome.SKIPPED, parent, figures=figures)
        tuned = finetune(
            grown,
            train,
            opts.steps,
            opts.lr,
            batch_size=opts.batch_size,
            seed=opts.seed,
            weighting=opts.target_weighting,
        )
        self.trained_tick = tick  # a run skipped, or failed before this, leaves them recent
        # each side judged on what the workers would rank: its fresh items are not
        fresh = carry_fresh(manifest, added, opts.fresh_versions)
        index = {item: i for i, item in enumerate(vocab)}
        unranked = [index[i] for i in chain(*fresh)]
        current = holdout_metrics(model, holdout, [index[i] for i in fresh_items(manifest)])
        new = holdout_metrics(tuned, holdout, unranked)
        finite = weights_finite(tuned)
        figures.update(
            {
                f"current_{HR}": current[HR],
                f"current_{NDCG}": current[NDCG],
                f"new_{HR}": new[HR],
                f"new_{NDCG}": new[NDCG],
                "finite": finite,
            }
        )
        if not (finite and gate(new, current, opts.tolerance)):
            if not finite:
                return RunResult(RunOutcome.REJECTED, parent, figures=figures)
            runs = 1 if carried is None else carried.runs + 1
            self.carried = Carried(tuned, vocab, parent, added, runs)
            if added:  # its new items may still go out, on the served weights
                return self._publish_new_items(model, manifest, parent, holdout, current, figures)
            return RunResult(RunOutcome.REJECTED, parent, figures=figures)
        version = self._publish(tuned, vocab, manifest, parent, figures, fresh)
        if version is None:
            return RunResult(RunOutcome.HELD, parent, figures=figures)
        return RunResult(RunOutcome.PUBLISHED, parent, version, figures)

    def _publish_new_items(
        self,
        served: GlintRU,
        manifest: dict[str, Any],
        parent: int | None,
        holdout: list[np.ndarray],
        current: dict[str, float],
        figures: dict[str, Any],
    ) -> RunResult:
        """The rejected (now carried) candidate's new items on the served weights, if that
        passes the gate against the served model's ``current`` figures: a new item reaches users
        at the next run after its first click, not when some candidate's weights pass. The
        candidate is still carried, from the version published."""
        carried = self.carried
        assert carried is not None
        grafted, vocab = graft_new_items(served, manifest["vocab"], carried.model, carried.vocab)
        fresh = add_fresh(manifest, carried.added, self.options.fresh_versions)
        index = {item: i for i, item in enumerate(vocab)}
        alone = holdout_metrics(grafted, holdout, [index[i] for i in chain(*fresh)])
        figures.update({f"items_{HR}": alone[HR], f"items_{NDCG}": alone[NDCG]})
        if not gate(alone, current, self.options.tolerance):
            return RunResult(RunOutcome.REJECTED, parent, figures=figures)
        version = self._publish(grafted, vocab, manifest, parent, figures, fresh)
        if version is None:  # pinned: nothing goes out
            return RunResult(RunOutcome.REJECTED, parent, figures=figures)
        # the served version now holds its items: they are no longer the candidate's own
        self.carried = replace(carried, parent=version, added=[])
        return RunResult(RunOutcome.ITEMS, parent, version, figures)

    def _publish(
        self,
        model: GlintRU,
        vocab: list[str],
        manifest: dict[str, Any],
        parent: int | None,
        figures: dict[str, Any],
        fresh: list[list[str]],
    ) -> int | None:
        """Stage a checkpoint and publish it: its version, or None when a version is pinned
        (the reason in ``figures["held"]``)."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = tempfile.mkdtemp(prefix="staging-", dir=self.root)
        try:
            save_checkpoint(
                staging,
                model,
                kind="glintru",
                config=model.config,
                vocab=vocab,
                dataset=manifest.get("dataset", ""),
                metrics={"finetune": figures},
                extra={"finetuned_from": parent, FRESH_ITEMS: fresh},
            )
            note = (
                f"finetune run {self.runs}: {figures['train_users']} users, "
                f"{figures['steps']} steps, +{figures['new_items']} items"
                + (", the items alone on the served weights" if f"items_{NDCG}" in figures else "")
            )
            info = self.releases.publish(
                staging, parent=parent, gate=figures, note=note, unless_pinned=True
            )
        except RegistryPinned as e:
            figures["held"] = str(e)
            return None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return info.version

    def _report(self, result: RunResult) -> None:
        metrics.record_finetune_run(result.outcome)
        metrics.FINETUNE_SECONDS.set(result.seconds)
        metrics.FINETUNE_USERS.set(len(self.store))
        f = result.figures
        if "num_items" in f:
            metrics.FINETUNE_VOCAB_ITEMS.set(f["num_items"])
        for model in ("current", "new"):
            if f"{model}_{NDCG}" in f:
                metrics.FINETUNE_HR.labels(model).set(f[f"{model}_{HR}"])
                metrics.FINETUNE_NDCG.labels(model).set(f[f"{model}_{NDCG}"])
        if result.version is not None:
            metrics.FINETUNE_VERSION.set(result.version)
        parent = "fallback checkpoint" if result.parent is None else f"v{result.parent}"
        where = f" v{result.version}" if result.version is not None else ""
        scores = (
            f"NDCG@{K} {f[f'current_{NDCG}']:.4f} -> {f[f'new_{NDCG}']:.4f}, "
            f"HR@{K} {f[f'current_{HR}']:.4f} -> {f[f'new_{HR}']:.4f}, "
            if f"new_{NDCG}" in f
            else ""
        ) + (
            f"its new items alone NDCG@{K} {f[f'items_{NDCG}']:.4f}, "
            if f"items_{NDCG}" in f
            else ""
        )
        log.info(
            "fine-tune run %d: %s%s (from %s): %s%s users (holdout %s), %s steps, "
            "+%s new items, %.1f s",
            self.runs,
            result.outcome,
            where,
            parent,
            scores,
            f.get("train_users", "?"),
            f.get("holdout_users", "?"),
            f.get("steps", "?"),
            f.get("new_items", "?"),
            result.seconds,
        )

    # ------------------------------------------------------------------ the stream
    def consume(self, should_stop: Callable[[], bool]) -> None:
        """Consume clicks and run on schedule until ``should_stop()``."""
        s = self.settings
        ensure_topics(s, [s.topics.clicks], s.topics.partitions)
        consumer = Consumer(
            s.kafka.confluent_consumer_config(
                self.options.group_id, **{"enable.auto.commit": False}
            )
        )
        consumer.subscribe([s.topics.clicks])
        log.info(
            "fine-tune job: group %s on %s, a run every %d clicks or %.0f s",
            self.options.group_id,
            s.topics.clicks,
            self.options.every_clicks,
            self.options.every_s,
        )
        pending, last_run = 0, time.monotonic()
        try:
            while not should_stop():
                messages = consumer.consume(CONSUME_BATCH, POLL_S)
                if messages:
                    pending += self._store(messages)
                    consumer.commit(asynchronous=True)  # after the store: at-least-once
                elapsed = time.monotonic() - last_run
                if pending >= self.options.every_clicks or (
                    pending and elapsed >= self.options.every_s
                ):
                    self.run_once()
                    pending, last_run = 0, time.monotonic()
        finally:
            consumer.close()

    def _store(self, messages: list[Any]) -> int:
        clicks = []
        for m in messages:
            if m.error() is not None:
                if m.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", m.error())
                continue
            parsed = parse_click(m.value(), m.key(), self.settings.worker.max_click_bytes)
            if not isinstance(parsed, Click):
                metrics.FINETUNE_CLICKS.labels("rejected").inc()
                continue
            clicks.append(StoredClick(m.partition(), m.offset(), parsed.user_id, parsed.item_id))
        stored, duplicates = self.store.add(clicks)
        metrics.FINETUNE_CLICKS.labels("stored").inc(stored)
        metrics.FINETUNE_CLICKS.labels("duplicate").inc(duplicates)
        return stored


def run_finetune(settings: Settings) -> None:
    """The `glintstream finetune` process: serve metrics, consume until SIGTERM/SIGINT."""
    torch.set_num_threads(settings.finetune.torch_threads)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        # finish the batch (or run) in hand, then leave the group cleanly
        signal.signal(signum, lambda *_: stop.set())
    endpoints.serve(settings.metrics, settings.finetune.metrics_port, metrics.FINETUNE_REGISTRY)
    job = FinetuneJob(settings)
    try:
        job.consume(stop.is_set)
    finally:
        job.close()
    log.info("fine-tune job stopped after %d runs", job.runs)
