"""The model registry from the command line: `model publish|list|rollback|pin|unpin|status`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from stream.cli.context import pass_settings
from stream.settings import Settings


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
    publish_version(settings, checkpoint_dir, parent=parent, note=note, keep=keep)


def publish_version(
    settings: Settings,
    checkpoint_dir: Path,
    *,
    parent: int | None = None,
    note: str = "",
    keep: int | None = None,
) -> None:
    """Publish, and say how the vocabulary differs from the version served until now."""
    from model.checkpoint import CheckpointError, read_manifest, vocabulary_change
    from model.registry import Registry, RegistryError

    keep = settings.finetune.keep_versions if keep is None else keep
    registry = Registry(settings.paths.registry_dir, keep=keep)
    try:
        before = registry.current()
        info = registry.publish(checkpoint_dir, parent=parent, note=note)
        vocab = read_manifest(info.path)["vocab"]
    except (CheckpointError, RegistryError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"published v{info.version} ({info.path}); it is current now")
    if before is None:
        click.echo(f"vocabulary: {len(vocab) - 1:,} items")
        return
    change = vocabulary_change(read_manifest(before.path)["vocab"], vocab)
    click.echo(
        f"vocabulary: {len(vocab) - 1:,} items; against v{before.version}: {change}; workers "
        "map stored histories by item id, so none is misread"
    )


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
