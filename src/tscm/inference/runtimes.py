"""Extraction runtimes: a checkpoint or exported model as a module mapping B×3×H×W images to B×D descriptors.

`make_extractor(source, runtime)` gives the model and its metadata: `torch` (eager float32),
`torch-bf16` (eager under bfloat16 autocast), `torch-int8` (eager with dynamically quantised
Linear layers), `onnx` (ONNX Runtime float32), `onnx-int8` (ONNX Runtime with statically
quantised convolutions and constant-weight matrix products, calibrated on images the caller
supplies). `onnx-int8` with `precision="auto"` builds the float32 and the int8 graph, times both
here and runs the faster (tscm.inference.onnx_export.choose_precision); the metadata's `precision`
says which, `precision_choice` why. Quantised or bf16 runtimes
keep the fingerprint of the float32 weights they come from: their descriptors live in the same
space and search an index built with the float32 model.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.ao.quantization import quantize_dynamic

from tscm.errors import TscmError
from tscm.inference.choices import RUNTIMES
from tscm.inference.onnx_export import (INPUT_NAME, OUTPUT_NAME, export_model, load_checkpoint_folder, make_session,
                                        parse_metadata, require_onnx)


class OnnxDescriptorModel(nn.Module):
    """An exported model run by ONNX Runtime, callable like the PyTorch model (B×3×H×W tensor -> B×D tensor).

    Being an nn.Module without parameters, it works with `tscm.evaluation.recall.extract_descriptors`.
    A batch of one image runs on a one-thread session of the same graph (made on first use): a lone small
    image leaves a thread pool waking for every operator with little to share, and ONNX Runtime gives
    the same bits on one thread as on several for a batch of one (`tests/deploy/test_export.py`);
    `tscm bench streaming` shows the gain.
    """

    def __init__(self, source: str | Path | bytes, threads: int | None = None) -> None:
        require_onnx()
        super().__init__()
        where = "exported model" if isinstance(source, bytes) else str(source)
        if not isinstance(source, bytes) and not Path(source).is_file():
            raise TscmError(f"{source}: ONNX model not found")
        self._source = source if isinstance(source, bytes) else str(source)
        try:
            self.session = make_session(self._source, threads)
        except Exception as error:  # ORT raises its own exception types for unreadable models
            raise TscmError(f"{where}: ONNX Runtime cannot load it ({error})") from error
        self._single_session = self.session if threads == 1 else None
        self.meta = parse_metadata(dict(self.session.get_modelmeta().custom_metadata_map), where)
        self.descriptor_dim = int(self.meta["descriptor_dim"])
        self.image_size = tuple(int(s) for s in self.meta["image_size"])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        expected = (3, *self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise TscmError(f"ONNX model {self.meta['preset']!r} takes images B×{expected[0]}×{expected[1]}×{expected[2]}, "
                            f"got {tuple(images.shape)}")
        array = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        session = self.session
        if len(array) == 1:
            if self._single_session is None:
                self._single_session = make_session(self._source, 1)
            session = self._single_session
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: array})[0])


class AutocastDescriptorModel(nn.Module):
    """A PyTorch model run under CPU bfloat16 autocast; descriptors come back as float32."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.descriptor_dim = model.descriptor_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model(images).float()


def quantize_linear_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` whose Linear layers use int8 weights with dynamically quantised activations."""
    with warnings.catch_warnings():
        # torch.ao.quantization and quantized tensors are deprecated in favour of torchao (not a dependency).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*", category=UserWarning)
        quantized = quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)
    quantized.descriptor_dim = model.descriptor_dim
    return quantized


RUNTIME_PRECISION = {"torch": "float32", "torch-bf16": "bfloat16", "torch-int8": "int8-linear-dynamic",
                     "onnx": "float32", "onnx-int8": "int8"}
ONNX_INT8_PRECISIONS = ("int8", "auto")  # what `precision` may say for runtime onnx-int8 (None: int8)


def _onnx_precision(runtime: str, precision: str | None) -> str | None:
    """The export precision of an ONNX runtime (None for the others); TscmError for one the runtime does not take."""
    if precision is None:
        return RUNTIME_PRECISION[runtime] if runtime in ("onnx", "onnx-int8") else None
    if runtime != "onnx-int8" or precision not in ONNX_INT8_PRECISIONS:
        raise TscmError(f"precision {precision!r} applies to runtime onnx-int8 only (one of "
                        f"{', '.join(ONNX_INT8_PRECISIONS)}), not to runtime {runtime!r}")
    return precision


def runtime_model(
    model: nn.Module,
    meta: dict[str, Any],
    runtime: str,
    *,
    threads: int | None = None,
    calibration_paths: Sequence[str | Path] = (),
    exporter: str = "dynamo",
    precision: str | None = None,
) -> nn.Module:
    """`model` (float32, eval mode, with checkpoint metadata `meta`) prepared to run with `runtime`.

    `precision="auto"` (onnx-int8 only): keep int8 only where it is faster here (module doc).
    """
    if runtime not in RUNTIMES:
        raise TscmError(f"runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if precision is not None:
        _onnx_precision(runtime, precision)
    if runtime == "torch":
        return model.eval()
    if runtime == "torch-bf16":
        return AutocastDescriptorModel(model).eval()
    if runtime == "torch-int8":
        return quantize_linear_int8(model)
    data = export_model(model, meta, exporter=exporter, precision=_onnx_precision(runtime, precision),
                        calibration_paths=calibration_paths, threads=threads)
    return OnnxDescriptorModel(data, threads)


def make_extractor(
    source: str | Path,
    runtime: str = "torch",
    *,
    threads: int | None = None,
    calibration_paths: Sequence[str | Path] = (),
    exporter: str = "dynamo",
    precision: str | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """(model mapping B×3×H×W to B×D descriptors, metadata) for a checkpoint directory or an exported .onnx file.

    The metadata has the checkpoint's fields (image_size, mean, std, fingerprint, ...) plus `runtime`
    and `precision`. An .onnx file runs with runtime "onnx" whatever its precision; a checkpoint with
    "onnx"/"onnx-int8" is exported in memory first (onnx-int8 needs `calibration_paths`). `threads`
    sets ONNX Runtime's intra-op threads; PyTorch runtimes use the process' torch.set_num_threads.
    `precision="auto"` with onnx-int8: int8 only if it is faster on this machine (the metadata's
    `precision` is what was kept, `precision_choice` holds both timings).
    """
    if runtime not in RUNTIMES:
        raise TscmError(f"runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    path = Path(source)
    if path.is_file() and path.suffix == ".onnx":
        if runtime != "onnx" or precision is not None:
            raise TscmError(f"{path} is an exported ONNX model: it runs with runtime 'onnx' only, not {runtime!r}"
                            + ("" if precision is None else f" with precision {precision!r} (its own is fixed)"))
        extractor = OnnxDescriptorModel(path, threads)
        return extractor, {**extractor.meta, "runtime": runtime}
    model, meta = load_checkpoint_folder(path)
    extractor = runtime_model(model, meta, runtime, threads=threads, calibration_paths=calibration_paths,
                              exporter=exporter, precision=precision)
    if isinstance(extractor, OnnxDescriptorModel):  # the precision the export kept (auto may keep float32)
        extra = {"precision": extractor.meta["precision"]}
        if "precision_choice" in extractor.meta:
            extra["precision_choice"] = extractor.meta["precision_choice"]
        return extractor, {**meta, "runtime": runtime, **extra}
    return extractor, {**meta, "runtime": runtime, "precision": RUNTIME_PRECISION[runtime]}
