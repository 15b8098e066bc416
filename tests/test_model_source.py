"""Where the served model comes from: the model store's current (or announced) version, else
the fallback checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_worker import make_checkpoint

from model.registry import Registry
from model.store import ModelStore
from stream.model_source import FALLBACK_VERSION, LoadFailed, ModelNotFoundError, ModelSource


def source_for(registry_root: Path, fallback: Path) -> ModelSource:
    return ModelSource(ModelStore(registry_root, registry_root.parent / "cache"), fallback)


VOCAB = ["<pad>", "a", "b", "c"]


def test_nothing_to_serve_says_where_it_looked(tmp_path: Path) -> None:
    source = source_for(tmp_path / "registry", tmp_path / "nothing")
    with pytest.raises(ModelNotFoundError, match="no model to serve"):
        source.current()


def test_the_fallback_until_the_registry_has_a_version(tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "fallback", VOCAB, seed=0)
    source = source_for(tmp_path / "registry", tmp_path / "fallback")
    assert source.current().version == FALLBACK_VERSION and not source.current().from_registry
    loaded = source.load()
    assert loaded.vocab == VOCAB and loaded.served.path == tmp_path / "fallback"
    assert source.manifest()["dataset"] == "synthetic"
    assert source.poll(FALLBACK_VERSION) is None  # nothing new

    make_checkpoint(tmp_path / "v1", VOCAB, seed=1)
    Registry(tmp_path / "registry").publish(tmp_path / "v1")
    new = source.poll(FALLBACK_VERSION)
    assert new is not None and new.served.version == 1 and new.served.from_registry
    assert source.poll(1) is None
    assert source.current().version == 1 and source.load().served.version == 1
    assert new.served.path.parent == tmp_path / "cache"  # served from the local copy


def test_an_announced_version_wins_over_the_stores_current(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    for seed in (1, 2):
        make_checkpoint(tmp_path / f"v{seed}", VOCAB, seed=seed)
        registry.publish(tmp_path / f"v{seed}")
    source = source_for(registry.root, tmp_path / "nothing")
    assert source.current().version == 2
    back = source.poll(2, target=1)  # e.g. a rollback announced before the store moved
    assert back is not None and back.served.version == 1
    assert source.poll(1, target=1) is None


def test_a_version_that_fails_to_load_is_reported_once(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry")
    make_checkpoint(tmp_path / "v1", VOCAB, seed=1)
    info = registry.publish(tmp_path / "v1")
    (info.path / "model.safetensors").write_bytes(b"corrupted")
    source = source_for(registry.root, tmp_path / "nothing")
    with pytest.raises(LoadFailed, match="cannot load model version 1"):
        source.poll(FALLBACK_VERSION)
    assert source.poll(FALLBACK_VERSION) is None  # skipped until the version moves again
    make_checkpoint(tmp_path / "v2", VOCAB, seed=2)
    registry.publish(tmp_path / "v2")
    loaded = source.poll(FALLBACK_VERSION)
    assert loaded is not None and loaded.served.version == 2
