"""Model registry: publish, list, current, rollback, retention, torn publishes, concurrency."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from model.baselines import Popularity, PopularityConfig
from model.checkpoint import MANIFEST, WEIGHTS, CheckpointError, load_checkpoint, save_checkpoint
from model.registry import CURRENT, HISTORY, Registry, RegistryError, RegistryPinned

NUM_ITEMS = 20
VOCAB = ["<pad>"] + [str(i) for i in range(1, NUM_ITEMS + 1)]


def make_checkpoint(directory: Path, seed: int = 0) -> Path:
    counts = np.random.default_rng(seed).integers(0, 100, size=NUM_ITEMS + 1)
    model = Popularity(PopularityConfig(num_items=NUM_ITEMS)).fit(counts)
    return save_checkpoint(
        directory,
        model,
        kind="popularity",
        config=model.config,
        vocab=VOCAB,
        dataset="synthetic",
        metrics={"seed": seed},
    )


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "ckpt")


def test_empty_registry(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    assert reg.list() == []
    assert reg.current() is None
    with pytest.raises(RegistryError):
        reg.get(1)


def test_publish_list_current_and_load(tmp_path: Path, ckpt: Path) -> None:
    reg = Registry(tmp_path / "reg")
    v1 = reg.publish(ckpt, note="first")
    v2 = reg.publish(ckpt, parent=1, gate={"hr@10": 0.5, "hr@10_current": 0.4})
    assert [v.version for v in reg.list()] == [1, 2]
    assert v1.note == "first" and v1.parent is None and v1.source == str(ckpt.resolve())
    assert v2.parent == 1 and v2.gate == {"hr@10": 0.5, "hr@10_current": 0.4}
    assert reg.current() == reg.get(2) == v2
    assert (reg.root / CURRENT).read_text() == "2\n"
    assert v2.path == reg.root / "versions" / "v000002"
    # a version directory is a plain checkpoint
    model, manifest = load_checkpoint(v2.path)
    assert isinstance(model, Popularity) and manifest["vocab"] == VOCAB
    events = [json.loads(line)["event"] for line in (reg.root / HISTORY).read_text().splitlines()]
    assert events == ["publish", "publish"]


def test_publish_rejects_bad_checkpoints(tmp_path: Path, ckpt: Path) -> None:
    reg = Registry(tmp_path / "reg")
    with pytest.raises(CheckpointError):
        reg.publish(tmp_path)  # no manifest
    (ckpt / WEIGHTS).write_bytes((ckpt / WEIGHTS).read_bytes() + b"x")
    with pytest.raises(CheckpointError, match="sha256"):
        reg.publish(ckpt)
    manifest = json.loads((ckpt / MANIFEST).read_text())
    assert manifest["kind"] == "popularity"
    assert reg.list() == [] and reg.current() is None
    versions = reg.root / "versions"
    assert not versions.exists() or list(versions.iterdir()) == []  # nothing left behind


def test_rollback(tmp_path: Path, ckpt: Path) -> None:
    reg = Registry(tmp_path / "reg")
    for _ in range(3):
        reg.publish(ckpt)
    assert reg.rollback(1).version == 1
    assert reg.current_version() == 1
    with pytest.raises(RegistryError):
        reg.rollback(9)
    assert reg.current_version() == 1
    last = json.loads((reg.root / HISTORY).read_text().splitlines()[-1])
    assert last["event"] == "rollback" and last["version"] == 1 and last["from"] == 3
    # the next publish becomes current again
    assert reg.publish(ckpt).version == 4 and reg.current_version() == 4


def test_retention_keeps_newest_and_current(tmp_path: Path, ckpt: Path) -> None:
    reg = Registry(tmp_path / "reg", keep=2)
    for _ in range(3):
        reg.publish(ckpt)
    assert [v.version for v in reg.list()] == [2, 3]
    reg.rollback(2)
    reg.publish(ckpt)  # v4 is current now; v2 is no longer protected
    assert [v.version for v in reg.list()] == [3, 4]
    reg.rollback(3)
    Registry(reg.root, keep=1).publish(ckpt)  # v5 current, keep=1: only v5 survives
    assert [v.version for v in reg.list()] == [5]
    # numbers are never reused after pruning
    assert reg.publish(ckpt).version == 6
    leftovers = [p.name for p in (reg.root / "versions").iterdir()]
    assert sorted(leftovers) == ["v000005", "v000006"]


def test_retention_never_deletes_current(tmp_path: Path, ckpt: Path) -> None:
    for _ in range(3):
        Registry(tmp_path / "reg").publish(ckpt)
    Registry(tmp_path / "reg").rollback(1)
    # a publish always makes the newest version current; pruning after a rollback (e.g. by a
    # tool with a smaller keep) must still spare whatever CURRENT names
    reg = Registry(tmp_path / "reg", keep=1)
    with reg._locked():
        reg._prune()
    assert [v.version for v in reg.list()] == [1, 3]
    assert reg.current_version() == 1


def test_torn_publish_is_ignored(tmp_path: Path, ckpt: Path) -> None:
    reg = Registry(tmp_path / "reg")
    reg.publish(ckpt)
    # a publisher that died mid-copy (pid 2**22 + 1 is above Linux's pid_max default)
    torn = reg.root / "versions" / f".tmp-{2**22 + 1}-deadbeef"
    torn.mkdir()
    (torn / WEIGHTS).write_bytes(b"half a file")
    # a stray directory without registry.json is not a version either
    assert [v.version for v in reg.list()] == [1]
    assert reg.current_version() == 1
    assert reg.publish(ckpt).version == 2
    assert not torn.exists()  # cleaned up by the next publish


def test_corrupt_current_pointer_is_an_error(tmp_path: Path, ckpt: Path) -> None:
    reg = Registry(tmp_path / "reg")
    reg.publish(ckpt)
    (reg.root / CURRENT).write_text("garbage")
    with pytest.raises(RegistryError):
        reg.current()


def test_concurrent_publishes_get_distinct_versions(tmp_path: Path, ckpt: Path) -> None:
    root = tmp_path / "reg"
    results: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def publish() -> None:
        try:
            start.wait()
            # each thread its own Registry object, as separate processes would have
            results.append(Registry(root, keep=10).publish(ckpt).version)
        except BaseException as e:  # surfaced below; a thread's exception is otherwise lost
            errors.append(e)

    threads = [threading.Thread(target=publish) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == [1, 2, 3, 4, 5, 6]
    reg = Registry(root)
    assert [v.version for v in reg.list()] == [1, 2, 3, 4, 5, 6]
    assert reg.current_version() == 6  # pointer moves happen under the lock, in order


def test_a_pin_holds_until_unpinned_and_rollback_pins(tmp_path: Path, ckpt: Path) -> None:

    reg = Registry(tmp_path / "reg")
    for _ in range(3):
        reg.publish(ckpt)
    assert reg.pinned() is None
    reg.rollback(1)  # an operator rolls back: held there
    assert (reg.current_version(), reg.pinned()) == (1, 1)
    with pytest.raises(RegistryPinned, match="version 1 is pinned"):
        reg.publish(ckpt, unless_pinned=True)  # the fine-tune job's publish
    assert reg.current_version() == 1 and len(reg.list()) == 3
    assert reg.unpin() == 1 and reg.pinned() is None
    assert reg.publish(ckpt, unless_pinned=True).version == 4
    reg.pin(2)
    assert reg.publish(ckpt).version == 5  # an operator's publish names what to serve
    assert reg.pinned() is None and reg.current_version() == 5
    events = [json.loads(line)["event"] for line in (reg.root / "history.jsonl").open()]
    assert events.count("rollback") == 2 and "unpin" in events
