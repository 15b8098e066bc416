"""The offline model commands: `train`, `evaluate` and the registry (`model publish|list|rollback`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from model.catalog import MODELS
from stream.cli.context import pass_settings
from stream.settings import Settings


@click.command()
@click.option("--dataset", default="ml-1m", show_default=True)
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
@pass_settings
def train(
    settings: Settings,
    dataset: str,
    model_name: str,
    out: Path | None,
    epochs: int,
    batch_size: int,
    lr: float,
    max_len: int | None,
    hidden_size: int | None,
    dropout: float | None,
    window_stride: int | None,
    patience: int,
    eval_every: int,
    seed: int,
    max_minutes: float | None,
    threads: int,
    no_progress: bool,
    init_from: Path | None,
) -> None:
    """Train a model with leave-one-out by time; saves the best-valid checkpoint."""
    from model.train import TrainConfig
    from model.train import train as run

    config = TrainConfig(
        dataset=dataset,
        model=model_name,
        data_dir=settings.paths.data_dir,
        out_dir=out or Path("runs") / f"{dataset}-{model_name}",
        max_len=max_len,
        hidden_size=hidden_size,
        dropout=dropout,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        window_stride=window_stride,
        patience=patience,
        eval_every=eval_every,
        seed=seed,
        max_minutes=max_minutes,
        threads=threads,
        device=settings.torch_device(),
        progress=not no_progress,
        init_from=init_from,
    )
    metrics = run(config)
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
@click.option("--dataset", required=True)
@click.option("--split", type=click.Choice(["test", "valid"]), default="test", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option("--seed", type=int, default=666, show_default=True, help="pop100 sampling seed.")
@pass_settings
def evaluate(
    settings: Settings, checkpoint: Path, dataset: str, split: str, as_json: bool, seed: int
) -> None:
    """Full ranking (seen items masked and not) and pop100 of a checkpoint on a dataset."""
    from model.train import evaluate_checkpoint

    result = evaluate_checkpoint(
        checkpoint,
        dataset,
        settings.paths.data_dir,
        split=split,
        seed=seed,
        device=settings.torch_device(),
    )
    if as_json:
        click.echo(json.dumps(result))
        return
    for protocol in ("full_masked", "full", "pop100"):
        figures = "  ".join(f"{k} {v:.4f}" for k, v in result[protocol].items())
        click.echo(f"{protocol:12s} {figures}")
    click.echo(f"users {result['users']}")


def _gate_text(gate: dict[str, Any] | None) -> str:
    if not gate:
        return "-"
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in gate.items())


@click.group()
def model() -> None:
    """The model registry (GLINTSTREAM_REGISTRY_DIR): versions the workers serve."""


@model.command()
@click.argument("checkpoint_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--note", default="", help="Free text stored with the version.")
@click.option("--parent", type=int, help="The version this checkpoint was derived from.")
@click.option("--keep", type=int, help="Versions to retain [finetune_keep_versions].")
@pass_settings
def publish(
    settings: Settings, checkpoint_dir: Path, note: str, parent: int | None, keep: int | None
) -> None:
    """Validate CHECKPOINT_DIR, add it as the next version and make it current."""
    from model.checkpoint import CheckpointError
    from model.registry import Registry, RegistryError

    try:
        keep = settings.finetune.keep_versions if keep is None else keep
        info = Registry(settings.paths.registry_dir, keep=keep).publish(
            checkpoint_dir, parent=parent, note=note
        )
    except (CheckpointError, RegistryError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"published v{info.version} ({info.path}); it is current now")


@model.command(name="list")
@pass_settings
def list_versions(settings: Settings) -> None:
    """Versions, oldest first; * marks the current one."""
    from model.registry import Registry

    registry = Registry(settings.paths.registry_dir)
    versions, current = registry.list(), registry.current_version()
    if not versions:
        click.echo(f"no versions in {settings.paths.registry_dir}")
        return
    click.echo(f"  {'version':>7}  {'created':<25}  {'parent':>6}  gate / note")
    for v in versions:
        mark = "*" if v.version == current else " "
        parent = "-" if v.parent is None else str(v.parent)
        note = f"  # {v.note}" if v.note else ""
        click.echo(
            f"{mark} {v.version:>7}  {v.created:<25}  {parent:>6}  {_gate_text(v.gate)}{note}"
        )


@model.command()
@click.argument("version", type=int)
@pass_settings
def rollback(settings: Settings, version: int) -> None:
    """Make VERSION current again (workers switch between batches)."""
    from model.registry import Registry, RegistryError

    registry = Registry(settings.paths.registry_dir)
    previous = registry.current_version()
    try:
        registry.rollback(version)
    except RegistryError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"current: v{version} (was v{previous})")
