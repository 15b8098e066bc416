"""The model registry from the command line: `model publish|list|rollback|pin|unpin|announce|status`.

Every command that changes the served version goes through ``stream.releases`` (the registry,
the model store, then `model-updates`), so workers on every host follow it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from stream.cli.context import pass_settings
from stream.settings import Settings


def _gate_text(gate: dict[str, Any] | None) -> str:
    if not gate:
        return "-"
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in gate.items())


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """What a release can fail with, as one line each."""
    from model.checkpoint import CheckpointError
    from model.registry import RegistryError
    from model.store import StoreError
    from stream.announcements import AnnounceError
    from stream.topics import BrokerUnreachable

    failures = (CheckpointError, RegistryError, StoreError, AnnounceError, BrokerUnreachable)
    try:
        yield
    except (*failures, LookupError, OSError) as e:  # LookupError: TopicMissing, no version
        raise click.ClickException(str(e)) from None


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
    """Validate CHECKPOINT_DIR, add it as the next version and serve it (lifts a pin)."""
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
    from model.checkpoint import read_manifest, vocabulary_change
    from stream.releases import Releases

    releases = Releases(settings, keep=keep)
    with _one_line_errors():
        before = releases.registry.current()
        info = releases.publish(checkpoint_dir, parent=parent, note=note)
        vocab = read_manifest(info.path)["vocab"]
    click.echo(f"published v{info.version} ({info.path}); announced: workers serve it now")
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
    versions, current, pinned = registry.list(), registry.current_version(), registry.pinned()
    if not versions:
        click.echo(f"no versions in {settings.paths.registry_dir}")
        return
    click.echo(f"  {'version':>7}  {'created':<25}  {'parent':>6}  gate / note")
    for v in versions:
        mark = "*" if v.version == current else " "
        parent = "-" if v.parent is None else str(v.parent)
        note = f"  # {v.note}" if v.note else ""
        if v.version == pinned:
            note += "  (pinned)"
        click.echo(
            f"{mark} {v.version:>7}  {v.created:<25}  {parent:>6}  {_gate_text(v.gate)}{note}"
        )


def _hold(settings: Settings, version: int, verb: str) -> None:
    from stream.releases import Releases

    releases = Releases(settings)
    with _one_line_errors():
        previous = releases.registry.current_version()
        releases.rollback(version)
    click.echo(
        f"{verb} v{version} (was v{previous}); pinned: fine-tune runs promote nothing until "
        "`glintstream model unpin`"
    )


@model.command()
@click.argument("version", type=int)
@pass_settings
def rollback(settings: Settings, version: int) -> None:
    """Serve VERSION again and pin it there (workers switch between batches)."""
    _hold(settings, version, "serving")


@model.command()
@click.argument("version", type=int)
@pass_settings
def pin(settings: Settings, version: int) -> None:
    """Serve VERSION and hold it: the fine-tune job evaluates candidates, promotes none."""
    _hold(settings, version, "pinned")


@model.command()
@pass_settings
def unpin(settings: Settings) -> None:
    """Let the fine-tune job promote versions again."""
    from model.registry import Registry

    pinned = Registry(settings.paths.registry_dir).unpin()
    click.echo("nothing was pinned" if pinned is None else f"v{pinned} is no longer pinned")


@model.command()
@pass_settings
def announce(settings: Settings) -> None:
    """Tell the workers the registry's current version again (after a failed announcement)."""
    from stream.releases import Releases

    with _one_line_errors():
        info = Releases(settings).announce_current()
    click.echo(f"announced v{info.version}")


@model.command()
@pass_settings
def status(settings: Settings) -> None:
    """The registry's current version, the announced one, and what each live worker serves."""
    from model.registry import Registry
    from stream.announcements import read_latest
    from stream.topics import ensure_reachable
    from stream.worker_status import is_live, read_statuses

    registry = Registry(settings.paths.registry_dir)
    current, pinned = registry.current_version(), registry.pinned()
    held = f" (pinned v{pinned})" if pinned is not None else ""
    click.echo(f"registry: {'no version' if current is None else f'v{current}'}{held}")
    with _one_line_errors():
        ensure_reachable(settings)
        update = read_latest(settings)
        statuses = read_statuses(settings)
    click.echo(
        "announced: none (workers serve the model store's CURRENT)"
        if update is None
        else f"announced: v{update.version} ({update.event}, {update.announced})"
    )
    now = time.time()
    live = [statuses[w] for w in sorted(statuses) if is_live(statuses[w], settings, now)]
    click.echo(f"workers: {len(live)} live ({len(statuses) - len(live)} gone)")
    if live:
        click.echo(f"  {'worker':<12} {'host':<20} {'pid':>7}  {'serves':>6}  partitions  seen")
    for s in live:
        parts = ",".join(map(str, s.partitions)) or "-"
        click.echo(
            f"  {s.worker_id:<12} {s.host:<20} {s.pid:>7}  {'v' + str(s.model_version):>6}  "
            f"{parts:<10}  {now - s.ts:.0f} s ago"
        )
