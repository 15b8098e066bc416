"""Where the served model comes from: the registry's current version, else a fallback checkpoint.

The worker, the fine-tune job and `glintstream tail` all ask here, so they agree on what is
served. ``current`` and ``manifest`` only read small files; ``load`` builds the model; ``poll``
notices a new current version and loads it, keeping what it has when that fails.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from model.checkpoint import MANIFEST, load_checkpoint
from model.recommender import SequentialRecommender
from model.registry import Registry

log = logging.getLogger(__name__)

FALLBACK_VERSION = 0  # the version of a checkpoint served from outside the registry


class ModelNotFoundError(RuntimeError):
    """Neither the registry nor the fallback checkpoint directory holds a model."""


@dataclass(frozen=True)
class Served:
    path: Path  # a checkpoint directory
    version: int  # FALLBACK_VERSION for the fallback checkpoint

    @property
    def from_registry(self) -> bool:
        return self.version != FALLBACK_VERSION


@dataclass(frozen=True)
class LoadedModel:
    model: SequentialRecommender
    manifest: dict[str, Any]
    served: Served

    @property
    def vocab(self) -> list[str]:
        vocab: list[str] = self.manifest["vocab"]
        return vocab


class ModelSource:
    def __init__(self, registry_dir: Path, checkpoint_dir: Path) -> None:
        self.registry = Registry(registry_dir)
        self.checkpoint_dir = checkpoint_dir
        self._failed_version: int | None = None

    def current(self) -> Served:
        info = self.registry.current()
        if info is not None:
            return Served(info.path, info.version)
        if (self.checkpoint_dir / MANIFEST).is_file():
            return Served(self.checkpoint_dir, FALLBACK_VERSION)
        raise ModelNotFoundError(
            f"no model to serve: the registry {self.registry.root} has no current version and "
            f"{self.checkpoint_dir} holds no checkpoint ({MANIFEST}). Train one "
            "(glintstream train ...) or publish one (glintstream model publish DIR)."
        )

    def manifest(self) -> dict[str, Any]:
        """The current model's manifest, without loading its weights."""
        manifest: dict[str, Any] = json.loads(
            (self.current().path / MANIFEST).read_text(encoding="utf-8")
        )
        return manifest

    def load(self, device: str | torch.device = "cpu") -> LoadedModel:
        served = self.current()
        model, manifest = load_checkpoint(served.path, device=device)
        return LoadedModel(model, manifest, served)

    def poll(self, serving: int, device: str | torch.device = "cpu") -> LoadedModel | None:
        """The registry's new current version, loaded; None when it is still ``serving``.

        A version that fails to load is logged once and skipped until CURRENT moves again;
        ``LoadFailed`` is raised the first time, so the caller can count it.
        """
        version = self.registry.current_version()
        if version is None or version in (serving, self._failed_version):
            return None
        try:
            model, manifest = load_checkpoint(self.registry.get(version).path, device=device)
        except Exception as e:  # noqa: BLE001 - any load failure (shape mismatch included)
            self._failed_version = version
            raise LoadFailed(version, e) from e
        return LoadedModel(model, manifest, Served(self.registry.get(version).path, version))


class LoadFailed(RuntimeError):
    """A new current version could not be loaded; the old one keeps being served."""

    def __init__(self, version: int, cause: BaseException) -> None:
        super().__init__(f"cannot load model version {version}: {cause}")
        self.version = version
