"""Where things are by default (no heavy imports: the settings read this at start-up)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    """The shared datasets next to the repository when they are there, else ``<repo>/data``.

    The one default; ``stream.settings`` reads ``GLINTSTREAM_DATA_DIR`` over it."""
    shared = REPO.parent / "shared" / "datasets"
    return shared if shared.is_dir() else REPO / "data"
