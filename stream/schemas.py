"""The published message contracts: JSON Schemas generated from the models the code uses.

``glintstream schemas --out deploy/schemas`` writes one file per message; a test keeps the
committed files equal to what the models generate, and the end-to-end tests validate what the
system emits against the committed files. A consumer in another language reads the files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from stream.clicks import ClickContract
from stream.messages import (
    LOOKUP_PATH,
    SCHEMA_VERSION,
    DeadLetter,
    ModelUpdate,
    Recommendation,
    UserRecommendations,
    WorkerStatus,
)

DRAFT = "https://json-schema.org/draft/2020-12/schema"

# message name -> (its model, what carries it: a topic setting or an HTTP path)
MESSAGES: dict[str, tuple[type[BaseModel], str]] = {
    "click": (ClickContract, "topics.clicks"),
    "recommendation": (Recommendation, "topics.recommendations"),
    "dead-letter": (DeadLetter, "topics.dlq"),
    "model-update": (ModelUpdate, "topics.model_updates"),
    "worker-status": (WorkerStatus, "topics.worker_status"),
    "user-recommendations": (UserRecommendations, f"GET {LOOKUP_PATH}"),
}


def json_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of one message: what a producer may send (click) or what we emit."""
    model, carrier = MESSAGES[name]
    # a click is what a producer may send; the others are what glintstream writes
    if model is ClickContract:
        schema = model.model_json_schema(mode="validation")
    else:
        schema = model.model_json_schema(mode="serialization")
    return {
        "$schema": DRAFT,
        "$id": f"glintstream/{name}.schema.json",
        "x-schema-version": SCHEMA_VERSION,
        "x-carried-by": carrier,
        **schema,
    }


def schema_text(name: str) -> str:
    """The schema of one message as a registry takes it (the file's content)."""
    return json.dumps(json_schema(name), indent=2, sort_keys=True)


def bare_schema(name: str) -> dict[str, Any]:
    """The schema without its ``$schema``, ``$id`` and ``x-`` annotations: to embed in another
    document (the embedded broker's registry nests it under ``value``)."""
    return {
        k: v for k, v in json_schema(name).items() if not k.startswith(("$schema", "$id", "x-"))
    }


def filename(name: str) -> str:
    return f"{name}.schema.json"


def write_schemas(directory: Path) -> list[Path]:
    """Write every message's schema into ``directory``; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name in MESSAGES:
        path = directory / filename(name)
        path.write_text(schema_text(name) + "\n")
        written.append(path)
    return written


def load_schema(directory: Path, name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((directory / filename(name)).read_text())
    return loaded
