"""ONNX export of teacher/student checkpoints, with tscm metadata, a parity check and static int8 quantisation.

Precision `auto` builds both graphs, times them on this machine (batch 1, a few calls each, the
two taking turns) and keeps int8 only when it is faster, so a user never gets a slower model; the
choice and both timings are recorded in the metadata (`tscm.precision_choice`).

An exported model maps `images` (B×3×H×W, any B, normalised as in training) to `descriptors`
(B×D, L2-normalised). Its `metadata_props` carry the checkpoint's fingerprint, preset, image
size, mean/std and precision under `tscm.*` keys, so an index or a deployment can check which
model made a descriptor without the checkpoint. The runtimes that run exported models live in
`tscm.inference.runtimes`.
"""

from __future__ import annotations

import importlib.util
import io
import json
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tscm import __version__
from tscm.data.images import ImageListDataset
from tscm.errors import TscmError, excerpt
from tscm.fileio import atomic_path, check_header, parse_json
from tscm.inference.choices import DEFAULT_CALIBRATION_IMAGES, DEFAULT_OPSET, EXPORTERS, PRECISIONS
from tscm.machine import cpu_model, load_average, median_ms, time_turns
from tscm.models.checkpoint import load_checkpoint

INPUT_NAME = "images"
OUTPUT_NAME = "descriptors"
FORMAT_NAME = "tscm-onnx"
FORMAT_VERSION = 1
METADATA_PREFIX = "tscm."
# Opsets tscm exports: from 13 (per-axis int8 QuantizeLinear, which static int8 needs) to the newest
# torch's exporters write (the TorchScript exporter stops at 20).
MIN_OPSET = 13
MAX_OPSET = {"dynamo": 23, "torchscript": 20}
PARITY_MIN_COSINE = 0.9999  # float32 export against PyTorch, per descriptor
# What int8 quantises: what dominates both models' time. Convolutions (the CNN trunks: ~93 % of
# student-paper's ONNX Runtime time), and matrix products with constant weights, i.e. MatMul/Gemm
# with an initializer as second input (the ViT and transformer linear layers: ~70 % of
# teacher-paper's time; NetVLAD and head projections). Products of two activations (attention
# scores, NetVLAD aggregation) and the convolutions reading the image stay float32 (accuracy).
INT8_OP_TYPES = ("Conv", "MatMul", "Gemm")
AUTO_TIMING_CALLS = 5  # timed batch-1 calls per graph per round for precision "auto"
AUTO_TIMING_ROUNDS = 3  # rounds in which the two graphs take turns


# ----- export ---------------------------------------------------------------------------------------


