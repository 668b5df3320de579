"""ONNX export and runtimes: parity with PyTorch, metadata, runtime switch, bad input; extraction benchmark mechanics."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import tscm.inference.onnx_export as export_module
from tscm import cli
from tscm.bench.extraction import bench_model
from tscm.errors import TscmError
from tscm.inference.onnx_export import calibration_subset, export_onnx, image_reading_convolutions, read_onnx_metadata
from tscm.inference.runtimes import OnnxDescriptorModel, make_extractor
from tscm.evaluation.extract import InputSpec, extract_descriptors
from tscm.machine import time_turns

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


def test_a_lone_image_runs_on_one_thread_with_the_same_bits(student_onnx):
    path, _ = student_onnx
    pooled, single = OnnxDescriptorModel(path, threads=2), OnnxDescriptorModel(path, threads=1)
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    for image in images:
        np.testing.assert_array_equal(pooled(image[None]).numpy(), single(image[None]).numpy())
    assert pooled._single_session is not pooled.session  # the lone images ran on their own one-thread session
    assert single._single_session is single.session  # a one-thread model needs no second session


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


def test_time_turns_counts_calls():
    calls = {"a": 0, "b": 0}

    def counter(name):
        def call():
            calls[name] += 1
        return call

    times = time_turns({"a": counter("a"), "b": counter("b")}, cycles=2, calls_per_block=3, budget_s=60)
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


# ----- int8 coverage and precision "auto" -------------------------------------------------------------


def stub_timer(float32_ms: float, int8_ms: float, calls: list):
    """A stand-in for onnx_export.time_onnx_graphs: fixed timings, recording what it was asked to time."""

    def timer(graphs, image_size, threads, **_):
        calls.append((sorted(graphs), tuple(image_size), threads))
        return {"float32": float32_ms, "int8": int8_ms}

    return timer


def quantised_ops(path_or_proto) -> set[str]:
    proto = path_or_proto if isinstance(path_or_proto, onnx.ModelProto) else onnx.load(str(path_or_proto))
    return {node.op_type for node in proto.graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")}


@pytest.mark.parametrize("float32_ms, int8_ms, expected", [(10.0, 4.0, "int8"), (4.0, 10.0, "float32")])
def test_precision_auto_keeps_the_faster_graph_and_records_why(student_checkpoint, images, tmp_path, monkeypatch,
                                                               float32_ms, int8_ms, expected):
    calls: list = []
    monkeypatch.setattr(export_module, "time_onnx_graphs", stub_timer(float32_ms, int8_ms, calls))
    out = tmp_path / f"auto-{expected}.onnx"
    meta = export_onnx(student_checkpoint, out, exporter=FAST, precision="auto", calibration_paths=images, threads=1)
    assert calls == [(["float32", "int8"], (64, 64), 1)]  # both graphs timed once, at the model's image size
    assert meta["precision"] == expected == read_onnx_metadata(out)["precision"]
    choice = meta["precision_choice"]
    assert choice["requested"] == "auto" and choice["chosen"] == expected
    assert choice["ms_per_image"] == {"float32": float32_ms, "int8": int8_ms}
    assert choice["batch_size"] == 1 and choice["threads"] == 1 and choice["calls"] > 0 and choice["cpu"]
    # The file holds the graph that was chosen.
    assert bool(quantised_ops(out)) == (expected == "int8")
    # It runs like any export.
    batch = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    cosine = rowwise_cosine(OnnxDescriptorModel(out, threads=1)(batch).numpy(), reference(student_checkpoint, batch))
    assert cosine.min() >= (0.9999 if expected == "float32" else 0.99)


def test_precision_auto_in_make_extractor(student_checkpoint, images, monkeypatch):
    calls: list = []
    monkeypatch.setattr(export_module, "time_onnx_graphs", stub_timer(3.0, 9.0, calls))
    model, meta = make_extractor(student_checkpoint, "onnx-int8", threads=1, calibration_paths=images, exporter=FAST,
                                 precision="auto")
    assert len(calls) == 1 and meta["runtime"] == "onnx-int8"
    assert meta["precision"] == "float32" == model.meta["precision"]  # int8 was slower: float32 kept
    assert meta["precision_choice"]["ms_per_image"] == {"float32": 3.0, "int8": 9.0}
    with pytest.raises(TscmError, match="onnx-int8 only"):
        make_extractor(student_checkpoint, "torch", precision="auto")
    with pytest.raises(TscmError, match="calibration"):
        make_extractor(student_checkpoint, "onnx-int8", exporter=FAST, precision="auto")


def test_time_onnx_graphs_times_every_graph(student_checkpoint):
    from tscm.models.checkpoint import load_checkpoint

    model, meta = load_checkpoint(student_checkpoint)
    data = export_module.export_model(model, meta, exporter=FAST, check_parity=False)
    timings = export_module.time_onnx_graphs({"a": data, "b": data}, (64, 64), 1, calls=1, rounds=1)
    assert set(timings) == {"a", "b"} and all(value > 0 for value in timings.values())


def test_cli_export_precision_auto(student_checkpoint, tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(5)
    for folder in ("database", "queries"):
        (tmp_path / "data" / "train" / folder).mkdir(parents=True)
        for i in range(3):  # Pittsburgh-style names carry the UTM coordinates
            name = f"@{585000.0 + 9 * i:.1f}@{4477000.0 + 4 * i:.1f}@17@T@@@@@@@@@@@.jpg"
            Image.fromarray(rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8)).save(
                tmp_path / "data" / "train" / folder / name)
    calls: list = []
    monkeypatch.setattr(export_module, "time_onnx_graphs", stub_timer(8.0, 2.0, calls))
    out = tmp_path / "auto.onnx"
    argv = ["export", str(student_checkpoint), "--onnx", str(out), "--exporter", FAST, "--precision", "auto",
            "--calibration", str(tmp_path / "data"), "--threads", "1"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "precision auto: kept int8" in printed and "float32 8.0 ms, int8 2.0 ms" in printed
    assert read_onnx_metadata(out)["precision_choice"]["chosen"] == "int8" and calls[0][2] == 1
    assert cli.main(["export", str(student_checkpoint), "--onnx", str(out), "--precision", "auto"]) == 2
    assert "--calibration" in capsys.readouterr().err
    assert cli.main(["export", str(student_checkpoint), "--onnx", str(out), "--threads", "2"]) == 2
    assert "--precision auto" in capsys.readouterr().err


def test_int8_quantises_the_teachers_weight_products_not_attention(teacher_checkpoint, images):
    """MatMul/Gemm with constant weights (ViT, transformer, heads) are int8; products of two activations are not."""
    from tscm.models.checkpoint import load_checkpoint

    model, meta = load_checkpoint(teacher_checkpoint)
    proto = onnx.load_from_string(export_module.export_model(model, meta, exporter=FAST, precision="int8",
                                                             calibration_paths=images))
    initializers = {init.name for init in proto.graph.initializer}
    produced_by = {output: node for node in proto.graph.node for output in node.output}

    def from_dequantized_weight(name: str) -> bool:
        node = produced_by.get(name)
        return node is not None and node.op_type == "DequantizeLinear" and node.input[0] in initializers

    def from_dequantized(name: str) -> bool:
        node = produced_by.get(name)
        return node is not None and node.op_type == "DequantizeLinear"

    products = [node for node in proto.graph.node if node.op_type in ("MatMul", "Gemm")]
    quantised = [node for node in products if from_dequantized_weight(node.input[1])]
    assert quantised, "no weight matrix product was quantised"
    activations = [node for node in products if node not in quantised]
    assert activations, "teacher-tiny has attention: products of two activations"
    for node in activations:
        assert node.input[1] not in initializers, f"{node.name}: a weight product left in float32"
        assert not any(from_dequantized(name) for name in node.input[:2]), f"{node.name}: an activation product in int8"
    assert "Softmax" in {node.op_type for node in proto.graph.node}
    softmax_inputs = [node.input[0] for node in proto.graph.node if node.op_type == "Softmax"]
    assert not any(from_dequantized(name) for name in softmax_inputs)  # attention weights stay float32
    batch = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    session = OnnxDescriptorModel(proto.SerializeToString(), threads=1)
    assert rowwise_cosine(session(batch).numpy(), reference(teacher_checkpoint, batch)).min() >= 0.99


def test_int8_keeps_depthwise_convolutions_in_float32(tmp_path, images):
    """student-lite's EfficientNet trunk: its grouped (depthwise) convolutions keep float32 weights, the others are int8."""
    from tscm.models.checkpoint import load_checkpoint

    checkpoint = write_checkpoint(tmp_path / "lite", "student-lite", seed=0, prepare=trained_looking)
    model, meta = load_checkpoint(checkpoint)
    proto = onnx.load_from_string(export_module.export_model(model, meta, exporter=FAST, precision="int8",
                                                             calibration_paths=images))
    initializers = {init.name for init in proto.graph.initializer}
    produced_by = {output: node for node in proto.graph.node for output in node.output}

    def int8_weight(conv) -> bool:
        node = produced_by.get(conv.input[1])
        return node is not None and node.op_type == "DequantizeLinear"

    def grouped(conv) -> bool:
        return any(a.name == "group" and a.i > 1 for a in conv.attribute)

    convolutions = [node for node in proto.graph.node if node.op_type == "Conv"]
    depthwise = [node for node in convolutions if grouped(node)]
    assert depthwise, "EfficientNet-Lite has depthwise convolutions"
    for node in depthwise:
        assert not int8_weight(node) and node.input[1] in initializers, f"{node.name}: a depthwise convolution in int8"
    assert any(int8_weight(node) for node in convolutions if not grouped(node)), "no pointwise convolution was quantised"
