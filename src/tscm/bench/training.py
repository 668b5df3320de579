"""Training throughput: images per second through forward + backward + optimiser step, per model preset.

A step is what the trainer does for one batch of tuples: B tuples of a query, a positive and K
negatives (B·(K+2) images; by default B and K as the demo trains the preset's role, from
demo_teacher.yaml / demo_student.yaml) through the model, the triplet loss on their descriptors,
backward and an optimiser step, set up as the trainer sets them up (`build_optimizer`: fused Adam;
`to_fast_layout`: channels-last on the CPU). Images are random tensors of the preset's size
(decoding is not timed: the trainer reads decoded pixels from memory). Presets take turns so load
from other processes hits them alike; the table gives the median and the best step.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable, Sequence

import torch

from tscm.config import load_config
from tscm.losses import TupleDescriptors, build_preset
from tscm.models.presets import build_model, get_preset, model_role, multiply_adds_per_image
from tscm.threads import limit_threads
from tscm.train.optim import build_optimizer, to_fast_layout

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


def demo_batch(preset: str) -> tuple[int, int]:
    """(tuples per batch, negatives per tuple) with which the demo trains `preset`'s role."""
    role = model_role(get_preset(preset))
    config = load_config("demo_teacher" if role == "teacher" else "demo_student", kind=role)
    return config.train.batch_size, config.mining.num_negatives


def _step_function(preset: str, tuples: int, negatives: int, seed: int) -> tuple[Callable[[], None], int, int]:
    torch.manual_seed(seed)
    model = build_model(preset)
    macs = multiply_adds_per_image(model)
    model = to_fast_layout(model, torch.device("cpu"))
    model.train()
    optimizer = build_optimizer(model, SimpleNamespace(optimizer="adam", lr=1e-4, weight_decay=0.0, momentum=0.0))
    loss_fn = build_preset("none")
    height, width = model.config.image_size
    per_step = tuples * (negatives + 2)
    images = torch.randn(per_step, 3, height, width, generator=torch.Generator().manual_seed(seed))

    def step() -> None:
        descriptors = model(images)
        total, _ = loss_fn(TupleDescriptors.from_flat(descriptors, negatives), None)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()

    return step, per_step, macs


def bench_training(presets: Sequence[str] = DEFAULT_PRESETS, *, tuples: int | None = None,
                   negatives: int | None = None, threads: int = 2, steps: int = 10, rounds: int = 3, seed: int = 0,
                   print_fn: Callable[[str], None] = print) -> list[TrainingRow]:
    """Median and best training throughput (images/s) of each preset, the presets taking turns.

    `tuples` / `negatives` (None: as the demo trains each preset's role) set the batch."""
    rows = []
    with limit_threads(torch=threads):
        shape_of = {}
        for preset in presets:
            demo_tuples, demo_negatives = demo_batch(preset)
            shape_of[preset] = (tuples or demo_tuples, demo_negatives if negatives is None else negatives)
        steps_of = {preset: _step_function(preset, *shape_of[preset], seed) for preset in presets}
        seconds: dict[str, list[float]] = {preset: [] for preset in presets}
        for step, _, _ in steps_of.values():
            step()  # warm-up: first-call allocations are not the steady state
        for _ in range(rounds):
            for preset, (step, _, _) in steps_of.items():
                for _ in range(steps):
                    started = time.perf_counter()
                    step()
                    seconds[preset].append(time.perf_counter() - started)
    print_fn(f"training throughput: forward + backward + Adam step (tuples × images per tuple as given, default: as "
             f"the demo trains), {threads} threads; median and best step over {rounds} turns of {steps} steps")
    print_fn(f"{'preset':<16} {'batch':>7} {'images/step':>11} {'median img/s':>13} {'best img/s':>11} "
             f"{'median ms/step':>15} {'MACs/img':>10}")
    for preset, (_, per_step, macs) in steps_of.items():
        median = statistics.median(seconds[preset])
        best = min(seconds[preset])
        row = TrainingRow(preset, per_step, threads, per_step / median, per_step / best, 1000 * median,
                          len(seconds[preset]), macs, tuples=shape_of[preset][0])
        rows.append(row)
        batch = f"{shape_of[preset][0]}×{shape_of[preset][1] + 2}"
        print_fn(f"{preset:<16} {batch:>7} {per_step:>11} {row.median_images_per_s:>13.0f} {row.best_images_per_s:>11.0f} "
                 f"{row.median_step_ms:>15.1f} {macs / 1e6:>9.1f}M")
    return rows