def require_onnx() -> None:
    """TscmError with the install hint unless onnx, onnxruntime and onnxscript are importable (the `onnx` extra)."""
    missing = [name for name in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise TscmError(f"ONNX export and runtimes need {', '.join(missing)}: pip install 'tscm[onnx]'")


def load_checkpoint_folder(checkpoint: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    path = Path(checkpoint)
    if not path.is_dir():
        raise TscmError(f"{path} is not a checkpoint directory (expected a folder with model.safetensors and meta.json)")
    return load_checkpoint(path)


def check_opset(opset: int, exporter: str) -> None:
    """Refuse an opset the exporter cannot write (before anything is traced or written)."""
    if exporter not in MAX_OPSET:
        raise TscmError(f"exporter {exporter!r}: expected one of {', '.join(EXPORTERS)}")
    newest = MAX_OPSET[exporter]
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise TscmError(f"--opset {opset}: expected an ONNX opset from {MIN_OPSET} to {newest} for the {exporter} exporter")


def _trace_to_onnx(model: nn.Module, example: torch.Tensor, opset: int, exporter: str) -> Any:
    """The model as an onnx.ModelProto with a dynamic batch axis."""
    require_onnx()
    import onnx

    if exporter == "dynamo":
        batch = torch.export.Dim("batch", min=1)
        program = torch.onnx.export(
            model, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            opset_version=opset, dynamic_shapes={"images": {0: batch}}, dynamo=True, optimize=True, verbose=False,
        )
        return program.model_proto
    if exporter == "torchscript":
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            # The legacy exporter announces its deprecation and warns that the shape checks are traced as
            # constants, which is what they are (the token counts fix H×W).
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                model, (example,), buffer, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                opset_version=opset, dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, dynamo=False,
            )
        return onnx.load_from_string(buffer.getvalue())
    raise TscmError(f"exporter {exporter!r}: expected one of {', '.join(EXPORTERS)}")


def metadata_props(meta: dict[str, Any], precision: str, choice: dict[str, Any] | None = None) -> dict[str, str]:
    """The `tscm.*` string entries stored in an exported model's metadata_props.

    `choice`: how precision "auto" chose (`choose_precision`'s record), stored as `precision_choice`.
    """
    entries: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "preset": meta["preset"],
        "role": meta.get("role", ""),
        "descriptor_dim": int(meta["descriptor_dim"]),
        "image_size": [int(s) for s in meta["image_size"]],
        "mean": [float(m) for m in meta["mean"]],
        "std": [float(s) for s in meta["std"]],
        "fingerprint": meta["fingerprint"],
        "teacher_fingerprint": meta.get("teacher_fingerprint"),
        "precision": precision,
        "config": meta.get("config", {}),
    }
    if precision == "int8":
        entries["onnxruntime_disabled_optimizers"] = list(DISABLED_OPTIMIZERS)
    if choice is not None:
        entries["precision_choice"] = choice
    return {METADATA_PREFIX + key: json.dumps(value) for key, value in entries.items()}


def _set_metadata(model_proto: Any, props: dict[str, str]) -> None:
    kept = [entry for entry in model_proto.metadata_props if not entry.key.startswith(METADATA_PREFIX)]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(kept)
    for key, value in props.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value


def parse_metadata(props: dict[str, str], where: str) -> dict[str, Any]:
    """Checkpoint-style metadata (same field names as meta.json) from an exported model's `tscm.*` props."""
    values = {}
    for key, text in props.items():
        if key.startswith(METADATA_PREFIX):
            values[key[len(METADATA_PREFIX):]] = parse_json(text, f"{where}: metadata entry {excerpt(key)}")
    required = ("preset", "descriptor_dim", "image_size", "mean", "std", "fingerprint", "precision")
    return check_header(values, FORMAT_NAME, FORMAT_VERSION, f"{where} (metadata_props {METADATA_PREFIX}*)", required)


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The tscm metadata of an exported model file (fingerprint, image_size, mean, std, precision, ...)."""
    file = Path(path)
    if not file.is_file():
        raise TscmError(f"{file}: ONNX model not found")
    require_onnx()
    import onnx

    try:
        proto = onnx.load(str(file), load_external_data=False)
    except Exception as error:  # protobuf raises its own DecodeError types
        raise TscmError(f"{file} is not a readable ONNX model ({error})") from error
    return parse_metadata({entry.key: entry.value for entry in proto.metadata_props}, str(file))


def export_model(model: nn.Module, meta: dict[str, Any], *, precision: str = "float32", **options: Any) -> bytes:
    """`export_graphs` for one precision: the serialized ONNX model of `model` with tscm metadata_props; `options`
    are export_graphs' (opset, exporter, calibration_paths, check_parity, threads), declared there once."""
    if precision not in PRECISIONS:
        raise TscmError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return export_graphs(model, meta, (precision,), **options)[precision]


