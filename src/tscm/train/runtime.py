"""Where training runs: device, mixed precision, seeds, and DistributedDataParallel plumbing.

Under `torchrun` (WORLD_SIZE > 1) the process group is initialised (nccl on GPU, gloo on CPU);
otherwise everything is a no-op with rank 0 of 1. Gathers use fixed-size tensors (no pickle).
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from tscm.distributed import Collectives
from tscm.errors import TscmError


@dataclass
class Runtime(Collectives):
    device: torch.device
    rank: int = 0
    world_size: int = 1
    amp_dtype: torch.dtype | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TscmError(f"train.device={name}: CUDA is not available on this machine; use cpu or auto")
    return torch.device(name)


def resolve_amp(setting: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision only on GPU: auto picks bfloat16 where supported, else float16."""
    if device.type != "cuda" or setting == "off":
        if setting in ("bf16", "fp16") and device.type != "cuda":
            raise TscmError(f"train.amp={setting}: mixed precision needs a GPU; use auto or off on {device}")
        return None
    if setting == "fp16":
        return torch.float16
    if setting == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def start_runtime(device_setting: str, amp_setting: str) -> Runtime:
    """Initialise the process group under torchrun and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        device = resolve_device(device_setting)
        return Runtime(device=device, amp_dtype=resolve_amp(amp_setting, device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_setting == "cpu" or (device_setting == "auto" and not torch.cuda.is_available()):
        device = torch.device("cpu")
    else:
        device = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Runtime(device=device, rank=rank, world_size=world_size, amp_dtype=resolve_amp(amp_setting, device))


def stop_runtime(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda{index}"] = cuda_state
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            if f"cuda{index}" in state:
                torch.cuda.set_rng_state(state[f"cuda{index}"], index)
