"""`glintstream bench ...`: benchmark commands that print their figures."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group()
def bench() -> None:
    """Benchmarks (run by hand; figures go to docs/)."""


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
def windows(dataset: str) -> None:
    """Context lost by the training windows against the official sliding window."""
    from bench.model import window_deviation

    click.echo(json.dumps(window_deviation(dataset)))


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
