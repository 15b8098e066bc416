"""Which models exist: the names `glintstream train` takes and the checkpoint kinds they save.

Light on purpose (no torch import): the CLI lists the names for `--help`. ``model.checkpoint``
builds a kind's model from here, ``model.train`` a name's.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Kind:
    """A checkpoint kind: the module holding its config dataclass and the function building its
    model from a config (imported on first use)."""

    module: str
    config: str
    builder: str

    def config_cls(self) -> type:
        cls: type = getattr(importlib.import_module(self.module), self.config)
        return cls

    def build(self, config: Any) -> Any:
        return getattr(importlib.import_module(self.module), self.builder)(config)


KINDS: dict[str, Kind] = {
    "glintru": Kind("model.glintru", "GlintRUConfig", "build_glintru"),
    "sasrec": Kind("model.baselines", "SASRecConfig", "SASRec"),
    "gru4rec": Kind("model.baselines", "GRU4RecConfig", "GRU4Rec"),
    "lrurec": Kind("model.baselines", "LRURecConfig", "LRURec"),
    "popularity": Kind("model.baselines", "PopularityConfig", "Popularity"),
}

# training name -> (checkpoint kind, config values that name fixes)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "glintru": ("glintru", {"variant": "faithful"}),
    "glintru-streaming": ("glintru", {"variant": "streaming"}),
    "sasrec": ("sasrec", {}),
    "gru4rec": ("gru4rec", {}),
    "lrurec": ("lrurec", {}),
    "popularity": ("popularity", {}),
}
