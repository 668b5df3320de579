"""Test-wide fixtures: where the shared real data lives, and how its absence is handled; small data every
package's tests share (a synthetic city, untrained tiny checkpoints), made once per session.

The real images (e.g. Nordland) live beside the checkout in `../shared/data` (or wherever
TSCM_SHARED_DIR points). On a user's clone they are usually absent and the tests that need them
skip, saying so; CI sets TSCM_REQUIRE_SHARED_DATA=1, which turns that skip into a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers.model_files import write_checkpoint
from tscm.data.synthetic.city import ensure_synthetic_city

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


# ---- shared read-only test data (session-wide: made once; copy before damaging) ------------------
@pytest.fixture(scope="session")
def city(tmp_path_factory) -> Path:
    """The tiny synthetic city (seed 0: 48 database images and 24 queries per split, 64 px)."""
    return ensure_synthetic_city("tiny", seed=0, cache_dir=tmp_path_factory.mktemp("city"), progress=False)


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory) -> Path:
    """An untrained student-tiny checkpoint folder, weights drawn from seed 0."""
    return write_checkpoint(tmp_path_factory.mktemp("checkpoints") / "student", "student-tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_student_other(tmp_path_factory) -> Path:
    """Another untrained student-tiny checkpoint (seed 1): same shapes, another fingerprint."""
    return write_checkpoint(tmp_path_factory.mktemp("checkpoints") / "student_other", "student-tiny", seed=1)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """An untrained teacher-tiny checkpoint folder, weights drawn from seed 0."""
    return write_checkpoint(tmp_path_factory.mktemp("checkpoints") / "teacher", "teacher-tiny", seed=0)
