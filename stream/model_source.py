"""Where the served model comes from: the model store's current version, else a fallback
checkpoint.

The worker, the fine-tune job and `glintstream tail` all ask here, so they agree on what is
served. ``current`` fetches the version (once: the store caches it); ``load`` builds the model;
``poll`` loads the version the workers were told to serve (``stream.announcements``), keeping
what it has when that fails.
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
from model.store import ModelStore
from stream.settings import Settings

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
    def __init__(self, store: ModelStore, checkpoint_dir: Path) -> None:
        self.store = store
        self.checkpoint_dir = checkpoint_dir
        self._failed_version: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings, user: str) -> ModelSource:
        """``user`` names the cache directory (under the state directory) of this process."""
        cache = settings.paths.state_dir / user / "models"
        return cls(ModelStore(settings.paths.model_store_url, cache), settings.paths.checkpoint_dir)

    def current(self) -> Served:
        version = self.store.current_version()
        if version is not None:
            return Served(self.store.fetch(version), version)
        if (self.checkpoint_dir / MANIFEST).is_file():
            return Served(self.checkpoint_dir, FALLBACK_VERSION)
        raise ModelNotFoundError(
            f"no model to serve: the model store {self.store.url} has no current version and "
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

    def poll(
        self, serving: int, target: int | None = None, device: str | torch.device = "cpu"
    ) -> LoadedModel | None:
        """``target`` (else the store's current version) loaded, if it is not ``serving``.

        A version that fails to load is skipped until the target moves again; ``LoadFailed`` is
        raised the first time, so the caller can log and count it once.
        """
        version = self.store.current_version() if target is None else target
        if version is None or version in (serving, self._failed_version):
            return None
        try:
            path = self.store.fetch(version)
            model, manifest = load_checkpoint(path, device=device)
        except Exception as e:  # noqa: BLE001 - any load failure (shape mismatch included)
            self._failed_version = version
            raise LoadFailed(version, e) from e
        self._failed_version = None
        return LoadedModel(model, manifest, Served(path, version))


class LoadFailed(RuntimeError):
    """A new version could not be fetched or loaded; the old one keeps being served."""

    def __init__(self, version: int, cause: BaseException) -> None:
        super().__init__(f"cannot load model version {version}: {cause}")
        self.version = version
