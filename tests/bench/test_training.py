"""`tscm bench training`: the step is the trainer's (fused Adam, channels-last) on the demo's batch."""

from __future__ import annotations

import pytest
import torch

from tscm.bench.training import bench_training, demo_batch
from tscm.config import load_config
from tscm.errors import TscmError


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


def test_lite_presets_take_the_nordland_batch():
    config = load_config("nordland_student")
    assert demo_batch("student-lite") == (config.train.batch_size, config.mining.num_negatives)


def test_library_kernels_are_timed_beside_tscm_ones_and_put_back():
    from tscm.bench.training import library_kernels
    from tscm.models import depthwise, efficientnet_lite

    lines = []
    rows = bench_training(["student-lite"], tuples=2, negatives=1, threads=1, steps=1, rounds=1,
                          kernels=("tscm", "library"), print_fn=lines.append)
    assert [row.kernels for row in rows] == ["tscm", "library"]
    assert any(line.startswith("student-lite: library / tscm median step time") for line in lines)
    assert depthwise.MAX_PIXEL_PAIRS > 0 and efficientnet_lite.FOLD_RUNNING_BATCH_NORMS
    with library_kernels():
        assert depthwise.MAX_PIXEL_PAIRS == 0 and not efficientnet_lite.FOLD_RUNNING_BATCH_NORMS
    assert depthwise.MAX_PIXEL_PAIRS > 0 and efficientnet_lite.FOLD_RUNNING_BATCH_NORMS
    with pytest.raises(TscmError, match="training kernels"):
        bench_training(["student-lite"], kernels=("fast",), print_fn=lines.append)
