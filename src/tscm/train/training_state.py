"""Training state on disk without pickle: nested state dicts split into safetensors + JSON.

Optimiser, scheduler, gradient-scaler and miner states are nested dicts/lists of tensors, arrays
and plain values. `pack_state` replaces every tensor/array by a reference into a flat tensor map
(saved with safetensors) and keeps the rest as JSON; dicts keep their key types (optimisers key
their state by int: such dicts are stored as key/value pairs). `unpack_state` inverts it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tscm.errors import TscmError
from tscm.fileio import atomic_path, read_json, write_json_atomic


@dataclass
class RunProgress:
    """Where a run stands: the part of a resumable checkpoint that is neither weights, optimiser nor caches."""

    position: dict[str, int] = field(default_factory=lambda: {"epoch": 0, "chunk": 0, "batch": 0})
    global_step: int = 0
    best_recall: float = -math.inf
    best_epoch: int = 0
    epochs_without_gain: int = 0
    untrained_recall: dict[str, float] | None = None
    last_val: dict[str, Any] | None = None
    epoch_loss: list = field(default_factory=lambda: [0.0, 0])  # running sum and count of the epoch's step losses

    @property
    def best_recall_or_none(self) -> float | None:
        """The best validation R@1 so far, None before the first validation."""
        return self.best_recall if math.isfinite(self.best_recall) else None

    def record_validation(self, recall_at_1: float, epoch: int) -> bool:
        """Note the validation R@1 after `epoch` epochs; True when it is the best so far."""
        if recall_at_1 > self.best_recall:
            self.best_recall, self.best_epoch, self.epochs_without_gain = recall_at_1, epoch, 0
            return True
        self.epochs_without_gain += 1
        return False

    def add_step_loss(self, loss: float) -> None:
        self.epoch_loss = [self.epoch_loss[0] + loss, self.epoch_loss[1] + 1]

    def take_epoch_loss(self) -> float:
        """The epoch's mean step loss (NaN without a step), and a fresh sum for the next epoch."""
        total, count = self.epoch_loss
        self.epoch_loss = [0.0, 0]
        return total / count if count else float("nan")

    def to_state(self) -> dict[str, Any]:
        return {"position": dict(self.position), "global_step": self.global_step, "best_recall": self.best_recall_or_none,
                "best_epoch": self.best_epoch, "epochs_without_gain": self.epochs_without_gain,
                "untrained_recall": self.untrained_recall, "last_val": self.last_val,
                "epoch_loss": list(self.epoch_loss)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RunProgress:
        return cls(position=dict(state["position"]), global_step=int(state["global_step"]),
                   best_recall=state["best_recall"] if state["best_recall"] is not None else -math.inf,
                   best_epoch=int(state["best_epoch"]), epochs_without_gain=int(state["epochs_without_gain"]),
                   untrained_recall=state["untrained_recall"], last_val=state["last_val"],
                   epoch_loss=[float(state["epoch_loss"][0]), int(state["epoch_loss"][1])])


_TENSOR = "__tensor__"
_ARRAY = "__ndarray__"
_DICT = "__dict__"
_TUPLE = "__tuple__"


def pack_state(obj: Any, tensors: dict[str, torch.Tensor] | None = None, prefix: str = "s") -> tuple[Any, dict[str, torch.Tensor]]:
    """(JSON-able structure, flat tensor map) for a nested state."""
    tensors = {} if tensors is None else tensors
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}.{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {_TENSOR: key}, tensors
    if isinstance(obj, np.ndarray):
        key = f"{prefix}.{len(tensors)}"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {_ARRAY: key}, tensors
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TscmError(f"training state: cannot store a dict key of type {type(k).__name__}")
        plain = all(isinstance(k, str) and not k.startswith("__") for k in obj)
        if plain:  # an ordinary JSON object
            return {k: pack_state(v, tensors, prefix)[0] for k, v in obj.items()}, tensors
        return {_DICT: [[k, pack_state(v, tensors, prefix)[0]] for k, v in obj.items()]}, tensors
    if isinstance(obj, (list, tuple)):
        packed = [pack_state(v, tensors, prefix)[0] for v in obj]
        return ({_TUPLE: packed} if isinstance(obj, tuple) else packed), tensors
    if isinstance(obj, np.generic):
        return obj.item(), tensors
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj, tensors
    raise TscmError(f"training state: cannot store a value of type {type(obj).__name__}")


def unpack_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `pack_state`."""
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if _ARRAY in obj:
            return tensors[obj[_ARRAY]].numpy()
        if _DICT in obj:
            return {k: unpack_state(v, tensors) for k, v in obj[_DICT]}
        if _TUPLE in obj:
            return tuple(unpack_state(v, tensors) for v in obj[_TUPLE])
        return {k: unpack_state(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack_state(v, tensors) for v in obj]
    return obj


STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"


def save_training_state(folder: Path, state: dict[str, Any]) -> None:
    """Write `state` into `folder` as training_state.safetensors + training_state.json."""
    structure, tensors = pack_state(state)
    with atomic_path(folder / STATE_TENSORS) as tmp:
        save_file(tensors, str(tmp))
    write_json_atomic(folder / STATE_JSON, structure)


def load_training_state(folder: Path) -> dict[str, Any]:
    json_path, tensor_path = folder / STATE_JSON, folder / STATE_TENSORS
    if not json_path.is_file() or not tensor_path.is_file():
        raise TscmError(f"{folder}: no training state ({STATE_JSON} + {STATE_TENSORS}); not a resumable checkpoint")
    try:
        structure = read_json(json_path, "training state")
        tensors = load_file(str(tensor_path))
        return unpack_state(structure, tensors)
    except TscmError as error:  # the JSON out of bounds or not JSON: the message names the file
        raise TscmError(f"{folder}: unreadable training state ({error})") from None
    except Exception as error:  # safetensors, JSON and a damaged structure raise their own types
        raise TscmError(f"{folder}: unreadable training state ({type(error).__name__}: {error})") from None
