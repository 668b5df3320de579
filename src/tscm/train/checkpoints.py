"""A run's checkpoint folders: `best/` (the weights to evaluate) and `last/` (the resumable state).

Every save builds a complete folder beside the target (`last.new/`) and moves it into place, so a
crash leaves the old folder or the new one, never a mix. The previous `last/` is kept as
`last.prev/`: if `last/` is damaged on resume (a bad disk, a kill mid-write of a copy), the run falls
back to it and says so.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

from torch import nn

from tscm.errors import TscmError
from tscm.models.checkpoint import load_checkpoint
from tscm.train.training_state import load_training_state, save_training_state

SaveModel = Callable[[Path, nn.Module, dict], None]


def replace_folder(new: Path, target: Path, keep_previous: Path | None = None) -> None:
    """Move the finished folder `new` to `target`; the old `target` becomes `keep_previous` (or is removed).

    A crash leaves `target`, or `target.old` (found by `existing_folder`).
    """
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    if old.exists():
        if keep_previous is None:
            shutil.rmtree(old)
        else:
            if keep_previous.exists():
                shutil.rmtree(keep_previous)
            os.replace(old, keep_previous)


def existing_folder(target: Path) -> Path | None:
    """`target`, or its `.old` copy when a crash interrupted `replace_folder`; None if neither."""
    if target.is_dir():
        return target
    old = target.with_name(target.name + ".old")
    return old if old.is_dir() else None


class RunCheckpoints:
    """Writes and reads the checkpoint folders of the run in `run_dir`."""

    def __init__(self, run_dir: Path, save_model: SaveModel) -> None:
        self.run_dir = Path(run_dir)
        self.save_model = save_model

    @property
    def last_dir(self) -> Path:
        return self.run_dir / "last"

    @property
    def best_dir(self) -> Path:
        return self.run_dir / "best"

    @property
    def previous_dir(self) -> Path:
        return self.run_dir / "last.prev"

    def _staged(self, name: str) -> Path:
        staging = self.run_dir / f"{name}.new"
        if staging.exists():
            shutil.rmtree(staging)
        return staging

    def save_last(self, model: nn.Module, extra: dict[str, Any], state: dict[str, Any]) -> None:
        staging = self._staged("last")
        try:
            self.save_model(staging, model, extra)
            save_training_state(staging, state)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # a full disk must not leave a half folder behind
            raise
        replace_folder(staging, self.last_dir, keep_previous=self.previous_dir)

    def save_best(self, model: nn.Module, extra: dict[str, Any]) -> None:
        staging = self._staged("best")
        try:
            self.save_model(staging, model, extra)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        replace_folder(staging, self.best_dir)

    def has_state(self) -> bool:
        return any(existing_folder(p) is not None for p in (self.last_dir, self.previous_dir))

    def load_last(self, warn: Callable[[str], None]) -> tuple[Path, nn.Module, dict[str, Any]]:
        """(folder, model, training state) of the newest intact resumable checkpoint.

        A damaged `last/` falls back to `last.prev/`, and `warn` says so; with neither intact the
        message names each folder and what was wrong with it.
        """
        problems = []
        for candidate in (existing_folder(self.last_dir), existing_folder(self.previous_dir)):
            if candidate is None:
                continue
            try:
                model, _ = load_checkpoint(candidate)  # checks the weights against their recorded fingerprint
                state = load_training_state(candidate)
            except TscmError as error:
                problems.append(f"{candidate.name}/: {error}")
                continue
            if problems:
                warn(f"warning: {problems[0]}; resuming from the previous checkpoint {candidate} instead "
                     f"(the steps since it are trained again)")
            return candidate, model, state
        if not problems:
            raise TscmError(f"--resume {self.run_dir}: no resumable checkpoint (expected {self.last_dir}); "
                            "the run stopped before its first checkpoint: start it again under the same name")
        raise TscmError(f"--resume {self.run_dir}: no intact checkpoint: " + "; ".join(problems))
