"""ONNX export and runtimes: parity with PyTorch, metadata, runtime switch, bad input; extraction benchmark mechanics."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import tscm.commands.export as export_command
import tscm.deploy.onnx_export as export_module
from tscm import cli
from tscm.bench.extraction import bench_model, time_blocks
from tscm.errors import TscmError
from tscm.deploy.onnx_export import calibration_subset, export_onnx, image_reading_convolutions, read_onnx_metadata
from tscm.deploy.runtimes import OnnxDescriptorModel, make_extractor
from tscm.evaluation.extract import InputSpec, extract_descriptors

from helpers.model_files import write_checkpoint

FAST = "torchscript"  # the legacy exporter takes a second; the dynamo one is exercised once, on the student


def rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """Random BatchNorm statistics, so that exported graphs fold non-trivial BN parameters into the convolutions."""
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def student_checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("student") / "ckpt", "student-tiny", seed=0, prepare=trained_looking)


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("teacher") / "ckpt", "teacher-tiny", seed=1, prepare=trained_looking)


@pytest.fixture(scope="module")
def student_onnx(student_checkpoint, tmp_path_factory):
    """The student exported with the default (dynamo) exporter into a folder that does not exist yet."""
    out = tmp_path_factory.mktemp("export") / "new" / "folder" / "student.onnx"
    meta = export_onnx(student_checkpoint, out)
    return out, meta


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(48 + 8 * i, 72, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def reference(checkpoint, batch: torch.Tensor) -> np.ndarray:
    from tscm.models.checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        return model(batch).numpy()


def test_student_parity_with_dynamic_batch(student_checkpoint, student_onnx):
    path, _ = student_onnx
    onnx_model = OnnxDescriptorModel(path, threads=1)
    for batch_size in (1, 5):  # the export traced a batch of 2
        batch = torch.randn(batch_size, 3, 64, 64, generator=torch.Generator().manual_seed(batch_size))
        expected = reference(student_checkpoint, batch)
        actual = onnx_model(batch).numpy()
        assert actual.shape == expected.shape == (batch_size, 256)
        assert rowwise_cosine(actual, expected).min() >= 0.9999
        np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_teacher_parity(teacher_checkpoint, tmp_path):
    out = tmp_path / "teacher.onnx"
    export_onnx(teacher_checkpoint, out, exporter=FAST)
    batch = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    actual = OnnxDescriptorModel(out, threads=1)(batch).numpy()
    expected = reference(teacher_checkpoint, batch)
    assert rowwise_cosine(actual, expected).min() >= 0.9999
    np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_metadata_props_carry_the_checkpoint_identity(student_checkpoint, student_onnx):
    from tscm.models.checkpoint import read_metadata

    path, returned = student_onnx
    checkpoint_meta = read_metadata(student_checkpoint)
    stored = {entry.key: entry.value for entry in onnx.load(str(path)).metadata_props}
    assert {"tscm.fingerprint", "tscm.image_size", "tscm.mean", "tscm.std"} <= set(stored)
    meta = read_onnx_metadata(path)
    assert meta == returned
    for field in ("fingerprint", "preset", "role", "descriptor_dim", "image_size", "mean", "std"):
        assert meta[field] == checkpoint_meta[field], field
    assert meta["precision"] == "float32"
    assert OnnxDescriptorModel(path).meta == meta


def test_single_file_and_no_leftovers(student_onnx):
    path, _ = student_onnx
    assert sorted(p.name for p in path.parent.iterdir()) == ["student.onnx"]  # no external data, no temp file
    graph = onnx.load(str(path)).graph
    batch_dim = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic batch axis


def test_bad_checkpoint_and_output(tmp_path, student_checkpoint):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TscmError, match="empty"):
        export_onnx(empty, tmp_path / "a.onnx")
    with pytest.raises(TscmError, match="not a checkpoint directory"):
        export_onnx(tmp_path / "missing", tmp_path / "a.onnx")
    with pytest.raises(TscmError, match="is a directory"):
        export_onnx(student_checkpoint, tmp_path)
    with pytest.raises(TscmError, match="exporter"):
        export_onnx(student_checkpoint, tmp_path / "a.onnx", exporter="magic")
    assert not (tmp_path / "a.onnx").exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the legacy exporter makes the plain model quickly
def test_not_a_tscm_onnx_file(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all")
    with pytest.raises(TscmError, match="garbage.onnx"):
        read_onnx_metadata(garbage)
    with pytest.raises(TscmError, match="garbage.onnx"):
        OnnxDescriptorModel(garbage)
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),), plain, dynamo=False)
    with pytest.raises(TscmError, match="expected .tscm-onnx."):
        read_onnx_metadata(plain)


def test_runtime_switch(student_checkpoint, student_onnx):
    batch = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(11))
    expected = reference(student_checkpoint, batch)
    minimum_cosine = {"torch": 1.0 - 1e-6, "onnx": 0.9999, "torch-bf16": 0.999, "torch-int8": 0.999}
    for runtime, bound in minimum_cosine.items():
        model, meta = make_extractor(student_checkpoint, runtime, threads=1, exporter=FAST)
        assert meta["runtime"] == runtime
        with torch.no_grad():
            actual = model(batch).float().numpy()
        assert actual.shape == expected.shape
        assert rowwise_cosine(actual, expected).min() >= bound, runtime
    model, meta = make_extractor(student_onnx[0], "onnx")
    assert meta["fingerprint"] == student_onnx[1]["fingerprint"]
    with pytest.raises(TscmError, match="runtime 'onnx' only"):
        make_extractor(student_onnx[0], "torch")
    with pytest.raises(TscmError, match="runtime 'fast'"):
        make_extractor(student_checkpoint, "fast")
    with pytest.raises(TscmError, match="calibration"):
        make_extractor(student_checkpoint, "onnx-int8", exporter=FAST)


def test_int8_quantises_the_trunk_and_stays_close(student_checkpoint, images):
    model, meta = make_extractor(student_checkpoint, "onnx-int8", threads=1, calibration_paths=images, exporter=FAST)
    assert meta["precision"] == "int8" and model.meta["precision"] == "int8"
    batch = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    actual = model(batch).numpy()
    expected = reference(student_checkpoint, batch)
    cosine = rowwise_cosine(actual, expected)
    assert cosine.min() >= 0.99  # int8 moves descriptors a little, never far
    assert not np.allclose(actual, expected, atol=1e-5)  # and it is not the float32 graph in disguise


def test_int8_file_records_its_precision(student_checkpoint, images, tmp_path):
    out = tmp_path / "int8.onnx"
    meta = export_onnx(student_checkpoint, out, exporter=FAST, precision="int8", calibration_paths=images)
    assert meta["precision"] == "int8"
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # The convolutions reading the image (after the model's weight-free standardisation) stay
    # float32: a quantised one would be fed by a DequantizeLinear node and not be found here.
    assert image_reading_convolutions(onnx.load(str(out)))


def test_onnx_model_works_with_extract_descriptors(student_checkpoint, student_onnx, images):
    from tscm.models.checkpoint import load_checkpoint

    torch_model, meta = load_checkpoint(student_checkpoint)
    spec = InputSpec.of(meta)
    expected = extract_descriptors(torch_model, images, spec, batch_size=4)
    actual = extract_descriptors(OnnxDescriptorModel(student_onnx[0]), images, spec, batch_size=4)
    assert actual.shape == expected.shape == (len(images), 256)
    assert rowwise_cosine(actual, expected).min() >= 0.9999


def test_onnx_model_rejects_wrong_image_size(student_onnx):
    with pytest.raises(TscmError, match="B×3×64×64"):
        OnnxDescriptorModel(student_onnx[0])(torch.zeros(1, 3, 32, 32))


def test_calibration_subset_is_reproducible_and_bounded(images):
    assert calibration_subset(images, 10) == list(images)
    chosen = calibration_subset(images, 3, seed=4)
    assert len(chosen) == 3 == len(set(chosen)) and chosen == calibration_subset(images, 3, seed=4)
    assert chosen == sorted(chosen, key=list(images).index)  # dataset order kept


def test_cli_export(student_checkpoint, tmp_path, capsys):
    out = tmp_path / "cli" / "student.onnx"
    assert cli.main(["export", str(student_checkpoint), "--onnx", str(out), "--exporter", FAST]) == 0
    assert read_onnx_metadata(out)["preset"] == "student-tiny"
    assert cli.main(["export", str(tmp_path / "nope"), "--onnx", str(out)]) == 2
    assert "not a checkpoint directory" in capsys.readouterr().err
    assert cli.main(["export", str(student_checkpoint), "--onnx", str(out), "--precision", "int8"]) == 2
    assert "--calibration" in capsys.readouterr().err


def test_command_constants_mirror_the_library():
    assert export_command.PRECISIONS == export_module.PRECISIONS
    assert export_command.EXPORTERS == export_module.EXPORTERS
    assert export_command.DEFAULT_OPSET == export_module.DEFAULT_OPSET
    assert export_command.DEFAULT_CALIBRATION_IMAGES == export_module.DEFAULT_CALIBRATION_IMAGES


def test_time_blocks_counts_calls():
    calls = {"a": 0, "b": 0}

    def counter(name):
        def call():
            calls[name] += 1
        return call

    times = time_blocks({"a": counter("a"), "b": counter("b")}, cycles=2, calls_per_block=3, budget_s=60)
    assert [len(times["a"]), len(times["b"])] == [6, 6]
    assert calls == {"a": 8, "b": 8}  # one untimed call per block


def test_bench_model_rows(student_checkpoint):
    lines = []
    rows = bench_model(str(student_checkpoint), ["torch", "onnx"], [2], threads=1, calibration_paths=(), cycles=1,
                       calls_per_block=1, budget_s=60, exporter=FAST, print_fn=lines.append)
    assert [(r.runtime, r.batch_size) for r in rows] == [("torch", 2), ("onnx", 2)]
    assert rows[0].speedup == pytest.approx(1.0)
    assert rows[1].min_cosine >= 0.9999
    assert all(r.median_ms > 0 and r.calls == 1 for r in rows) and len(lines) == 2


def test_missing_onnx_extra_is_a_clear_error(monkeypatch, tmp_path):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "onnxruntime" else real_find_spec(name, *rest))
    with pytest.raises(TscmError, match=r"onnxruntime.*tscm\[onnx\]"):
        export_module.require_onnx()
    model_file = tmp_path / "m.onnx"
    model_file.write_bytes(b"x")
    with pytest.raises(TscmError, match="tscm\\[onnx\\]"):
        OnnxDescriptorModel(model_file)