def export_graphs(
    model: nn.Module,
    meta: dict[str, Any],
    precisions: Sequence[str],
    *,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    calibration_paths: Sequence[str | Path] = (),
    check_parity: bool = True,
    threads: int | None = None,
) -> dict[str, bytes]:
    """Serialized ONNX models of `model` (with checkpoint metadata `meta`) with tscm metadata_props, one per
    precision, tracing and quantising once: {precision: bytes}.

    float32 exports are checked against PyTorch on a random batch of two (cosine ≥ PARITY_MIN_COSINE
    per descriptor, else TscmError). Precision "int8" quantises convolutions and constant-weight
    matrix products statically (INT8_OP_TYPES), calibrated on `calibration_paths`; "auto" builds
    both graphs and keeps the faster on this machine with `threads` ONNX Runtime threads
    (`choose_precision`), recording the choice.
    """
    require_onnx()
    import onnx

    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown or not precisions:
        raise TscmError(f"precision {unknown or precisions!r}: expected some of {', '.join(PRECISIONS)}")
    needs_int8 = [p for p in precisions if p in ("int8", "auto")]
    if needs_int8 and not calibration_paths:
        raise TscmError(f"{needs_int8[0]} export needs calibration images (calibration_paths / --calibration DATA)")
    check_opset(opset, exporter)
    height, width = (int(s) for s in meta["image_size"])
    model = model.eval()
    example = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    proto = _trace_to_onnx(model, example, opset, exporter)
    if check_parity:
        check_onnx_parity(model, proto.SerializeToString(), example)
    graphs: dict[str, Any] = {"float32": proto}
    if needs_int8:
        graphs["int8"] = quantize_int8(proto, calibration_paths, meta)
    choice = None
    if "auto" in precisions:
        chosen, choice = choose_precision(proto.SerializeToString(), graphs["int8"].SerializeToString(),
                                          (height, width), threads)
    out: dict[str, bytes] = {}
    for precision in precisions:
        kept = chosen if precision == "auto" else precision
        graph = onnx.ModelProto()
        graph.CopyFrom(graphs[kept])
        _set_metadata(graph, metadata_props(meta, kept, choice if precision == "auto" else None))
        onnx.checker.check_model(graph)
        out[precision] = graph.SerializeToString()
    return out


def time_onnx_graphs(graphs: dict[str, bytes], image_size: Sequence[int], threads: int | None, *,
                     calls: int = AUTO_TIMING_CALLS, rounds: int = AUTO_TIMING_ROUNDS) -> dict[str, float]:
    """Median ms per call of each serialized graph on one random image (batch 1), with `threads` threads.

    The graphs take turns (`tscm.machine.time_turns`): `rounds` rounds of `calls` timed calls each,
    so load from other processes falls on all of them alike.
    """
    height, width = (int(s) for s in image_size)
    image = np.random.default_rng(0).standard_normal((1, 3, height, width), dtype=np.float32)
    sessions = {name: make_session(data, threads) for name, data in graphs.items()}
    calls_of = {name: (lambda session=session: session.run([OUTPUT_NAME], {INPUT_NAME: image}))
                for name, session in sessions.items()}
    times = time_turns(calls_of, cycles=rounds, calls_per_block=calls)
    return {name: median_ms(values) for name, values in times.items()}


def choose_precision(float32_graph: bytes, int8_graph: bytes, image_size: Sequence[int],
                     threads: int | None) -> tuple[str, dict[str, Any]]:
    """("int8" or "float32", record): int8 only when its median batch-1 time here is lower.

    The record (stored as metadata `precision_choice`) holds both timings and what they were measured on.
    """
    timings = time_onnx_graphs({"float32": float32_graph, "int8": int8_graph}, image_size, threads)
    chosen = "int8" if timings["int8"] < timings["float32"] else "float32"
    record = {
        "requested": "auto",
        "chosen": chosen,
        "ms_per_image": {name: round(float(value), 3) for name, value in timings.items()},
        "batch_size": 1,
        "threads": threads,
        "calls": AUTO_TIMING_CALLS * AUTO_TIMING_ROUNDS,
        "cpu": cpu_model(),
        "load_average": load_average(),
        "onnxruntime": _onnxruntime_version(),
    }
    return chosen, record


