"""The source checkout this package runs from, for tests that read its files (the README,
deploy/). Nothing outside tests may use it: an installed package has no checkout."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
