"""Where things are by default: under the working directory the process starts in, never where
the code lives, so an installed package keeps no state beside site-packages and a container
depends on no source checkout. `make demo`, `make test` and the README's commands run from the
repository root, where these are the checkout's `.run/`, `checkpoints/` and `data/`.

The one definition of each default path (no heavy imports: the settings read this at start-up);
``stream.settings`` reads ``GLINTSTREAM_*_DIR`` over them.
"""

from __future__ import annotations

from pathlib import Path


def default_data_dir() -> Path:
    """``../shared/datasets`` when it exists (the development machines keep the datasets beside
    the checkouts), else ``./data``."""
    here = Path.cwd()
    shared = here.parent / "shared" / "datasets"
    return shared if shared.is_dir() else here / "data"


def default_run_dir() -> Path:
    """``./.run``: pids and logs."""
    return Path.cwd() / ".run"


def default_state_dir() -> Path:
    """``./.run/state``: the per-user RocksDB state of the workers and the fine-tune job."""
    return default_run_dir() / "state"


def default_registry_dir() -> Path:
    """``./.run/registry``: the model registry (the publishers' side)."""
    return default_run_dir() / "registry"


def default_checkpoint_dir() -> Path:
    """``./checkpoints/ml-1m``: served while the registry is empty."""
    return Path.cwd() / "checkpoints" / "ml-1m"
