"""`tscm bench training`: the step is the trainer's (fused Adam, channels-last) on the demo's batch."""

from __future__ import annotations

import torch

from tscm.bench.training import bench_training, demo_batch
from tscm.config import load_config


def test_default_batch_is_the_demo_batch_of_each_role():
    for preset, yaml_name in (("teacher-tiny", "demo_teacher"), ("student-tiny", "demo_student")):
        config = load_config(yaml_name)
        assert demo_batch(preset) == (config.train.batch_size, config.mining.num_negatives)


def test_rows_report_the_batch_and_a_positive_rate():
    lines = []
    threads = torch.get_num_threads()
    rows = bench_training(["student-tiny"], threads=1, steps=1, rounds=1, print_fn=lines.append)
    assert torch.get_num_threads() == threads  # the thread count comes back
    (row,) = rows
    tuples, negatives = demo_batch("student-tiny")
    assert row.tuples == tuples and row.images_per_step == tuples * (negatives + 2)
    assert row.steps == 1 and row.median_images_per_s > 0 and row.multiply_adds > 0
    assert any(line.startswith("student-tiny") and f"{tuples}×{negatives + 2}" in line for line in lines)

    (small,) = bench_training(["teacher-tiny"], tuples=2, negatives=1, threads=1, steps=1, rounds=1, print_fn=lines.append)
    assert small.tuples == 2 and small.images_per_step == 6