def _onnxruntime_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def export_onnx(checkpoint: str | Path, out_path: str | Path, *, opset: int = DEFAULT_OPSET, exporter: str = "dynamo",
                **options: Any) -> dict[str, Any]:
    """Export a checkpoint directory to one self-contained ONNX file, written atomically; returns its tscm metadata.

    A missing output folder is created. `options` are export_model's (precision, calibration_paths, check_parity,
    threads: the ONNX Runtime threads precision "auto" times with); opset and exporter are checked before the
    checkpoint is loaded.
    """
    out = Path(out_path)
    if out.is_dir():
        raise TscmError(f"output {out} is a directory; expected a file name such as {out / 'model.onnx'}")
    check_opset(opset, exporter)
    model, meta = load_checkpoint_folder(checkpoint)
    data = export_model(model, meta, opset=opset, exporter=exporter, **options)
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return read_onnx_metadata(out)


# ----- ONNX Runtime ---------------------------------------------------------------------------------


# ONNX Runtime graph transformers tscm's sessions leave out. QDQ propagation moves the QuantizeLinear
# that follows student-paper's float32 stem (convolution, ReLU, max-pool) above the max-pool, which
# then runs on uint8 in a kernel far slower than the float32 one (a quarter of the int8 student's
# time); without it the int8 student is faster, and teacher-paper's int8 time does not change.
# Float32 graphs have no QDQ nodes and are unaffected. Recorded in exported files' metadata
# (`onnxruntime_disabled_optimizers`) for deployments that build their own sessions.
DISABLED_OPTIMIZERS = ("QDQPropagationTransformer",)


def session_options(threads: int | None = None) -> Any:
    """ONNX Runtime options: all graph optimisations, `threads` intra-op threads (None: runtime default).

    Intra-op threads do not spin while waiting for work: on a shared CPU a spinning pool competes
    with the other processes for the cores it waits on (a third slower per image on a busy machine,
    `tscm bench` shows it); on an idle machine waking the threads costs microseconds per operator.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads is not None:
        if threads < 1:
            raise TscmError(f"threads: expected a positive number, got {threads}")
        options.intra_op_num_threads = int(threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: ORT's optimiser notes are not for users
    return options


def make_session(model: str | bytes, threads: int | None = None, providers: Sequence[str] = ("CPUExecutionProvider",)) -> Any:
    """An ONNX Runtime session with tscm's options (`session_options`) and DISABLED_OPTIMIZERS left out."""
    import onnxruntime as ort

    return ort.InferenceSession(model, session_options(threads), providers=list(providers),
                                disabled_optimizers=list(DISABLED_OPTIMIZERS))


def check_onnx_parity(model: nn.Module, onnx_bytes: bytes, images: torch.Tensor,
                      min_cosine: float = PARITY_MIN_COSINE) -> float:
    """Lowest cosine between PyTorch and ONNX Runtime descriptors of `images`; TscmError below `min_cosine`."""
    import onnxruntime as ort

    session = make_session(onnx_bytes)
    with torch.inference_mode():
        expected = model(images).float().numpy()
    actual = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
    cosine = float(np.min(rowwise_cosine(expected, actual)))
    if not cosine >= min_cosine:
        raise TscmError(f"exported model disagrees with PyTorch: lowest descriptor cosine {cosine:.6f} < {min_cosine}")
    return cosine


def rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine between corresponding rows of two N×D arrays."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)


# ----- quantisation ---------------------------------------------------------------------------------


class _CalibrationImages:
    """ONNX Runtime calibration reader: eval-transformed images in batches."""

    def __init__(self, paths: Sequence[str | Path], meta: dict[str, Any], batch_size: int = 8) -> None:
        self.dataset = ImageListDataset(paths, meta["image_size"], meta["mean"], meta["std"])
        self.batch_size = batch_size
        self.batches = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.dataset), self.batch_size):
            stop = min(start + self.batch_size, len(self.dataset))
            images = torch.stack([self.dataset[i] for i in range(start, stop)])
            yield {INPUT_NAME: images.numpy()}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)

    def rewind(self) -> None:
        self.batches = self._batches()


def calibration_subset(paths: Sequence[str | Path], count: int = DEFAULT_CALIBRATION_IMAGES, seed: int = 0) -> list[Path]:
    """`count` images spread over `paths` (a fixed random choice, so exports are reproducible)."""
    paths = [Path(p) for p in paths]
    if len(paths) <= count:
        return paths
    chosen = np.sort(np.random.default_rng(seed).choice(len(paths), size=count, replace=False))
    return [paths[i] for i in chosen]


