"""Training throughput: images per second through forward + backward + optimiser step, per model preset.

A step is what the trainer does for one batch of tuples: B tuples of a query, a positive and K
negatives (B·(K+2) images; by default B, K and the batch-norm mode as the demo trains the preset: the
lite presets from nordland_teacher.yaml / nordland_student.yaml, the others from demo_teacher.yaml /
demo_student.yaml) through the model, the triplet loss on their descriptors, backward and an optimiser
step, set up as the trainer sets them up (`build_optimizer`: fused Adam; `to_fast_layout`: channels-last
on the CPU). Images are random tensors of the preset's size (decoding is not timed: the trainer reads
decoded pixels from memory). `kernels` "library" times the same step with the library's depthwise weight
gradient and unfolded batch norms (what tscm did before `models/depthwise.py` and the folding in
`models/efficientnet_lite.py`), beside "tscm". Presets take turns so load from other processes hits them
alike; the table gives the median and the best step.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Sequence

import torch

from tscm.bench.settings import KERNELS
from tscm.config import TrainConfig, load_config
from tscm.errors import TscmError
from tscm.losses import TupleDescriptors, build_preset
from tscm.models import depthwise, efficientnet_lite
from tscm.models.presets import build_model, get_preset, model_role, multiply_adds_per_image
from tscm.threads import limit_threads
from tscm.train.optim import batchnorm_mode, build_optimizer, to_fast_layout

DEFAULT_PRESETS = ("teacher-tiny", "student-tiny")


@dataclass
class TrainingRow:
    preset: str
    images_per_step: int
    threads: int
    median_images_per_s: float
    best_images_per_s: float
    median_step_ms: float
    steps: int
    multiply_adds: int  # per image, forward
    tuples: int = 0  # tuples per step (images_per_step / tuples images each)
    kernels: str = "tscm"  # "tscm" or "library" (see the module's docstring)


def demo_config(preset: str) -> TrainConfig:
    """The training preset with which the demo trains `preset` (Nordland's for the lite presets)."""
    role = model_role(get_preset(preset))
    data = "nordland" if preset.endswith("-lite") else "demo"
    return load_config(f"{data}_{role}", kind=role)


def demo_batch(preset: str) -> tuple[int, int]:
    """(tuples per batch, negatives per tuple) with which the demo trains `preset`."""
    config = demo_config(preset)
    return config.train.batch_size, config.mining.num_negatives


@contextlib.contextmanager
def library_kernels():
    """The library's depthwise weight gradient and unfolded batch norms, for the duration of the block."""
    saved = depthwise.MAX_PIXEL_PAIRS, efficientnet_lite.FOLD_RUNNING_BATCH_NORMS
    depthwise.MAX_PIXEL_PAIRS, efficientnet_lite.FOLD_RUNNING_BATCH_NORMS = 0, False
    try:
        yield
    finally:
        depthwise.MAX_PIXEL_PAIRS, efficientnet_lite.FOLD_RUNNING_BATCH_NORMS = saved


def _step_function(preset: str, tuples: int, negatives: int, seed: int,
                   kernels: str = "tscm") -> tuple[Callable[[], None], int, int]:
    torch.manual_seed(seed)
    model = build_model(preset)
    macs = multiply_adds_per_image(model)
    model = to_fast_layout(model, torch.device("cpu"))
    model.train()
    batchnorm_mode(model, demo_config(preset).train.batchnorm)
    optimizer = build_optimizer(model, SimpleNamespace(optimizer="adam", lr=1e-4, weight_decay=0.0, momentum=0.0))
    loss_fn = build_preset("none")
    height, width = model.config.image_size
    per_step = tuples * (negatives + 2)
    images = torch.randn(per_step, 3, height, width, generator=torch.Generator().manual_seed(seed))

    def run_step() -> None:
        descriptors = model(images)
        total, _ = loss_fn(TupleDescriptors.from_flat(descriptors, negatives), None)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    def step() -> None:
        with library_kernels() if kernels == "library" else contextlib.nullcontext():
            run_step()

    return step, per_step, macs


def bench_training(presets: Sequence[str] = DEFAULT_PRESETS, *, tuples: int | None = None,
                   negatives: int | None = None, threads: int = 2, steps: int = 10, rounds: int = 3, seed: int = 0,
                   kernels: Sequence[str] = ("tscm",), print_fn: Callable[[str], None] = print) -> list[TrainingRow]:
    """Median and best training throughput (images/s) of each preset (and kernel choice), taking turns.

    `tuples` / `negatives` (None: as the demo trains each preset) set the batch."""
    unknown = [k for k in kernels if k not in KERNELS]
    if unknown or not kernels:
        raise TscmError(f"training kernels {list(kernels)}: expected some of {', '.join(KERNELS)}")
    rows = []
    with limit_threads(torch=threads):
        shape_of = {}
        for preset in presets:
            demo_tuples, demo_negatives = demo_batch(preset)
            shape_of[preset] = (tuples or demo_tuples, demo_negatives if negatives is None else negatives)
        cases = [(preset, kernel) for preset in presets for kernel in kernels]
        steps_of = {case: _step_function(case[0], *shape_of[case[0]], seed, case[1]) for case in cases}
        seconds: dict[tuple[str, str], list[float]] = {case: [] for case in cases}
        for step, _, _ in steps_of.values():
            step()  # warm-up: first-call allocations are not the steady state
        for _ in range(rounds):
            for case, (step, _, _) in steps_of.items():
                for _ in range(steps):
                    started = time.perf_counter()
                    step()
                    seconds[case].append(time.perf_counter() - started)
    print_fn(f"training throughput: forward + backward + Adam step (tuples × images per tuple as given, default: as "
             f"the demo trains), {threads} threads; median and best step over {rounds} turns of {steps} steps")
    print_fn(f"{'preset':<16} {'kernels':>8} {'batch':>7} {'images/step':>11} {'median img/s':>13} {'best img/s':>11} "
             f"{'median ms/step':>15} {'MACs/img':>10}")
    for (preset, kernel), (_, per_step, macs) in steps_of.items():
        median = statistics.median(seconds[preset, kernel])
        best = min(seconds[preset, kernel])
        row = TrainingRow(preset, per_step, threads, per_step / median, per_step / best, 1000 * median,
                          len(seconds[preset, kernel]), macs, tuples=shape_of[preset][0], kernels=kernel)
        rows.append(row)
        batch = f"{shape_of[preset][0]}×{shape_of[preset][1] + 2}"
        print_fn(f"{preset:<16} {kernel:>8} {batch:>7} {per_step:>11} {row.median_images_per_s:>13.0f} "
                 f"{row.best_images_per_s:>11.0f} {row.median_step_ms:>15.1f} {macs / 1e6:>9.1f}M")
    if len(kernels) > 1:
        by_case = {(row.preset, row.kernels): row.median_step_ms for row in rows}
        for preset in presets:
            print_fn(f"{preset}: library / tscm median step time {by_case[preset, 'library'] / by_case[preset, 'tscm']:.2f}×")
    return rows
