"""Writer of small seeded model checkpoints for the tests (pytest does not collect this module)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from tscm.models.checkpoint import save_checkpoint
from tscm.models import build_model


def write_checkpoint(path: Path, preset: str, seed: int,
                     prepare: Callable[[torch.nn.Module], torch.nn.Module] | None = None) -> Path:
    """Build `preset` with weights drawn from `seed`, optionally `prepare` it, save it at `path`."""
    torch.manual_seed(seed)
    model = build_model(preset)
    if prepare is not None:
        model = prepare(model)
    save_checkpoint(path, model, model.config)
    return path
