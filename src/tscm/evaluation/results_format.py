"""A run's results file: its name, header and the fields its readers rely on, and the one reader.

Written by `experiments/report`; read by `tscm visualize` (through the report) and by
`deploy/packaging/model_card` (a model card quotes a run's numbers), which sits below the experiments.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping

from tscm.errors import TscmError
from tscm.fileio import check_header, read_json

RESULTS_JSON = "results.json"
RESULTS_FORMAT = "tscm-results"
RESULTS_FORMAT_VERSION = 2
ROLES = ("teacher", "student", "reference")
# Model names become file names (descriptors/<name>.npz), so they stay plain.
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")

# What the readers of results.json (visualize, the reports, model cards) use; an edited or partial file is
# refused naming the field.
_DATASET_FIELDS = {"path": str, "name": str, "split": str, "num_db": int, "num_queries": int, "num_queries_evaluated": int}


def read_results_file(file: str | Path) -> dict[str, Any]:
    """The results file at `file`, read with the bounds of `fileio.read_json`, its header and fields checked."""
    results = read_json(file, "results file")
    check_header(results, RESULTS_FORMAT, RESULTS_FORMAT_VERSION, str(file), ("dataset", "models"))
    check_results_fields(results, str(file))
    return results


def check_results_fields(results: Mapping[str, Any], where: str) -> None:
    """The fields of results.json that readers rely on exist with the right types; else TscmError naming the field."""
    dataset = results["dataset"]
    if not isinstance(dataset, dict):
        raise TscmError(f"{where}: field 'dataset' must be a JSON object, got {type(dataset).__name__}")
    for name, kind in _DATASET_FIELDS.items():
        value = dataset.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TscmError(f"{where}: field 'dataset.{name}' must be {'a string' if kind is str else 'an integer'}, "
                            f"got {value!r}")
    unit = dataset.get("unit")
    if unit not in ("m", "frame", "explicit"):
        raise TscmError(f"{where}: field 'dataset.unit' must be m, frame or explicit, got {unit!r}")
    radius = dataset.get("radius")
    if unit != "explicit" and not (isinstance(radius, (int, float)) and not isinstance(radius, bool)
                                   and math.isfinite(radius) and radius >= 0):
        raise TscmError(f"{where}: field 'dataset.radius' must be a finite distance ≥ 0, got {radius!r}")
    models = results["models"]
    if not isinstance(models, list):
        raise TscmError(f"{where}: field 'models' must be a list, got {type(models).__name__}")
    for position, model in enumerate(models):
        if not isinstance(model, dict):
            raise TscmError(f"{where}: models[{position}] must be a JSON object, got {type(model).__name__}")
        if not isinstance(model.get("name"), str) or not MODEL_NAME_PATTERN.match(model["name"]):
            raise TscmError(f"{where}: models[{position}].name must be a plain model name, got {model.get('name')!r}")
        if model.get("role") not in ROLES:
            raise TscmError(f"{where}: models[{position}].role must be one of {', '.join(ROLES)}, got {model.get('role')!r}")
