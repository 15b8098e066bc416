"""`glintstream bench ...`: benchmark commands that print their figures."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from types import FrameType
from typing import NoReturn

import click


@click.group()
def bench() -> None:
    """Benchmarks (run by hand; figures go to docs/)."""
    # A benchmark owns processes (a broker, workers, a fine-tune job) that its `finally` blocks
    # stop: `kill` must unwind through them as Ctrl-C does, not leave them running.
    signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum: int, _frame: FrameType | None) -> NoReturn:
    raise SystemExit(128 + signum)


@bench.group()
def model() -> None:
    """Model training and inference cost."""


@model.command()
@click.option("--dataset", default="ml-100k", show_default=True)
@click.option("--timed-batches", type=int, default=3, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
def speedup(dataset: str, timed_batches: int, threads: int) -> None:
    """One-pass prefix training epoch vs RecBole-style per-prefix samples (extrapolated)."""
    import torch

    from bench.model import speedup as run

    torch.set_num_threads(threads)
    r = run(dataset, timed_batches=timed_batches)
    click.echo(f"dataset {dataset}: {r.positions} prefix samples per epoch")
    click.echo(f"one-pass epoch            {r.one_pass_epoch_s:10.1f} s (measured)")
    click.echo(
        f"per-prefix batch of 2048  {r.per_prefix_batch_s:10.2f} s (mean of {timed_batches})"
    )
    click.echo(
        f"per-prefix epoch          {r.per_prefix_epoch_s:10.1f} s ({r.per_prefix_batches} batches, extrapolated)"
    )
    click.echo(f"speed-up                  {r.speedup:10.1f}x")


@model.command()
@click.option("--dataset", default="ml-1m", show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
def inference(dataset: str, threads: int) -> None:
    """Per-user inference time: full forward vs per-click step."""
    import torch

    from bench.model import inference as run

    torch.set_num_threads(threads)
    for row in run(dataset):
        click.echo(
            json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
        )


@model.command()
@click.option("--dataset", default="ml-1m", show_default=True)
@click.option("--window-stride", type=int, help="As in `glintstream train` [L].")
def windows(dataset: str, window_stride: int | None) -> None:
    """Context lost by the training windows against the official sliding window."""
    from bench.model import window_deviation

    click.echo(json.dumps(window_deviation(dataset, window_stride)))


@model.command()
@click.argument("checkpoints", nargs=-1, type=click.Path(exists=True, path_type=Path))
def table(checkpoints: tuple[Path, ...]) -> None:
    """Markdown rows (test HR@10 / NDCG@10 per protocol) for trained checkpoints."""
    from bench.model import results_row

    click.echo(
        "| dataset | model | full, seen masked | full | pop100 | best epoch | epochs | s/epoch |"
    )
    click.echo("|---|---|---|---|---|---|---|---|")
    for checkpoint in checkpoints:
        click.echo(results_row(checkpoint))


@bench.command()
@click.option("--steps", type=int, default=8, show_default=True)
@click.option("--batches-per-step", type=int, default=5_000, show_default=True)
@click.option("--samples", type=int, default=50, show_default=True, help="timed messages each")
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path),
    default=Path(".run/bench-broker"),
    show_default=True,
)
def broker(steps: int, batches_per_step: int, samples: int, work_dir: Path) -> None:
    """The embedded broker's Fetch and ack latency vs record batches in a partition."""
    from bench.broker_latency import (
        LONG_FETCH_WAIT_MS,
        QUANTILES,
        WORKER_FETCH_WAIT_MS,
        run,
    )

    q = " / ".join(f"p{q}" for q in QUANTILES)
    short, long = WORKER_FETCH_WAIT_MS, LONG_FETCH_WAIT_MS
    click.echo(
        f"| batches in the partition | produce ack ms ({q}) | produce->consume ms ({q}), "
        f"wait {short} ms | last record fetched in (ms), wait {short} / {long} ms |"
    )
    click.echo("|---:|---|---|---|")

    def ms(value: float | None) -> str:
        return "nothing" if value is None else f"{value:.1f}"

    for step in run(work_dir, steps, batches_per_step, samples):
        ack = " / ".join(f"{v:.2f}" for v in step.ack_ms)
        e2e = "nothing" if step.e2e_ms is None else " / ".join(f"{v:.2f}" for v in step.e2e_ms)
        fetch = " / ".join(ms(step.fetch_ms[w]) for w in (short, long))
        click.echo(f"| {step.batches:,} | {ack} | {e2e} | {fetch} |")


