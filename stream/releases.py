"""Changing the version workers serve: the registry, then the model store, then `model-updates`.

Every path that changes it comes here (the fine-tune job, `model publish|rollback|pin|announce`,
`train --publish`), in that order, so a worker told of a version always finds it in the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.checkpoint import read_manifest
from model.registry import Registry, VersionInfo
from model.store import ModelStore
from stream.announcements import AnnounceError, announce, update_for
from stream.messages import UpdateEvent
from stream.settings import Settings
from stream.topics import ensure_reachable


class Releases:
    def __init__(self, settings: Settings, keep: int | None = None) -> None:
        """``keep``: registry versions retained after a publish [finetune.keep_versions]."""
        self.settings = settings
        keep = settings.finetune.keep_versions if keep is None else keep
        self.registry = Registry(settings.paths.registry_dir, keep=keep)
        self.store = ModelStore(settings.paths.model_store_url)

    # Each change first checks that the broker answers (``BrokerUnreachable``), so the registry
    # does not move while the workers cannot be told.

    def publish(
        self,
        checkpoint_dir: str | Path,
        *,
        parent: int | None = None,
        gate: dict[str, Any] | None = None,
        note: str = "",
        unless_pinned: bool = False,
    ) -> VersionInfo:
        """A new version, served by every worker once announced (``Registry.publish``)."""
        ensure_reachable(self.settings)
        info = self.registry.publish(
            checkpoint_dir, parent=parent, gate=gate, note=note, unless_pinned=unless_pinned
        )
        self._release(info, UpdateEvent.PUBLISHED)
        return info

    def rollback(self, version: int) -> VersionInfo:
        """Serve ``version`` again and pin it (``Registry.rollback``)."""
        ensure_reachable(self.settings)
        info = self.registry.rollback(version)
        self._release(info, UpdateEvent.ROLLBACK)
        return info

    def announce_current(self) -> VersionInfo:
        """Mirror and announce the registry's current version again (after a failed attempt)."""
        ensure_reachable(self.settings)
        info = self.registry.current()
        if info is None:
            raise LookupError(f"the registry {self.registry.root} has no current version")
        self._release(info, UpdateEvent.REPEAT)
        return info

    def _release(self, info: VersionInfo, event: UpdateEvent) -> None:
        self.store.mirror(self.registry)
        num_items = len(read_manifest(info.path)["vocab"]) - 1
        try:
            announce(self.settings, update_for(info, event, num_items))
        except AnnounceError as e:
            raise AnnounceError(
                f"{e}. Version {info.version} is current in the registry, but workers keep "
                "serving the version announced before until `glintstream model announce` succeeds"
            ) from None