# Ops that transform pixels without learned weights (e.g. a model's per-image standardisation):
# a convolution fed through them still reads the image.
PIXEL_PASS_THROUGH_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Max", "Min", "Clip", "ReduceMean", "ReduceSum",
    "Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Expand",
})


def image_reading_convolutions(proto: Any) -> list[str]:
    """Names of the Conv nodes that read the image itself (the CNN stem, patch embeddings).

    The image may first pass through weight-free element-wise ops (per-image standardisation);
    the graph is in topological order, so one forward sweep finds every image-derived tensor.
    """
    image_derived = {proto.graph.input[0].name}
    convolutions = []
    for node in proto.graph.node:
        if node.op_type == "Conv" and node.input[0] in image_derived:
            convolutions.append(node.name)
        elif node.op_type in PIXEL_PASS_THROUGH_OPS and any(name in image_derived for name in node.input):
            image_derived.update(node.output)
    return convolutions


def grouped_convolutions(proto: Any) -> list[str]:
    """Names of the Conv nodes with groups (depthwise convolutions, as in EfficientNet-Lite's trunks).

    They stay float32: a depthwise filter has 9 weights per channel, and quantising its input
    per tensor lost 2.75 points of Recall@1 on the Nordland test section for student-lite (top-1
    agreement with float32 60.5 %); keeping them float32 gave +0.5 points (agreement 82 %). They
    are a few percent of the multiply-adds.
    """
    names = []
    for node in proto.graph.node:
        if node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute):
            names.append(node.name)
    return names


# Ops a weight passes through unchanged in value (layout, shape, dtype) on its way to a matrix product.
WEIGHT_PASS_THROUGH_OPS = frozenset({"Transpose", "Reshape", "Identity", "Cast", "Unsqueeze", "Squeeze", "Flatten"})


def activation_products(proto: Any) -> list[str]:
    """Names of the MatMul/Gemm nodes whose second input is not a constant weight (attention scores and
    their weighting of values, NetVLAD aggregation): products of two activations."""
    constants = {init.name for init in proto.graph.initializer}
    for node in proto.graph.node:  # topological order: a weight's Transpose/Reshape follow the weight
        if node.op_type == "Constant" or (node.op_type in WEIGHT_PASS_THROUGH_OPS and node.input
                                          and node.input[0] in constants):
            constants.update(node.output)
    return [node.name for node in proto.graph.node
            if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] not in constants]


def quantize_int8(proto: Any, calibration_paths: Sequence[str | Path], meta: dict[str, Any]) -> Any:
    """Static QDQ int8 quantisation of INT8_OP_TYPES (per-channel int8 weights, uint8 activations, MinMax).

    Matrix products are quantised only with a constant second input (weights), not between two
    activations (`activation_products`; ONNX Runtime's MatMulConstBOnly does not apply to QDQ models):
    that keeps attention and its softmax in float32, which is also faster (ONNX Runtime's uint8
    softmax was 5× slower than float32's in teacher-paper). The convolutions that read the image stay
    float32: in one trial (trained student-tiny, demo city) that raised top-1 agreement with float32
    from 85 % to 87 %, for about 7 % of student-paper's multiply-adds. Grouped (depthwise)
    convolutions stay float32 too (`grouped_convolutions`).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    with tempfile.TemporaryDirectory(prefix="tscm-quant-") as folder:
        source, prepared, quantized = (Path(folder) / name for name in ("model.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save_model(proto, str(source))
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        # Node names from the prepared graph, which is what gets quantised (pre-processing may fuse nodes).
        prepared_proto = onnx.load(str(prepared))
        excluded = (image_reading_convolutions(prepared_proto) + grouped_convolutions(prepared_proto)
                    + activation_products(prepared_proto))
        del prepared_proto
        quantize_static(
            str(prepared), str(quantized), _CalibrationImages(calibration_paths, meta),
            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(INT8_OP_TYPES), per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=excluded,
        )
        return onnx.load(str(quantized))
