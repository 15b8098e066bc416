"""Where workers fetch model versions from: a mirror of the registry at an fsspec URL.

The registry (``model.registry``) is a local directory with a lock and a history, written by the
fine-tune job and the `model` commands. Workers on other hosts need only its versions, so the
publisher copies each one to the store, which may be the registry directory itself (one host),
a shared path, or an object store (``s3://``, ``gs://``, ``az://``: whatever fsspec reaches, with
its package installed). Same layout as the registry::

    CURRENT                           the version a worker serves before any announcement
    versions/v000007/model.safetensors
    versions/v000007/manifest.json    written last: a complete version has one

A worker downloads a version into its own cache directory and verifies its weights' hash before
loading it, so a torn or tampered copy is refused and a version pruned from the store meanwhile
keeps serving.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from model.checkpoint import MANIFEST, WEIGHTS, CheckpointError, verify_checkpoint
from model.registry import CURRENT, VERSIONS, Registry, version_dirname

CACHED_VERSIONS = 2  # the served version and the one before it, for a quick rollback


class StoreError(RuntimeError):
    """A version missing from the store, or a copy that fails verification."""


class ModelStore:
    def __init__(self, url: str | Path, cache_dir: Path | None = None) -> None:
        """``cache_dir``: where ``fetch`` downloads to (a publisher, which only mirrors, has none)."""
        self.url = str(url)
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.cache_dir = cache_dir

    def _path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def is_registry(self, registry: Registry) -> bool:
        """True when the store is the registry's own directory (nothing to mirror)."""
        return isinstance(self.fs, LocalFileSystem) and (
            Path(self.root).resolve() == registry.root.resolve()
        )

    # --- the workers' side ---

    def current_version(self) -> int | None:
        try:
            text = self.fs.cat_file(self._path(CURRENT)).decode("ascii")
        except FileNotFoundError:
            return None
        try:
            return int(text.strip())
        except ValueError:
            raise StoreError(f"{self.url}/{CURRENT} holds {text!r}, not a version") from None

    def fetch(self, version: int) -> Path:
        """A local checkpoint directory holding ``version``, downloaded once and verified."""
        if self.cache_dir is None:
            raise StoreError(f"{self.url} was opened without a cache directory to fetch into")
        target = self.cache_dir / version_dirname(version)
        if (target / MANIFEST).is_file():
            return target
        source = self._path(VERSIONS, version_dirname(version))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_dir / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            for name in (WEIGHTS, MANIFEST):
                self.fs.get_file(f"{source}/{name}", str(tmp / name))
            verify_checkpoint(tmp)
            os.replace(tmp, target)
        except FileNotFoundError:
            raise StoreError(f"no version {version} in the model store {self.url}") from None
        except CheckpointError as e:
            raise StoreError(f"version {version} in {self.url} is not intact: {e}") from None
        except OSError as e:
            raise StoreError(f"cannot fetch version {version} from {self.url}: {e}") from e
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._prune_cache(keep=version)
        return target

    def _prune_cache(self, keep: int) -> None:
        assert self.cache_dir is not None
        cached = sorted(p for p in self.cache_dir.iterdir() if p.name.startswith("v"))
        stale = [p for p in cached if p.name != version_dirname(keep)][: -(CACHED_VERSIONS - 1)]
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)

    # --- the publisher's side ---

    def mirror(self, registry: Registry) -> None:
        """Copy the registry's versions that the store lacks, point the store's CURRENT at the
        registry's, and drop versions the registry pruned. New versions are complete before
        CURRENT names them."""
        if self.is_registry(registry):
            return
        versions = self._path(VERSIONS)
        self.fs.makedirs(versions, exist_ok=True)
        kept = {info.version for info in registry.list()}
        present = {Path(p.rstrip("/")).name for p in self.fs.ls(versions, detail=False)}
        for version in sorted(kept):
            name = version_dirname(version)
            if name in present and self.fs.exists(f"{versions}/{name}/{MANIFEST}"):
                continue
            self.fs.makedirs(f"{versions}/{name}", exist_ok=True)
            for file in (WEIGHTS, MANIFEST):  # the manifest last: it marks a complete copy
                self.fs.put_file(
                    str(registry.version_dir(version) / file), f"{versions}/{name}/{file}"
                )
        current = registry.current_version()
        if current is not None:
            tmp = self._path(f".{CURRENT}.tmp-{uuid.uuid4().hex[:8]}")
            self.fs.pipe_file(tmp, f"{current}\n".encode("ascii"))
            self.fs.mv(tmp, self._path(CURRENT))
        for name in present - {version_dirname(v) for v in kept}:
            self.fs.rm(f"{versions}/{name}", recursive=True)
