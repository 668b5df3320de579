"""The collectives tscm's multi-process stages use under `torchrun`, on fixed-size tensors (no pickle).

Training (`train.runtime.Runtime`) and the sharded map build (`deploy/retrieval/map_builder`) both
share work out by rank and gather the pieces back in rank order. `Collectives` holds that once; a
class that has `rank`, `world_size` and `device` gets it by inheriting. With one process every
collective is a no-op that returns its input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from tscm.errors import TscmError


def shard_bounds(count: int, world_size: int) -> np.ndarray:
    """The world_size + 1 boundaries of contiguous, near-equal shares of `count` items."""
    return np.linspace(0, count, world_size + 1).round().astype(int)


def error_message(error: BaseException) -> str:
    """An error as one line: a TscmError's own message, else the exception type and text."""
    return str(error) if isinstance(error, TscmError) else f"{type(error).__name__}: {error}"


class Collectives:
    """Collectives over the default process group; the class inheriting it has `rank`, `world_size`, `device`."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_true(self, flag: bool) -> bool:
        """True only if `flag` holds on every process."""
        if not self.distributed:
            return flag
        value = torch.tensor([1 if flag else 0], dtype=torch.int64, device=self._comm_device())
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())

    def max(self, value: float) -> float:
        """The largest `value` over every process."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor.item())

    def weighted_mean(self, values: dict[str, float], weight: float) -> dict[str, float]:
        """Mean of every process's `values` weighted by `weight` (e.g. its number of tuples)."""
        if not self.distributed:
            return values
        keys = sorted(values)
        data = torch.tensor([weight] + [weight * values[k] for k in keys], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(data)
        return {k: float(data[i + 1] / data[0]) for i, k in enumerate(keys)}

    def broadcast_text(self, text: str) -> str:
        """Rank 0's `text` on every process (e.g. a run folder named from the clock)."""
        if not self.distributed:
            return text
        data = torch.zeros(1024, dtype=torch.uint8)
        encoded = text.encode("utf-8")[:1023]
        if self.is_main:
            data[: len(encoded)] = torch.tensor(list(encoded), dtype=torch.uint8)
        data = data.to(self._comm_device())
        dist.broadcast(data, src=0)
        raw = bytes(data.cpu().tolist())
        return raw.split(b"\0", 1)[0].decode("utf-8")

    def shard(self, count: int) -> range:
        """This process's contiguous share of `count` items."""
        bounds = shard_bounds(count, self.world_size)
        return range(int(bounds[self.rank]), int(bounds[self.rank + 1]))

    def gather_rows(self, local: np.ndarray, count: int) -> np.ndarray:
        """Concatenate every process's `shard(count)` rows (N_r×D float arrays) in rank order, on every process."""
        if not self.distributed:
            return local
        sizes = [int(n) for n in np.diff(shard_bounds(count, self.world_size))]
        padded = self._padded_rows(local, sizes)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return np.concatenate([p[:n].cpu().numpy() for p, n in zip(parts, sizes)], axis=0)

    def gather_rows_to_main(self, local: np.ndarray, sizes: list[int]) -> np.ndarray | None:
        """On rank 0, every rank's rows (rank r holds sizes[r] rows of one width) in rank order; None elsewhere.

        A gather, not an all-gather: only rank 0 ever holds the whole array.
        """
        if not self.distributed:
            return local
        padded = self._padded_rows(local, sizes)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)] if self.is_main else None
        dist.gather(padded, parts, dst=0)
        if parts is None:
            return None
        return np.concatenate([part[:n].cpu().numpy() for part, n in zip(parts, sizes)], axis=0)

    def gather_bytes(self, data: bytes) -> list[bytes]:
        """Every process's `data`, in rank order, on every process."""
        if not self.distributed:
            return [data]
        device = self._comm_device()
        size = torch.tensor([len(data)], dtype=torch.int64, device=device)
        sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(self.world_size)]
        dist.all_gather(sizes, size)
        longest = max(int(s.item()) for s in sizes)
        padded = torch.zeros(max(longest, 1), dtype=torch.uint8)
        if data:
            padded[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        padded = padded.to(device)
        parts = [torch.zeros_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return [bytes(part[: int(n.item())].cpu().numpy().tobytes()) for part, n in zip(parts, sizes)]

    def check(self, error: BaseException | None) -> None:
        """Raise on every rank when any rank failed: its own error there, the first failure's message elsewhere."""
        messages = [m.decode("utf-8") for m in self.gather_bytes(b"" if error is None else error_message(error).encode("utf-8"))]
        if error is not None:
            raise error
        failed = [(r, m) for r, m in enumerate(messages) if m]
        if failed:
            rank, message = failed[0]
            raise TscmError(f"rank {rank} of {self.world_size} failed: {message}")

    def _padded_rows(self, local: np.ndarray, sizes: list[int]) -> torch.Tensor:
        """`local` as float32 rows, zero-padded to the largest share (collectives need equal shapes)."""
        width = local.shape[1]
        padded = torch.zeros((max(max(sizes), 1), width), dtype=torch.float32, device=self._comm_device())
        padded[: len(local)] = torch.from_numpy(np.ascontiguousarray(local, dtype=np.float32)).to(padded.device)
        return padded

    def _comm_device(self) -> torch.device:
        if not dist.is_initialized():
            return torch.device("cpu")
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


@dataclass
class ProcessGroup(Collectives):
    """The collectives alone, for a stage that needs no training runtime (e.g. the sharded map build)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