@bench.command()
@click.option("--dataset", default="synthetic", show_default=True, help="replayed in time order")
@click.option("--max-clicks", type=int, default=20_000, show_default=True)
@click.option("--kills", type=int, default=20, show_default=True, help="case (a): kill -9 count")
@click.option("--junk", type=int, default=10_000, show_default=True, help="case (b): messages")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--cases",
    default="kill,junk,broker,rebalance",
    show_default=True,
    help="comma-separated subset (the clean reference run always runs)",
)
@click.option("--step-timeout", type=float, default=180.0, show_default=True)
@click.option(
    "--restart-engine",
    type=click.Choice(["s3", "memory"]),
    default="s3",
    show_default=True,
    help="Tansu engine of case (c); memory loses everything on restart",
)
@click.option("--s3rver", help="case (c): path of an s3rver binary (npm) to use instead of moto")
@click.option("--work-dir", type=click.Path(path_type=Path), help="default: a fresh temp dir")
def chaos(
    dataset: str,
    max_clicks: int,
    kills: int,
    junk: int,
    seed: int,
    cases: str,
    step_timeout: float,
    restart_engine: str,
    s3rver: str | None,
    work_dir: Path | None,
) -> None:
    """Reliability: kill -9, junk, broker restart, 1->2->1 workers vs a clean run (bench/chaos.py)."""
    from bench.chaos import ChaosConfig, run_chaos, table, targets_met, worker_targets_met

    config = ChaosConfig(
        dataset=dataset,
        max_clicks=max_clicks,
        kills=kills,
        junk=junk,
        seed=seed,
        cases=tuple(c.strip() for c in cases.split(",") if c.strip()),
        step_timeout_s=step_timeout,
        restart_engine=restart_engine,
        s3rver=s3rver,
    )
    results = run_chaos(config, work_dir)
    click.echo(table(results))
    met = targets_met(results)
    click.echo(
        f"targets (0 lost, 0 doubly applied, 0 crashes, all junk dead-lettered): {'met' if met else 'NOT met'}"
    )
    if not met:
        worker_met = worker_targets_met(results)
        click.echo(
            "the worker's share (nothing the broker still holds lost, applied twice or "
            f"unserved; no crash; junk dead-lettered): {'met' if worker_met else 'NOT met'}"
        )
    raise SystemExit(0 if met else 1)


