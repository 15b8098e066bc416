"""The offline model commands: `train` and `evaluate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from model.catalog import MODELS
from model.weighting import TargetWeighting
from stream.cli.context import click_source_options, load_source, pass_settings
from stream.cli.registry import publish_version
from stream.settings import Settings

if TYPE_CHECKING:  # imported by the commands themselves: --help stays fast
    from stream.click_sources import ClickSource


@click.command()
@click_source_options(default_dataset="ml-1m")
@click.option("--model", "model_name", type=click.Choice(list(MODELS)), default="glintru")
@click.option("--out", type=click.Path(path_type=Path), help="Checkpoint dir [runs/DATASET-MODEL].")
@click.option("--epochs", type=int, default=200, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--max-len", type=int, help="Window L [the dataset's official one].")
@click.option("--hidden-size", type=int, help="Embedding size d [the model's default].")
@click.option("--dropout", type=float, help="One rate for every dropout [the model's defaults].")
@click.option(
    "--window-stride",
    type=click.IntRange(min=1),
    help="Overlap training windows: each trains its newest STRIDE targets [L: no overlap].",
)
@click.option(
    "--target-weighting",
    type=click.Choice([w.value for w in TargetWeighting]),
    default=TargetWeighting.STEP.value,
    show_default=True,
    help="step: each step's mean; equal: every target weighs the same (a fixed divisor).",
)
@click.option("--patience", type=int, default=10, show_default=True, help="In validations.")
@click.option(
    "--eval-every",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Validate every N epochs.",
)
@click.option("--seed", type=int, default=666, show_default=True)
@click.option("--max-minutes", type=float, help="Stop after the epoch that crosses this budget.")
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--no-progress", is_flag=True)
@click.option(
    "--init-from", type=click.Path(path_type=Path, exists=True), help="Continue from a checkpoint."
)
@click.option("--publish", is_flag=True, help="Publish the checkpoint to the registry after.")
@click.option(
    "--before",
    type=float,
    help="Train on the clicks before the time when this share of them had happened (the "
    "starting checkpoint of `glintstream bench online`).",
)
@pass_settings
def train(
    settings: Settings,
    source: ClickSource,
    model_name: str,
    out: Path | None,
    target_weighting: str,
    no_progress: bool,
    publish: bool,
    before: float | None,
    **fields: Any,  # the other options are TrainConfig fields of the same names
) -> None:
    """Train a model with leave-one-out by time; saves the best-valid checkpoint."""
    from model.data import before_time, time_at_fraction
    from model.train import TrainConfig
    from model.train import train as run

    data = load_source(source, settings)
    dataset = data.name
    if before is not None:
        try:
            data = before_time(data, time_at_fraction(data, before))
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--before") from None
    config = TrainConfig(
        dataset=dataset,
        model=model_name,
        data_dir=settings.paths.data_dir,
        out_dir=out or Path("runs") / f"{Path(data.name).stem}-{model_name}",
        target_weighting=TargetWeighting(target_weighting),
        device=settings.torch_device(),
        progress=not no_progress,
        **fields,
    )
    metrics = run(config, data)
    if publish:
        publish_version(settings, config.out_dir, note=f"trained on {data.name}")
    click.echo(
        json.dumps(
            {
                "checkpoint": str(config.out_dir),
                "best_epoch": metrics["best_epoch"],
                "test": metrics["test"],
            },
            indent=2,
        )
    )


@click.command()
@click.option("--checkpoint", type=click.Path(path_type=Path, exists=True), required=True)
@click_source_options(default_dataset=None)
@click.option("--split", type=click.Choice(["test", "valid"]), default="test", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option("--seed", type=int, default=666, show_default=True, help="pop100 sampling seed.")
@pass_settings
def evaluate(
    settings: Settings, checkpoint: Path, source: ClickSource, split: str, as_json: bool, seed: int
) -> None:
    """Full ranking (all seen items masked, the last L masked, none) and pop100 of a checkpoint
    on some clicks."""
    from model.checkpoint import CheckpointError, read_manifest
    from model.evaluate import PROTOCOLS
    from model.train import evaluate_checkpoint

    data = load_source(source, settings)
    try:
        trained_on = read_manifest(checkpoint).get("dataset")
    except CheckpointError as e:
        raise click.ClickException(str(e)) from None
    if trained_on != data.name:
        click.echo(
            f"warning: {checkpoint} was trained on {trained_on}, evaluated on {data.name}", err=True
        )
    result = evaluate_checkpoint(
        checkpoint,
        data.name,
        None,
        split=split,
        seed=seed,
        device=settings.torch_device(),
        data=data,
    )
    if as_json:
        click.echo(json.dumps(result))
        return
    for protocol in PROTOCOLS:
        figures = "  ".join(f"{k} {v:.4f}" for k, v in result[protocol].items())
        click.echo(f"{protocol:13s} {figures}")
    click.echo(f"users {result['users']}")
