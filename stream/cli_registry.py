"""`glintstream model publish|list|rollback`: the model registry from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from stream.settings import Settings

pass_settings = click.make_pass_decorator(Settings)
KEEP = 5  # versions kept after a publish (the current one is always kept too)


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
@click.option("--keep", type=int, default=KEEP, show_default=True, help="Versions to retain.")
@pass_settings
def publish(
    settings: Settings, checkpoint_dir: Path, note: str, parent: int | None, keep: int
) -> None:
    """Validate CHECKPOINT_DIR, add it as the next version and make it current."""
    from model.checkpoint import CheckpointError
    from model.registry import Registry, RegistryError

    try:
        info = Registry(settings.registry_dir, keep=keep).publish(
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

    registry = Registry(settings.registry_dir)
    versions, current = registry.list(), registry.current_version()
    if not versions:
        click.echo(f"no versions in {settings.registry_dir}")
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

    registry = Registry(settings.registry_dir)
    previous = registry.current_version()
    try:
        registry.rollback(version)
    except RegistryError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"current: v{version} (was v{previous})")