@bench.command()
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("checkpoints/ml-1m"),
    show_default=True,
    help="The served GLINT-RU checkpoint (streaming or faithful).",
)
@click.option(
    "--faithful-checkpoint",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("checkpoints/ml-1m-faithful"),
    show_default=True,
    help="Compared on online accuracy and throughput when it exists.",
)
@click.option(
    "--sasrec-checkpoint",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="SASRec for the recompute baseline (default: random weights; speed only).",
)
@click.option("--dataset", default="ml-1m", show_default=True)
@click.option(
    "--users", type=int, default=1000, show_default=True, help="Replay the first N users."
)
@click.option("--throughput-clicks", type=int, default=60_000, show_default=True)
@click.option("--recompute-clicks", type=int, default=5_000, show_default=True)
@click.option(
    "--rates", default="500,1000,2000", show_default=True, help="Offered rates (clicks/s)."
)
@click.option("--rate-seconds", type=float, default=15.0, show_default=True)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".run/bench-stream"),
    show_default=True,
    help="Broker, worker state and logs, raw latencies (latency.csv).",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("docs/figures/stream-latency.png"),
    show_default=True,
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="A worker setting for every worker run (e.g. batch_max_ms=5); defaults otherwise.",
)
@click.option("--quick", is_flag=True, help="The <= 1 minute version (fewer users and clicks).")
def stream(
    checkpoint: Path,
    faithful_checkpoint: Path,
    sasrec_checkpoint: Path | None,
    dataset: str,
    users: int,
    throughput_clicks: int,
    recompute_clicks: int,
    rates: str,
    rate_seconds: float,
    work_dir: Path,
    plot: Path,
    sets: tuple[str, ...],
    quick: bool,
) -> None:
    """The worker end to end: throughput, latency, CPU, memory, floors, online accuracy."""
    import logging

    from bench.stream import StreamBench, StreamBenchConfig, machine
    from stream.cli.context import parse_sets

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = StreamBenchConfig(
        checkpoint=checkpoint,
        faithful_checkpoint=faithful_checkpoint if faithful_checkpoint.is_dir() else None,
        sasrec_checkpoint=sasrec_checkpoint,
        dataset=dataset,
        users=users,
        throughput_clicks=throughput_clicks,
        recompute_clicks=recompute_clicks,
        rates=tuple(float(r) for r in rates.split(",")),
        rate_seconds=rate_seconds,
        work_dir=work_dir,
        plot=plot,
        worker_settings=parse_sets(sets),
    )
    result = StreamBench(config.quick() if quick else config).run()
    overrides = ", ".join(f"{k}={v}" for k, v in config.worker_settings.items()) or "none"
    click.echo(
        f"machine: {machine()}; checkpoint {checkpoint}; worker settings overridden: "
        f"{overrides}; raw latencies {work_dir}/latency.csv"
    )
    click.echo(result.table())
    if result.failed:
        raise SystemExit(1)


@bench.command()
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("checkpoints/ml-1m"),
    show_default=True,
)
@click.option("--dataset", default="ml-1m", show_default=True, help="clicks, in time order")
@click.option("--rate", type=float, default=1000.0, show_default=True, help="clicks/s")
@click.option("--minutes", type=int, default=30, show_default=True, help="rows of the table")
@click.option("--row-seconds", type=float, default=60.0, show_default=True)
@click.option("--kill-at", type=int, default=20, show_default=True, help="row; -1 = never")
@click.option("--partitions", type=int, help="of the worker's topics [its default]")
@click.option("--reader-fetch-wait-ms", type=int, default=100, show_default=True)
@click.option("--no-stall-check", is_flag=True, help="skip pausing the broker at the end")
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path),
    default=Path(".run/bench-soak"),
    show_default=True,
)
@click.option(
    "--plot",
    type=click.Path(path_type=Path),
    default=Path("docs/figures/soak.png"),
    show_default=True,
)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="A worker setting.")
@click.option("--quick", is_flag=True, help="<= 2 minutes: four 15 s rows at 200 clicks/s.")
def soak(
    checkpoint: Path,
    dataset: str,
    rate: float,
    minutes: int,
    row_seconds: float,
    kill_at: int,
    partitions: int | None,
    reader_fetch_wait_ms: int,
    no_stall_check: bool,
    work_dir: Path,
    plot: Path,
    sets: tuple[str, ...],
    quick: bool,
) -> None:
    """The whole system for N minutes at a fixed rate: every click answered? latency, memory."""
    import logging
    import shutil

    from bench.soak import Soak, SoakConfig
    from bench.stream import machine
    from stream.cli.context import parse_sets

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    shutil.rmtree(work_dir, ignore_errors=True)
    config = SoakConfig(
        checkpoint=checkpoint,
        dataset=dataset,
        rate=rate,
        rows=minutes,
        row_s=row_seconds,
        kill_row=None if kill_at < 0 else kill_at,
        partitions=partitions,
        reader_fetch_wait_ms=reader_fetch_wait_ms,
        stall_check=not no_stall_check,
        work_dir=work_dir,
        plot=plot,
        worker_settings=parse_sets(sets),
    )
    result = Soak(config.quick() if quick else config).run()
    click.echo(f"machine: {machine()}; raw rows {work_dir}/acks.csv, recs.csv, rows.csv")
    click.echo(result.table())
    if not all(met for _, _, met in result.verdicts()):
        raise SystemExit(1)


