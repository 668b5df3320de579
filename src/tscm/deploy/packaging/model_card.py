"""Model cards: a checkpoint as a folder ready to publish (Hugging Face model repository or any file host).

`write_model_card(checkpoint, out)` writes into `out`:

- `model.safetensors` and `meta.json`, byte-identical copies of the checkpoint's (so the folder
  is itself a checkpoint: `load_checkpoint`, `PlaceRecognizer.from_checkpoint`, `torch.hub`).
- `README.md`: YAML front matter for the Hugging Face Hub (license, library_name, pipeline_tag,
  tags and, with results, a `model-index` whose metrics name the data set, split, radius and its
  unit and the query counts), then the model, its input (size, normalisation), Recall@N and
  precision-recall from a run's results.json (the entry of this checkpoint's model, matched by
  fingerprint, by the checkpoint path the run recorded, or by name), milliseconds per image
  measured here on random input at batch 1 and 16 (CPU, threads and load stated), the SHA-256 of
  both files (torch.hub loading checks model.safetensors against it), and how to load it.

`checkpoint` may also be a published folder (hf://user/name or an https URL; fetched through
`tscm.deploy.packaging.hub`, which needs the network and says so offline).
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from tscm.data.places import radius_text
from tscm.deploy.packaging.hub import CARD_FILE, META_FILE, WEIGHTS_FILE, file_sha256, is_remote, resolve_checkpoint
from tscm.errors import TscmError
from tscm.evaluation.recall import protocol_label
from tscm.evaluation.results_format import RESULTS_JSON, read_results_file
from tscm.fileio import atomic_group, atomic_path, check_output_folder, write_text_atomic
from tscm.machine import cpu_model, load_average, median_ms, time_turns
from tscm.models.checkpoint import load_checkpoint
from tscm.threads import limit_threads

TIMED_BATCHES = (1, 16)
TIMING_BUDGET_S = 2.0  # per batch size
TIMING_MAX_PASSES = 50
RECALL_NS = ("1", "5", "10", "20")
PR_NAMES = {"average_precision": "AP", "recall_at_100_precision": "R@100%P", "f1_max": "F1 max"}
TAGS = ["visual-place-recognition", "image-retrieval", "knowledge-distillation", "tscm", "pytorch", "safetensors"]


@dataclass
class MatchedResult:
    """The results.json entry of the carded model and the data set it was measured on."""

    entry: dict[str, Any]
    dataset: dict[str, Any]
    how: str  # "fingerprint", "checkpoint path" or "name"
    source: str  # the results.json file
    seed_index: int | None = None  # which seed's checkpoint this is, when known
    recall: dict[str, float] = field(default_factory=dict)  # the numbers reported (this seed's, or the mean)
    note: str = ""


@dataclass
class Card:
    out: Path
    sha256: str
    meta_sha256: str
    meta: dict[str, Any]
    params: int
    timings: list[dict[str, Any]]
    result: MatchedResult | None
    name: str


# ---- results.json -----------------------------------------------------------------------------------


def read_card_results(path: str | Path) -> dict[str, Any]:
    """The results file named by `--results` (the file, or the run folder holding it), with its path in `_file`."""
    file = Path(path)
    if file.is_dir():
        file = file / RESULTS_JSON
    if not file.is_symlink() and not file.exists():  # a FIFO or a loop there is named by the reader
        raise TscmError(f"--results {path}: no such file (expected a run's results.json)")
    document = read_results_file(file)
    document["_file"] = str(file)
    return document


def _same_folder(recorded: Any, base: Path, checkpoint: Path) -> bool:
    if not isinstance(recorded, str) or not recorded:
        return False
    candidate = Path(recorded)
    candidate = candidate if candidate.is_absolute() else base / candidate
    try:
        return candidate.exists() and candidate.resolve() == checkpoint.resolve()
    except OSError:
        return False


def match_result(document: dict[str, Any], meta: dict[str, Any], checkpoint: Path | None,
                 model_name: str | None = None) -> MatchedResult:
    """The entry of `document` for the checkpoint with metadata `meta` (fingerprint, recorded path, then name)."""
    file = document.get("_file", "results.json")
    base = Path(file).parent
    fingerprint = meta["fingerprint"]
    models = document["models"]
    names = ", ".join(m["name"] for m in models)
    found: tuple[dict, str, int | None] | None = None
    for entry in models:
        per_seed = entry.get("per_seed") if isinstance(entry.get("per_seed"), list) else []
        if fingerprint in (entry.get("fingerprint"), entry.get("model_fingerprint")):
            found = (entry, "fingerprint", None)
        for i, extra in enumerate(per_seed):
            if isinstance(extra, dict) and fingerprint in (extra.get("fingerprint"), extra.get("model_fingerprint")):
                found = (entry, "fingerprint", i)
        if found:
            break
    if found is None and checkpoint is not None:
        for entry in models:
            if _same_folder((entry.get("training") or {}).get("checkpoint"), base, checkpoint):
                found = (entry, "checkpoint path", 0 if len(entry.get("seeds") or []) == 1 else None)
            per_seed = entry.get("per_seed") if isinstance(entry.get("per_seed"), list) else []
            for i, extra in enumerate(per_seed):
                if isinstance(extra, dict) and _same_folder((extra.get("training") or {}).get("checkpoint"), base, checkpoint):
                    found = (entry, "checkpoint path", i)
            if found:
                break
    if model_name is not None:
        named = [entry for entry in models if entry["name"] == model_name]
        if not named:
            raise TscmError(f"{file}: no model named {model_name!r}; it holds {names}")
        if found is not None and found[0] is not named[0]:
            raise TscmError(f"{file}: the checkpoint is model {found[0]['name']!r} there (matched by {found[1]}), "
                            f"not {model_name!r}")
        if found is None:
            found = (named[0], "name", None)
    if found is None:
        raise TscmError(f"{file}: no model entry records this checkpoint (fingerprint {fingerprint} or its path); "
                        f"name the entry with --model, one of: {names}")
    entry, how, seed_index = found
    if entry.get("role") not in (None, meta.get("role")):
        raise TscmError(f"{file}: model {entry['name']!r} is a {entry.get('role')}, the checkpoint a {meta.get('role')}")
    seeds = list(entry.get("seeds") or [])
    recall = {str(k): float(v) for k, v in (entry.get("recall") or {}).items()}
    note = ""
    per_seed_recall = entry.get("recall_per_seed")
    if seed_index is not None and isinstance(per_seed_recall, list) and seed_index < len(per_seed_recall) and len(seeds) > 1:
        recall = {str(k): float(v) for k, v in per_seed_recall[seed_index].items()}
        note = (f"Recall@N of this checkpoint (seed {seeds[seed_index]}); precision-recall numbers are the mean "
                f"over seeds {', '.join(map(str, seeds))}.")
    elif len(seeds) > 1:
        note = f"Mean over seeds {', '.join(map(str, seeds))} (this checkpoint is one of them)."
    return MatchedResult(entry, document["dataset"], how, file, seed_index, recall, note)


# ---- timing -----------------------------------------------------------------------------------------


def machine_description() -> dict[str, Any]:
    return {"cpu": cpu_model(), "logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average": load_average(), "torch": torch.__version__, "python": platform.python_version()}


def time_model(model: torch.nn.Module, image_size: Sequence[int], batch_sizes: Sequence[int] = TIMED_BATCHES,
               budget_s: float = TIMING_BUDGET_S) -> list[dict[str, Any]]:
    """Milliseconds per image of `model` (eval, CPU) on random input: median of repeated passes per batch size.

    Passes come in blocks of 3 (`tscm.machine.time_turns`), at least one block and at most about 50
    passes, stopping once `budget_s` has passed.
    """
    height, width = int(image_size[0]), int(image_size[1])
    generator = torch.Generator().manual_seed(0)
    rows = []
    with torch.inference_mode():
        for batch in batch_sizes:
            images = torch.randn((batch, 3, height, width), generator=generator)
            passes = time_turns({"model": lambda: model(images)}, cycles=TIMING_MAX_PASSES // 3, calls_per_block=3,
                                budget_s=budget_s)["model"]
            median = median_ms(passes)
            rows.append({"batch": int(batch), "passes": len(passes), "ms_per_batch": median,
                         "ms_per_image": median / batch})
    return rows


# ---- the card ---------------------------------------------------------------------------------------


def _metric_args(dataset: dict[str, Any]) -> dict[str, Any]:
    return {"radius": dataset.get("radius"), "unit": dataset.get("unit")}


def model_index(name: str, result: MatchedResult) -> list[dict[str, Any]]:
    """The `model-index` front-matter block (Hugging Face's evaluation-results metadata)."""
    dataset = result.dataset

    radius = radius_text(dataset.get("radius"), dataset.get("unit"))
    metrics = [{"type": f"recall@{n}", "name": f"Recall@{n} ({radius})", "value": round(result.recall[n], 2),
                "args": _metric_args(dataset)} for n in RECALL_NS if n in result.recall]
    for key, label in PR_NAMES.items():
        value = (result.entry.get("pr") or {}).get(key)
        if value is not None:
            metrics.append({"type": key, "name": f"{label} ({radius})", "value": round(float(value), 2),
                            "args": _metric_args(dataset)})
    return [{
        "name": name,
        "results": [{
            "task": {"type": "image-feature-extraction", "name": "Visual place recognition"},
            "dataset": {
                "name": str(dataset.get("name")),
                "type": str(dataset.get("name")),
                "split": str(dataset.get("split")),
                "args": {
                    "radius": dataset.get("radius"),
                    "unit": dataset.get("unit"),
                    "protocol": dataset.get("protocol"),
                    "num_db": dataset.get("num_db"),
                    "num_queries": dataset.get("num_queries"),
                    "num_queries_evaluated": dataset.get("num_queries_evaluated"),
                },
            },
            "metrics": metrics,
        }],
    }]


def front_matter(name: str, meta: dict[str, Any], license_id: str, result: MatchedResult | None) -> str:
    data: dict[str, Any] = {
        "license": license_id,
        "library_name": "tscm",
        "pipeline_tag": "image-feature-extraction",
        "tags": TAGS + [str(meta.get("role")), str(meta.get("preset"))],
    }
    if result is not None:
        data["model-index"] = model_index(name, result)
    return "---\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000) + "---\n"


def _fmt(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def _results_section(result: MatchedResult) -> list[str]:
    dataset = result.dataset
    entry = result.entry
    pr = entry.get("pr") or {}
    ns = [n for n in RECALL_NS if n in result.recall]
    header = ["Ground truth"] + [f"R@{n}" for n in ns] + list(PR_NAMES.values())
    lines = [
        "## Results",
        "",
        f"Measured on **{dataset.get('name')}**, split **{dataset.get('split')}**: {dataset.get('num_db')} database "
        f"images, {dataset.get('num_queries')} queries of which {dataset.get('num_queries_evaluated')} have a true "
        f"match within the radius and are evaluated; {protocol_label(dataset.get('radius'), dataset.get('unit'))}. "
        "Recall@N and precision-recall in percent (AP = average precision, R@100%P = recall at 100 % precision, "
        "over every query's top-1 distance).",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |",
        "| " + " | ".join([radius_text(dataset.get("radius"), dataset.get("unit"))] + [_fmt(result.recall[n]) for n in ns]
                          + [_fmt(pr.get(key)) for key in PR_NAMES]) + " |",
    ]
    for label, recall in sorted((entry.get("recall_at") or {}).items()):
        lines.append("| " + " | ".join([str(label)] + [_fmt(recall.get(n)) for n in ns] + ["-"] * len(PR_NAMES)) + " |")
    lines += ["", f"From `{result.source}`, model `{entry['name']}` (matched by {result.how})."
              + (f" {result.note}" if result.note else ""), ""]
    return lines


@dataclass(frozen=True)
class CardFile:
    """A file of the card folder as written: its SHA-256 and size."""

    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class CardSpeed:
    """The milliseconds per image measured for the card (`time_model`) and the machine they were measured on."""

    timings: tuple[dict[str, Any], ...]
    machine: dict[str, Any]


def render_card(name: str, meta: dict[str, Any], *, params: int, weights: CardFile, meta_file: CardFile,
                speed: CardSpeed | None, result: MatchedResult | None, license_id: str, repo_id: str | None) -> str:
    """The card's Markdown below the front matter: the model, its input, results, speed, files, loading."""
    lines = _summary_section(name, meta, params, license_id)
    if result is not None:
        lines += _results_section(result)
    if speed is not None and speed.timings:
        lines += _speed_section(speed)
    lines += _files_section(weights, meta_file)
    lines += _loading_section(meta, repo_id)
    return "\n".join(lines)


def _summary_section(name: str, meta: dict[str, Any], params: int, license_id: str) -> list[str]:
    height, width = meta["image_size"]
    role = meta.get("role")
    lines = [
        f"# {name}",
        "",
        f"A tscm {role} for visual place recognition (preset `{meta.get('preset')}`): images in, "
        f"{meta['descriptor_dim']}-d L2-normalised global descriptors out; nearby places have nearby descriptors "
        "(squared L2 distance = 2 − 2·cosine).",
        "",
        "| | |",
        "| --- | --- |",
        f"| role | {role} |",
        f"| preset | `{meta.get('preset')}` |",
        f"| parameters | {params:,} |",
        f"| descriptor | {meta['descriptor_dim']}-d float32, L2-normalised |",
        f"| fingerprint | `{meta['fingerprint']}` |",
    ]
    if meta.get("teacher_fingerprint"):
        lines.append(f"| distilled from teacher | `{meta['teacher_fingerprint']}` |")
    return lines + [
        f"| tscm version that saved it | {meta.get('package_version', '-')} |",
        f"| license | {license_id} |",
        "",
        "## Input",
        "",
        f"RGB images, pixels scaled to [0, 1], normalised per channel with mean {list(meta['mean'])} and std "
        f"{list(meta['std'])}, then resized bilinearly (no antialiasing) to **{height}×{width}** (H×W). Any input "
        "size is accepted; `tscm` and the torch.hub model's `transform` do this for you.",
        "",
    ]


def _speed_section(speed: CardSpeed) -> list[str]:
    machine = speed.machine
    load = machine.get("load_average")
    lines = [
        "## Speed",
        "",
        f"Measured when this card was written: PyTorch {machine['torch']} eager float32 on {machine['cpu']} "
        f"({machine['logical_cores']} logical cores), {machine['torch_threads']} torch thread(s)"
        + (f", load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)" if load else "")
        + "; random input, median of repeated passes after a warm-up.",
        "",
        "| batch | ms per batch | ms per image | passes |",
        "| ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {t['batch']} | {t['ms_per_batch']:.2f} | {t['ms_per_image']:.2f} | {t['passes']} |"
              for t in speed.timings]
    return lines + [""]


def _files_section(weights: CardFile, meta_file: CardFile) -> list[str]:
    return [
        "## Files",
        "",
        "| file | bytes | SHA-256 |",
        "| --- | ---: | --- |",
        f"| `{WEIGHTS_FILE}` | {weights.size_bytes} | `{weights.sha256}` |",
        f"| `{META_FILE}` | {meta_file.size_bytes} | `{meta_file.sha256}` |",
        "",
        f"`{META_FILE}` holds the preset's configuration, input size, normalisation and the weights' fingerprint; "
        "loading refuses weights from another save or an edited file. Nothing is unpickled.",
        "",
    ]


def _loading_section(meta: dict[str, Any], repo_id: str | None) -> list[str]:
    role = meta.get("role")
    where = f"hf://{repo_id}" if repo_id else "path/to/this/folder"
    entry = f"tscm_{role}" if role in ("student", "teacher") else "tscm_student"
    return [
        "## How to load it",
        "",
        "With tscm (`pip install tscm`, or from its repository), this folder is a checkpoint:",
        "",
        "```python",
        "from tscm.deploy.retrieval.recognizer import PlaceRecognizer",
        'rec = PlaceRecognizer.from_checkpoint("path/to/this/folder")',
        'rec.add(["map/0001.jpg", "map/0002.jpg"], xy=[[0, 0], [5, 0]])',
        'print(rec.query("camera.jpg", k=5))',
        "```",
        "",
        "With torch.hub (the tscm repository's `hubconf.py`; a remote folder is fetched into torch.hub's cache and "
        "checked against the SHA-256 above):",
        "",
        "```python",
        "import torch",
        f'model = torch.hub.load("path/to/tscm", "{entry}", source="local", checkpoint="{where}")',
        'descriptors = model.describe(["image.jpg"])  # N×D float32, L2-normalised',
        "```",
        "",
        "As ONNX (dynamic batch; the fingerprint, input size and normalisation travel in the file's metadata):",
        "",
        "```",
        f"tscm export path/to/this/folder --onnx {meta.get('preset')}.onnx",
        "```",
        "",
    ]


def _check_card_folder(destination: Path, inputs: dict[str, Any]) -> None:
    """--out is checked before any download, timing or copy: a folder (or a new one) that is not the
    checkpoint's own, whose three files are not inputs and can be written."""
    check_output_folder("--out", destination, (WEIGHTS_FILE, META_FILE, CARD_FILE), inputs)


def _copy_exact(source: Path, destination: Path) -> CardFile:
    """Copy `source` to `destination` (atomically; inside a group, moved with the group) and return the
    copy's SHA-256 and size, refusing a copy that differs from the source."""
    with atomic_path(destination) as tmp:
        shutil.copyfile(source, tmp)
        digest = file_sha256(tmp)
        if digest != file_sha256(source):
            raise TscmError(f"{destination}: the copy differs from {source} (changed while copying?)")
        return CardFile(digest, tmp.stat().st_size)


def write_model_card(checkpoint: str | Path, out: str | Path, *, results: str | Path | None = None,
                     model_name: str | None = None, name: str | None = None, license_id: str = "mit",
                     repo_id: str | None = None, sha256: str | None = None, timing: bool = True,
                     threads: int | None = None, progress: bool = True) -> Card:
    """Write the publishable folder `out` for `checkpoint` (see the module doc); returns what was written."""
    if threads is not None and threads < 1:
        raise TscmError(f"--threads: expected a number of threads ≥ 1, got {threads}")
    if not license_id or any(c.isspace() for c in license_id):
        raise TscmError(f"--license {license_id!r}: expected a license identifier such as mit or apache-2.0")
    destination = Path(out)
    results_file = None if results is None else Path(results) / RESULTS_JSON if Path(results).is_dir() else Path(results)
    inputs = {"the --results file": results_file}
    _check_card_folder(destination, {**inputs, "the checkpoint": None if is_remote(checkpoint) else checkpoint})
    folder = resolve_checkpoint(checkpoint, sha256, progress=progress)
    if is_remote(checkpoint):  # now the fetched folder is known
        _check_card_folder(destination, {**inputs, "the fetched checkpoint": folder})
    model, meta = load_checkpoint(folder)
    result = None
    if results is not None:
        document = read_card_results(results)
        result = match_result(document, meta, None if is_remote(checkpoint) else folder, model_name)
    elif model_name is not None:
        raise TscmError("--model names an entry of --results; give --results RUN/results.json too")
    name = name or (f"tscm-{result.entry['name']}" if result is not None else f"tscm-{meta.get('preset')}")
    speed = None
    if timing:
        with limit_threads(torch=threads):
            machine = machine_description()
            speed = CardSpeed(tuple(time_model(model, meta["image_size"])), machine)
    params = sum(p.numel() for p in model.parameters())
    with atomic_group():  # the three files together, or none: a failure keeps the folder as it was
        weights = _copy_exact(folder / WEIGHTS_FILE, destination / WEIGHTS_FILE)
        meta_file = _copy_exact(folder / META_FILE, destination / META_FILE)
        text = front_matter(name, meta, license_id, result) + "\n" + render_card(
            name, meta, params=params, weights=weights, meta_file=meta_file, speed=speed, result=result,
            license_id=license_id, repo_id=repo_id)
        write_text_atomic(destination / CARD_FILE, text)
    timings = [] if speed is None else list(speed.timings)
    return Card(destination, weights.sha256, meta_file.sha256, meta, params, timings, result, name)
