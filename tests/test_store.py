"""The model store: the registry mirrored to an fsspec location, fetched into a local cache.

A second local directory stands for a shared mount, fsspec's in-memory filesystem for an object
store (both are fsspec implementations, driven through the same calls as s3:// would be)."""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import pytest
from test_worker import make_checkpoint

from model.checkpoint import WEIGHTS, read_manifest
from model.registry import Registry, version_dirname
from model.store import ModelStore, StoreError

VOCAB = ["<pad>", "a", "b", "c"]


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    registry = Registry(tmp_path / "registry", keep=2)
    for seed in (1, 2):
        make_checkpoint(tmp_path / f"ckpt{seed}", VOCAB, seed=seed)
        registry.publish(tmp_path / f"ckpt{seed}")
    return registry


@pytest.fixture(params=["shared-path", "object-store"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "shared-path":
        return f"file://{tmp_path / 'shared'}"
    return f"memory://glintstream-test-{uuid.uuid4().hex}/models"


def test_a_mirror_serves_every_version_and_the_current_one(
    registry: Registry, url: str, tmp_path: Path
) -> None:
    publisher = ModelStore(url)
    publisher.mirror(registry)
    worker = ModelStore(url, tmp_path / "cache")
    assert worker.current_version() == 2
    path = worker.fetch(2)
    assert path.parent == tmp_path / "cache"
    assert read_manifest(path) == read_manifest(registry.version_dir(2))
    assert worker.fetch(2) == path  # once: the cached copy

    registry.publish(tmp_path / "ckpt1")  # v3; keep=2 prunes v1 from the registry ...
    publisher.mirror(registry)
    assert worker.current_version() == 3
    with pytest.raises(StoreError, match="no version 1"):  # ... and from the store
        worker.fetch(1)
    worker.fetch(3)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["v000002", "v000003"]


def test_a_tampered_copy_is_refused(registry: Registry, url: str, tmp_path: Path) -> None:
    ModelStore(url).mirror(registry)
    fs, root = fsspec.core.url_to_fs(url)
    fs.pipe_file(f"{root}/versions/{version_dirname(2)}/{WEIGHTS}", b"not the weights")
    with pytest.raises(StoreError, match="version 2 .* is not intact"):
        ModelStore(url, tmp_path / "cache").fetch(2)
    assert not (tmp_path / "cache" / version_dirname(2)).exists()


def test_the_registry_itself_is_a_store_with_nothing_to_mirror(
    registry: Registry, tmp_path: Path
) -> None:
    store = ModelStore(registry.root, tmp_path / "cache")
    assert store.is_registry(registry)
    store.mirror(registry)  # a no-op
    assert store.current_version() == 2 and store.fetch(1).is_dir()
    assert ModelStore(tmp_path / "empty", tmp_path / "cache").current_version() is None
