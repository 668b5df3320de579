"""What `tscm bench` can run and with which knobs: its parts, runtimes and training kernels, and `BenchSettings`
(one field per flag, each with its range). Light (no torch), so that the command line offers them from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from tscm.config.fields import check_fields, setting
from tscm.config.option_checks import MAX_SEED
from tscm.errors import TscmError
from tscm.inference.choices import RUNTIMES

PARTS = ("extraction", "accuracy", "matching", "city", "mining", "training", "streaming")
STREAMING_RUNTIMES = ("torch", "onnx")  # the recognizer's runtimes that need no calibration images
DEFAULT_PARTS = ("extraction", "matching", "city")
BENCH_RUNTIMES = (*RUNTIMES, "onnx-auto")  # onnx-auto: onnx-int8 with precision auto, the graph it keeps
KERNELS = ("tscm", "library")  # tscm's training kernels, or the library's (tscm.bench.training)
MAX_BUDGET_S = 86_400.0  # --budget: seconds of timing per model and batch size; a day is surely a slip
# Descriptor values a synthetic database may hold (size × dim): 4 GiB of float32 (the default 250000 × 2048
# is half of it); mining generates in float64 with temporaries, so its place set gets a quarter.
MAX_SYNTHETIC_VALUES = 1 << 30
MAX_MINING_VALUES = 1 << 28


@dataclass
class BenchSettings:
    """Every knob of the suite, one per flag (tscm.config.quick.QUICK_BENCH makes a smoke test in seconds).

    The count ranges: beyond the highest a value is a slip of the keyboard that would take hours or all the memory
    before anything failed; below the lowest the part has nothing to measure (mining needs two places of 12
    headings for a negative: 13 database images).
    """

    AS_FLAGS: ClassVar[bool] = True  # messages name a knob by its flag (--mining-db)

    parts: tuple[str, ...] = setting(DEFAULT_PARTS, choices=PARTS)
    threads: int = setting(2, least=1)
    quick: bool = False
    seed: int = setting(0, least=0, most=MAX_SEED)
    # extraction
    models: list[str] = setting(["student-paper", "teacher-paper"])
    runtimes: list[str] = setting(list(BENCH_RUNTIMES), choices=BENCH_RUNTIMES)
    batch_sizes: list[int] = setting([1, 16], least=1)
    cycles: int = setting(3, least=1, most=1000)
    calls: int = setting(5, least=1, most=100_000)
    budget: float = setting(60.0, above=0, most=MAX_BUDGET_S)
    # accuracy
    checkpoint: str | None = None
    accuracy_data: str | None = None
    accuracy_split: str = "test"
    # matching
    sizes: list[int] = setting([10_000, 250_000], least=2, most=10_000_000)
    queries: int = setting(1000, least=1, most=1_000_000)
    single: int = setting(200, least=1, most=1_000_000)
    rounds: int = setting(3, least=1, most=1000)  # turns of (single-query block, batch), side by side
    dim: int = setting(2048, least=2, most=65_536)
    # GPU rows (only where a CUDA device is visible)
    gpu: bool = True
    # city
    city: str = "demo"
    city_split: str = "test"
    radius: float = setting(25.0, above=0)
    # mining
    mining_db: int = setting(10_000, least=13, most=1_000_000)
    mining_queries: int = setting(7_416, least=1, most=1_000_000)
    mining_loop_queries: int = 300
    # training
    training_presets: list[str] = setting(["teacher-tiny", "student-tiny"])
    training_steps: int = setting(10, least=1, most=100_000)
    training_kernels: list[str] = setting(["tscm"], choices=KERNELS)
    # streaming
    streaming_preset: str = "student-lite"
    streaming_sizes: list[int] = setting([1000, 10_000, 100_000], least=1, most=10_000_000)
    streaming_frames: int = 200
    streaming_runtimes: list[str] = setting(["torch", "onnx"], choices=STREAMING_RUNTIMES)
    streaming_exclude_recent: int = setting(20, least=0)

    @property
    def mining_dim(self) -> int:
        """The descriptor dimension the mining part generates: --dim with --quick, else 2048 (Pittsburgh's)."""
        return self.dim if self.quick else 2048

    def check(self) -> None:
        """Every knob's choices and range, then the checks across knobs; raises TscmError naming the flag."""
        check_fields(self)
        if not self.parts:
            raise TscmError(f"bench parts {list(self.parts)}: expected some of {', '.join(PARTS)}")
        if not self.sizes:
            raise TscmError("--sizes: expected at least one database size")
        if not self.batch_sizes:
            raise TscmError(f"--batch-sizes: expected positive batch sizes, got {self.batch_sizes}")
        if "matching" in self.parts and max(self.sizes) * self.dim > MAX_SYNTHETIC_VALUES:
            raise TscmError(f"--sizes {max(self.sizes)} with --dim {self.dim}: "
                            f"{max(self.sizes) * self.dim * 4 / 2**30:.1f} GiB of descriptors; expected size × dim "
                            f"≤ {MAX_SYNTHETIC_VALUES} (4 GiB)")
        if "mining" in self.parts and (self.mining_db + self.mining_queries) * self.mining_dim > MAX_MINING_VALUES:
            raise TscmError(f"--mining-db {self.mining_db} with --mining-queries {self.mining_queries}: "
                            f"{(self.mining_db + self.mining_queries) * self.mining_dim} descriptor values at dim "
                            f"{self.mining_dim}; expected (database + queries) × dim ≤ {MAX_MINING_VALUES}")
        if "accuracy" in self.parts and not self.checkpoint:
            raise TscmError("bench part 'accuracy' needs --checkpoint CKPT (the model whose runtimes are compared)")
