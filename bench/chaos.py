"""Reliability benchmark: real worker processes under kill -9, junk, a broker restart and a
rebalance, each compared with a clean uninterrupted run on the same clicks.

    glintstream bench chaos                  # the full run (20 kills, 10,000 junk messages)
    python -m bench.chaos --kills 3 --junk 300

Cases, each on its own topics, consumer group and state directory (loopback only):

* clean: one worker, no faults: the reference states;
* (a) kill -9: the clicks are cut into ``kills + 1`` segments at seeded random points; a worker
  is killed once it has served a seeded random fraction of its segment, and restarted at once
  while the next segment is produced (so input also arrives during recovery);
* (b) junk: ``junk`` malformed messages of every kind (``bench/junk.py``) mixed into the stream;
  each must reach the DLQ with the reason the worker's parser gives, and no worker may exit;
* (c) broker restart: Tansu on its ``s3://`` engine against moto's S3 server, stopped and
  restarted on the same port mid-stream while input keeps coming;
* (d) rebalance: a second worker joins mid-stream and leaves again (1 -> 2 -> 1).

Afterwards every worker is stopped and the RocksDB of the last one (which then owns every
partition) is read: each user's record must equal the clean run's (``n`` and ring exactly, the
state vector to ``VEC_TOL``), ``n`` must equal the acked clicks produced for the user, and every
acked click must have at least one recommendation. A worker that exits on its own is a crash:
it is counted and restarted, so one run reports all of them.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.chaos_case import (
    EVENTS,
    MAX_CLICK_BYTES,
    CaseResult,
    CaseRun,
    ChaosConfig,
)
from bench.junk import JunkMaker
from bench.s3 import MotoS3, S3rver
from model.checkpoint import save_checkpoint
from model.data import SequenceData, load_dataset, synthetic
from model.glintru import GlintRUConfig, build_glintru
from stream.broker import Broker
from stream.user_record import UserRecord

log = logging.getLogger(__name__)

FRACTION_RANGE = (0.1, 0.9)  # where in its segment a fault strikes (seeded)
BROKER_DOWN_S = 3.0  # long enough for the worker's fetches, commits and sends to fail and retry
RESTART_SPREAD_S = 15.0  # case (c) produces its second half over this long...
RESTART_AT = 0.2  # ...and stops the broker this far into it
# On s3:// Tansu answers a Fetch with what it has read from S3 when the wait is over: at the
# worker's default 10 ms that is nothing, and a worker that must read old data starves.
S3_FETCH_MAX_WAIT_MS = 500


# -- data and model -----------------------------------------------------------------------------


def load_events(config: ChaosConfig) -> tuple[list[str], list[tuple[float, str, int]]]:
    """(vocab, clicks in time order) of the configured dataset."""
    data: SequenceData
    if config.dataset == "synthetic":
        data = synthetic(
            num_users=config.users,
            num_items=config.items,
            min_len=config.min_len,
            max_len=config.max_len,
            seed=config.seed,
        )
    else:
        data = load_dataset(config.dataset)
    assert data.timestamps is not None, f"{config.dataset} has no timestamps to replay"
    events = sorted(
        (float(t), user, int(i))
        for user, seq, ts in zip(data.users, data.sequences, data.timestamps)
        for i, t in zip(seq, ts)
    )
    return data.vocab, events[: config.max_clicks]


def write_checkpoint(directory: Path, vocab: list[str], config: ChaosConfig) -> None:
    torch.manual_seed(config.seed)
    model_config = GlintRUConfig(
        num_items=len(vocab) - 1,
        hidden_size=config.hidden,
        n_heads=2,
        max_len=config.window,
        variant=config.variant,  # type: ignore[arg-type]
    )
    save_checkpoint(
        directory,
        build_glintru(model_config).eval(),
        kind="glintru",
        config=model_config,
        vocab=vocab,
        dataset=config.dataset,
        metrics={},
    )


def cut(events: EVENTS, pieces: int, rng: random.Random) -> list[EVENTS]:
    """``events`` in ``pieces`` consecutive segments at distinct random points."""
    points = sorted(rng.sample(range(1, len(events)), pieces - 1))
    bounds = [0, *points, len(events)]
    return [events[a:b] for a, b in zip(bounds, bounds[1:])]


# -- the cases ----------------------------------------------------------------------------------


@dataclass
class Bench:
    config: ChaosConfig
    root: Path
    checkpoint: Path
    vocab: list[str]
    events: list[tuple[float, str, int]]

    def case(self, name: str, bootstrap: str, **worker_settings: object) -> CaseRun:
        return CaseRun(
            name, bootstrap, self.root, self.checkpoint, self.vocab, self.config, worker_settings
        )

    def rng(self, case: str) -> random.Random:
        """Each case its own seeded stream: the same faults whatever else runs."""
        return random.Random(f"{self.config.seed}:{case}")


def fraction(rng: random.Random) -> float:
    return rng.uniform(*FRACTION_RANGE)


def run_clean(bench: Bench, bootstrap: str) -> tuple[dict[str, UserRecord], CaseResult]:
    run = bench.case("clean", bootstrap)
    run.start("w1")
    run.produce(bench.events)
    return run.finish(None, "w1")


def run_kills(bench: Bench, bootstrap: str, clean: dict[str, UserRecord]) -> CaseResult:
    run = bench.case("kill", bootstrap)
    run.name = f"(a) {bench.config.kills} x kill -9"
    run.start("w1")
    rng = bench.rng("kill")
    segments = cut(bench.events, bench.config.kills + 1, rng)
    before = 0
    for segment in segments[:-1]:
        target = before + int(fraction(rng) * len(segment))
        with run.producing(segment):
            run.wait_served(target, f"kill at {target}")
            run.kill9("w1")
            run.start("w1", wait_ready=False)  # input keeps arriving during the restart
        before += len(segment)
    run.produce(segments[-1])
    return run.finish(clean, "w1")[1]


def run_junk(bench: Bench, bootstrap: str, clean: dict[str, UserRecord]) -> CaseResult:
    run = bench.case("junk", bootstrap)
    run.name = f"(b) {bench.config.junk} junk messages"
    users = sorted({user for _, user, _ in bench.events})
    maker = JunkMaker(users, bench.vocab[1:], MAX_CLICK_BYTES, bench.config.seed)
    junk = maker.make(bench.config.junk)
    run.start("w1")
    run.produce(bench.events, junk)
    return run.finish(clean, "w1")[1]


def run_broker_restart(bench: Bench, clean: dict[str, UserRecord]) -> CaseResult:
    root = bench.root / f"tansu-{bench.config.restart_engine}"
    with ExitStack() as stack:
        env, engine = dict(os.environ), "memory://tansu/"
        if bench.config.restart_engine == "s3":
            s3 = stack.enter_context(s3_server(bench.config, root))
            env, engine = {**env, **s3.tansu_env()}, s3.storage_engine
        broker = stack.enter_context(Broker(0, root, storage_engine=engine, env=env))
        run = bench.case(
            "broker", broker.bootstrap_servers, worker_fetch_max_wait_ms=S3_FETCH_MAX_WAIT_MS
        )
        run.name = f"(c) broker restart ({bench.config.restart_engine})"
        run.start("w1")
        rng = bench.rng("broker")
        first, second = cut(bench.events, 2, rng)
        run.produce(first)
        run.wait_served(int(fraction(rng) * len(first)), "before the broker restart")
        # The second half keeps coming before, during and after the outage.
        with run.producing(second, spread_s=RESTART_SPREAD_S):
            time.sleep(RESTART_SPREAD_S * RESTART_AT)
            broker.stop()
            time.sleep(BROKER_DOWN_S)
            broker.start()  # same port: clients reconnect to the address they know
        return run.finish(clean, "w1")[1]


def s3_server(config: ChaosConfig, root: Path) -> MotoS3:
    if config.s3rver is None:
        return MotoS3(root / "s3.log")
    return S3rver(root / "s3.log", Path(config.s3rver), root / "s3-data")


def run_rebalance(bench: Bench, bootstrap: str, clean: dict[str, UserRecord]) -> CaseResult:
    run = bench.case("rebalance", bootstrap)
    run.name = "(d) workers 1 -> 2 -> 1"
    run.start("w1")
    rng = bench.rng("rebalance")
    first, second, third = cut(bench.events, 3, rng)
    with run.producing(first):
        run.wait_served(int(fraction(rng) * len(first)), "before w2 joins")
        w2 = run.start("w2", wait_ready=False)
    with run.producing(second):
        run.wait(lambda: "partitions [" in w2.log(), "w2 gets partitions")
        run.wait_served(len(first) + int(fraction(rng) * len(second)), "before w2 leaves")
        run.stop("w2")
    run.produce(third)
    return run.finish(clean, "w1")[1]


def run_chaos(
    config: ChaosConfig, root: Path | None = None, bootstrap: str | None = None
) -> list[CaseResult]:
    """Every configured case; on the broker at ``bootstrap``, else on a private one (the
    broker-restart case always gets its own, on the s3:// engine)."""
    root = root or Path(tempfile.mkdtemp(prefix="glintstream-chaos-"))
    vocab, events = load_events(config)
    write_checkpoint(root / "checkpoint", vocab, config)
    bench = Bench(config, root, root / "checkpoint", vocab, events)
    log.info("chaos: %d clicks of %s, work dir %s", len(events), config.dataset, root)
    results: list[CaseResult] = []

    def done(result: CaseResult) -> None:
        # one line per case as it ends: a long run shows progress and keeps partial figures
        log.info("case done: %s", table([result]).splitlines()[2])
        results.append(result)

    with ExitStack() as stack:
        if bootstrap is None:
            bootstrap = stack.enter_context(Broker(0, root / "tansu")).bootstrap_servers
        clean, clean_result = run_clean(bench, bootstrap)
        done(clean_result)
        runners: dict[str, Callable[[], CaseResult]] = {
            "kill": lambda: run_kills(bench, bootstrap, clean),
            "junk": lambda: run_junk(bench, bootstrap, clean),
            "broker": lambda: run_broker_restart(bench, clean),
            "rebalance": lambda: run_rebalance(bench, bootstrap, clean),
        }
        chosen = [runners[name] for name in runners if name in config.cases]
        if config.parallel:  # the cases share nothing but the broker: overlap their waits
            with ThreadPoolExecutor(len(chosen) or 1) as pool:
                for result in pool.map(lambda run: run(), chosen):
                    done(result)
        else:
            for run in chosen:
                done(run())
    return results


# -- report -------------------------------------------------------------------------------------

COLUMNS: tuple[str, ...] = (
    "case",
    "clicks",
    "lost by broker",
    "lost",
    "doubly applied",
    "no rec",
    "states != clean",
    "max |dvec|",
    "crashes",
    "DLQ",
    "time",
)


def table(results: list[CaseResult]) -> str:
    rows: list[tuple[str, ...]] = [COLUMNS]
    for r in results:
        dlq = "-" if r.injected is None else f"{r.dlq}/{r.injected}"
        rows.append(
            (
                r.case,
                str(r.clicks),
                str(r.broker_lost),
                str(r.lost),
                str(r.double),
                str(r.no_rec),
                str(r.mismatched),
                f"{r.max_diff:.1e}" if r.case != "clean" else "-",
                str(r.crashes),
                dlq,
                f"{r.seconds:.0f} s",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [
        " | ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
        )
        for row in rows
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    for r in results:
        if r.dlq_reasons:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(r.dlq_reasons.items()))
            lines.append(f"{r.case}: DLQ by reason: {reasons}; wrong reason {r.dlq_wrong_reason}")
        if r.changelog_holes:
            lines.append(f"{r.case}: the broker lost {r.changelog_holes} state changelog records")
        if r.unacked:
            lines.append(f"{r.case}: {r.unacked} produce calls never acked (not counted as lost)")
        if r.timed_out:
            lines.append(f"{r.case}: timed out waiting for {', '.join(r.timed_out)}")
        for cause, count in r.crash_causes.items():
            lines.append(f"{r.case}: {count} crash(es): {cause}")
        if r.crash_log:
            lines.append(f"{r.case}: crashed workers' logs in {r.crash_log}")
    return "\n".join(lines)


def targets_met(results: list[CaseResult]) -> bool:
    return all(r.passed for r in results)


def worker_targets_met(results: list[CaseResult]) -> bool:
    return all(r.worker_passed for r in results)


if __name__ == "__main__":
    from bench.cli import chaos

    chaos()
