"""Checkpoints: ``model.safetensors`` + ``manifest.json``. Loading never unpickles.

The manifest records what is needed to rebuild the model (kind + config), to map external item
ids (vocab) and to trust the weights (their sha256). It is written last, so a directory with a
manifest whose hash matches its weights is a complete checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model.catalog import KINDS, Kind
from model.recommender import SequentialRecommender

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint directory is incomplete, corrupted or of an unknown kind/version."""


def model_kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise CheckpointError(f"unknown model kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    return KINDS[kind]


def build_model(kind: str, config: Any) -> SequentialRecommender:
    model = model_kind(kind).build(config)
    assert isinstance(model, SequentialRecommender)
    return model


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _config_from_dict(config_cls: type, values: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise CheckpointError(f"config keys unknown to {config_cls.__name__}: {sorted(unknown)}")
    # JSON has no tuples; frozen configs should stay hashable
    values = {
        k: tuple(v) if isinstance(v, list) and str(fields[k].type).startswith("tuple") else v
        for k, v in values.items()
    }
    return config_cls(**values)


def save_checkpoint(
    directory: str | Path,
    model: SequentialRecommender,
    *,
    kind: str,
    config: Any,
    vocab: list[str],
    dataset: str,
    metrics: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write weights then manifest (each via a temp file + rename); return the directory."""
    config_dict = dataclasses.asdict(config)  # before isinstance, which narrows Any to object
    config_cls = model_kind(kind).config_cls()
    if not isinstance(config, config_cls) or model.config != config:
        raise CheckpointError(
            f"kind {kind!r} expects a model built from a {config_cls.__name__}, "
            f"got {type(model).__name__} with {type(config).__name__}"
        )
    num_items = getattr(config, "num_items", None)
    if num_items is not None and len(vocab) != num_items + 1:
        raise CheckpointError(f"vocab has {len(vocab)} entries, config wants {num_items + 1}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # clone: tied weights share storage, which safetensors refuses to write
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    weights, manifest_path = directory / WEIGHTS, directory / MANIFEST
    tmp_weights = directory / f".{WEIGHTS}.tmp{os.getpid()}"
    save_file(state, str(tmp_weights), metadata={"format": "pt", "kind": kind})
    digest = sha256_file(tmp_weights)
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": config_dict,
        "vocab": list(vocab),
        "dataset": dataset,
        "metrics": metrics,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "weights_file": WEIGHTS,
        "weights_sha256": digest,
        "torch_version": torch.__version__,
        "extra": extra or {},
    }
    tmp_manifest = directory / f".{MANIFEST}.tmp{os.getpid()}"
    tmp_manifest.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp_weights, weights)
    os.replace(tmp_manifest, manifest_path)
    return directory


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"no {MANIFEST} in {directory}: not a checkpoint directory")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {manifest.get('format_version')!r}, "
            f"this code reads {FORMAT_VERSION}"
        )
    return manifest


def verify_checkpoint(directory: str | Path) -> dict[str, Any]:
    """The manifest of a complete checkpoint: readable, of a known kind, its weights present and
    matching their hash (corrupted or replaced weights are refused)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    model_kind(manifest["kind"])
    weights = directory / manifest.get("weights_file", WEIGHTS)
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing")
    digest = sha256_file(weights)
    if digest != manifest.get("weights_sha256"):
        raise CheckpointError(
            f"{weights}: sha256 {digest} does not match the manifest's "
            f"{manifest.get('weights_sha256')!r} (corrupted or replaced weights)"
        )
    return manifest


def load_checkpoint(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[SequentialRecommender, dict[str, Any]]:
    """Rebuild the model (eval mode) from a checkpoint directory; verifies the weights' hash."""
    directory = Path(directory)
    manifest = verify_checkpoint(directory)
    kind = model_kind(manifest["kind"])
    model = build_model(manifest["kind"], _config_from_dict(kind.config_cls(), manifest["config"]))
    weights = directory / manifest.get("weights_file", WEIGHTS)
    model.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    return model.to(device).eval(), manifest


@dataclass(frozen=True)
class VocabularyChange:
    added: int  # items the new vocabulary has and the old one had not
    removed: int  # items the old one had and the new one has not
    moved: int  # items in both, at another index

    def __str__(self) -> str:
        return f"+{self.added:,} added, -{self.removed:,} removed, {self.moved:,} at another index"


def vocabulary_change(old: list[str], new: list[str]) -> VocabularyChange:
    old_index = {item: i for i, item in enumerate(old) if i > 0}
    new_index = {item: i for i, item in enumerate(new) if i > 0}
    moved = sum(1 for item, i in new_index.items() if item in old_index and old_index[item] != i)
    return VocabularyChange(
        added=len(new_index.keys() - old_index.keys()),
        removed=len(old_index.keys() - new_index.keys()),
        moved=moved,
    )
