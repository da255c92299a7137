"""Where the repository and the shared data sets are."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"
PLANETOID = SHARED_DATA / "planetoid"


def require_planetoid() -> Path:
    """The shared Cora files; the calling test skips, saying why, where they are absent."""
    if not (PLANETOID / "ind.cora.x").exists():
        pytest.skip(f"Cora is not available at {PLANETOID} (the shared data folder is absent)")
    return PLANETOID
