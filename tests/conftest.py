"""Test-wide fixtures: where the shared real data lives, and how its absence is handled.

The real images (e.g. Nordland) live beside the checkout in `../shared/data` (or wherever
TSCM_SHARED_DIR points). On a user's clone they are usually absent and the tests that need them
skip, saying so; CI sets TSCM_REQUIRE_SHARED_DATA=1, which turns that skip into a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("TSCM_SHARED_DIR", REPOSITORY.parent / "shared"))


def require_shared(relative: str) -> Path:
    """The shared data folder `relative` (e.g. "data/nordland"); skips, or fails under CI, when absent."""
    path = shared_dir() / relative
    if path.exists():
        return path
    message = f"shared data {path} is absent (set TSCM_SHARED_DIR to the folder holding data/)"
    if os.environ.get("TSCM_REQUIRE_SHARED_DATA") == "1":
        pytest.fail(message + "; TSCM_REQUIRE_SHARED_DATA=1 requires it")
    pytest.skip(message)


@pytest.fixture(scope="session")
def nordland_root() -> Path:
    """The real Nordland summer/winter frames (../shared/data/nordland)."""
    return require_shared("data/nordland")
