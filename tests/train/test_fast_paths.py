"""The trainer's fast paths give what the plain ones give: decoded images kept in memory, descriptors
of them, the partial mining refresh, and fused Adam on channels-last parameters after a resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tscm.config import load_config
from tscm.data.formats import load_placeset
from tscm.data.images import DecodedImages, eval_transform, load_rgb
from tscm.data.tuples import flat_image_paths
from tscm.evaluation.extract import InputSpec, extract_descriptors
from tscm.models import build_model
from tscm.evaluation.extract import describe_decoded
from tscm.train.caches import TrainingCaches
from tscm.train.runtime import start_runtime, stop_runtime
from tscm.train.optim import build_optimizer, match_state_layout, to_fast_layout
from tscm.train.training_state import load_training_state, save_training_state

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _images(folder: Path, sizes) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i, (height, width) in enumerate(sizes):
        path = folder / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


@pytest.mark.parametrize("size", [(64, 64), (32, 32), (48, 40)])
def test_decoded_images_give_the_eval_transform_bit_for_bit(tmp_path, size):
    paths = _images(tmp_path, [(32, 32)] * 3 + [(64, 64)] * 2 + [(40, 48)])
    images = DecodedImages(paths)
    for rows in ([0, 1, 2], [3, 4], [0, 3, 5], [5]):
        expected = torch.stack([eval_transform(load_rgb(paths[i]), size, MEAN, STD) for i in rows])
        got = images.inputs(rows, size, MEAN, STD)
        assert got.stride() == expected.stride()  # the same layout: convolutions see the same tensor
        assert torch.equal(got, expected)
        assert torch.equal(images.input(rows[0], size, MEAN, STD), expected[0])
    assert all(images.is_cached(i) for i in range(len(paths)))


def test_decoded_images_beyond_the_budget_are_read_again(tmp_path):
    paths = _images(tmp_path, [(32, 32)] * 3)
    images = DecodedImages(paths, max_bytes=2 * 32 * 32 * 3)
    first = images.inputs([0, 1, 2], (32, 32), MEAN, STD)
    assert [images.is_cached(i) for i in range(3)] == [True, True, False]
    assert images.nbytes == 2 * 32 * 32 * 3
    assert torch.equal(images.inputs([0, 1, 2], (32, 32), MEAN, STD), first)


def test_descriptors_from_memory_equal_extraction_from_files(city):
    torch.manual_seed(3)
    model = build_model("student-tiny").eval()
    paths = flat_image_paths(load_placeset(city, "val"))
    spec = InputSpec.of(model.config)
    expected = extract_descriptors(model, paths, spec, batch_size=7)
    images = DecodedImages(paths)
    rows = np.arange(len(paths))
    np.testing.assert_array_equal(describe_decoded(model, images, rows, spec, 7, torch.device("cpu"), False), expected)
    picked = rows[::3]
    np.testing.assert_array_equal(describe_decoded(model, images, picked, spec, 7, torch.device("cpu"), False),
                                  extract_descriptors(model, [paths[i] for i in picked], spec, batch_size=7))


def test_partial_mining_refresh_mines_the_same_tuples(city):
    config = load_config("demo_student", [f"data.path={city}", "mining.descriptors=student", "loss.preset=none",
                                          "mining.num_random=16", "mining.num_negatives=2"])
    train_set = load_placeset(city, "train")
    torch.manual_seed(4)
    model = build_model("student-tiny")
    spec = InputSpec.of(model.config)
    runtime = start_runtime("cpu", load_config("demo_teacher").train.amp)
    try:
        queries = np.array([1, 3, 4])
        mined = []
        for partial in (False, True):
            caches = TrainingCaches(config, runtime, train_set, model, spec, None, None, False)
            caches.refresh(0, 0, progress=False, queries=queries if partial else None)
            mined.append(caches.mine(queries))
        full, part = mined
        for name in ("query", "positive", "negatives"):
            np.testing.assert_array_equal(getattr(full, name), getattr(part, name))
        assert len(full) > 0
    finally:
        stop_runtime(runtime)


def test_fused_adam_on_channels_last_weights_resumes_exactly(tmp_path):
    settings = load_config("demo_teacher").train

    def make():
        torch.manual_seed(5)
        model = to_fast_layout(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 4, 3)), torch.device("cpu"))
        return model, build_optimizer(model, settings)

    def step(model, optimizer, seed):
        images = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(seed))
        optimizer.zero_grad(set_to_none=True)
        model(images).square().mean().backward()
        optimizer.step()

    model, optimizer = make()
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert optimizer.defaults.get("fused")
    for seed in range(3):
        step(model, optimizer, seed)
    save_training_state(tmp_path, {"optimizer": optimizer.state_dict(), "model": model.state_dict()})
    for seed in range(3, 6):
        step(model, optimizer, seed)

    resumed, resumed_optimizer = make()
    state = load_training_state(tmp_path)
    resumed.load_state_dict(state["model"])
    resumed_optimizer.load_state_dict(state["optimizer"])
    match_state_layout(resumed_optimizer)
    for seed in range(3, 6):
        step(resumed, resumed_optimizer, seed)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