@bench.command()
@click.option("--dataset", default="ml-1m", show_default=True)
@click.option(
    "--fraction", type=float, default=0.8, show_default=True, help="T: this share of clicks."
)
@click.option(
    "--init-from",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The starting checkpoint (trained on clicks before T only); default: train one.",
)
@click.option("--train-minutes", type=float, default=30.0, show_default=True)
@click.option("--users", type=int, help="Only the first N users who click after T.")
@click.option("--slices", type=int, default=10, show_default=True)
@click.option("--oracle-slices", type=int, default=5, show_default=True)
@click.option("--oracle-epochs", type=float, default=1.0, show_default=True)
@click.option("--arms", help="Comma-separated: frozen, finetuned, oracle [all three].")
@click.option("--broker", help="Bootstrap servers of a running cluster (default: a private one).")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="A fine-tune job setting (e.g. steps=50); the job's defaults otherwise.",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".run/bench-online"),
    show_default=True,
    help="The stream, every arm's recommendations (JSON lines), logs, the starting checkpoint.",
)
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--worker-set",
    "worker_sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="A worker setting for every arm's worker (e.g. fresh_share=1.0); defaults otherwise.",
)
@click.option("--quick", is_flag=True, help="The <= 2 minute version (few users, short training).")
def online(
    dataset: str,
    fraction: float,
    init_from: Path | None,
    train_minutes: float,
    users: int | None,
    slices: int,
    oracle_slices: int,
    oracle_epochs: float,
    arms: str | None,
    broker: str | None,
    sets: tuple[str, ...],
    work_dir: Path,
    plot: Path | None,
    worker_sets: tuple[str, ...],
    quick: bool,
) -> None:
    """Frozen vs fine-tuned vs retrain oracle on a time split: prequential HR@10 / NDCG@10."""
    import logging
    from dataclasses import replace

    from bench.online import OnlineBench, OnlineBenchConfig
    from bench.stream import machine
    from stream.cli.context import parse_sets

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = OnlineBenchConfig(
        dataset=dataset,
        fraction=fraction,
        init_from=init_from,
        train_minutes=train_minutes,
        users=users,
        slices=slices,
        oracle_slices=oracle_slices,
        oracle_epochs=oracle_epochs,
        bootstrap_servers=broker,
        finetune=parse_sets(sets),
        worker=parse_sets(worker_sets),
        work_dir=work_dir,
    )
    if arms is not None:
        try:
            config = replace(config, arms=tuple(a for a in arms.split(",") if a))
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--arms") from None
    result = OnlineBench(config.quick() if quick else config).run()
    overrides = {
        what: ", ".join(f"{k}={v}" for k, v in values.items()) or "none"
        for what, values in (("fine-tune", config.finetune), ("worker", config.worker))
    }
    click.echo(
        f"machine: {machine()}; dataset {dataset}; fine-tune settings overridden: "
        f"{overrides['fine-tune']}; worker settings overridden: {overrides['worker']}"
    )
    topics = ", ".join(f"{arm}: {topic}" for arm, topic in result.topics.items())
    click.echo(f"stream: {work_dir}/stream.jsonl; recommendations topics: {topics or 'none'}")
    click.echo(result.table())
    if result.arms:
        click.echo(result.slice_table())
    if plot is not None and result.arms:
        from bench.plot import online_plot

        click.echo(f"plot: {online_plot(result, plot)}")
    if result.failed:
        raise SystemExit(1)
