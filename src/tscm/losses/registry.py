"""Losses by name: `LOSSES` maps a name to its class; `build_loss(name, **options)` builds one."""

from __future__ import annotations

from typing import Callable, TypeVar

from tscm.errors import TscmError
from tscm.losses.base import DistillationLoss

LOSSES: dict[str, type[DistillationLoss]] = {}

LossClass = TypeVar("LossClass", bound=type[DistillationLoss])


def register_loss(name: str) -> Callable[[LossClass], LossClass]:
    """Class decorator: make a loss buildable by `name`."""

    def register(cls: LossClass) -> LossClass:
        if name in LOSSES:
            raise TscmError(f"loss name '{name}' is registered twice")
        cls.name = name
        LOSSES[name] = cls
        return cls

    return register


def build_loss(name: str, **options) -> DistillationLoss:
    """Build the loss registered as `name` with keyword `options` (e.g. margin=0.1)."""
    if name not in LOSSES:
        raise TscmError(f"unknown loss '{name}'; expected one of: {', '.join(sorted(LOSSES))}")
    try:
        return LOSSES[name](**options)
    except TypeError as error:
        raise TscmError(f"loss '{name}': bad options {sorted(options)}: {error}") from None
