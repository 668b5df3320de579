"""Streaming place recognition: images in, nearest known places (with coordinates) out.

`PlaceRecognizer` joins a descriptor extractor (a checkpoint or an exported ONNX model, any
runtime of `tscm.inference.onnx_export`) and a `PlaceIndex`. Images may be paths, PIL images or H×W×3 uint8
arrays. The index's metadata records the model fingerprint, so an index is only ever searched
with descriptors of the model that built it.

Back-ends that need training (PCA, IVF) and streaming `add`: the recognizer searches an exact
flat index until it holds `train_after` descriptors (default: twice what the back-end needs to
train, at least 1,000), then trains the requested back-end on everything added so far and moves
to it; later adds go straight into it. `backend="auto"` follows `recommended_config` as the map
grows (exact flat while small, PCA + flat, then HNSW), switching when the recommendation changes.
`rebuild()` retrains on everything (worth doing after the map has grown well past its training
set). Switching and rebuilding need the original descriptors, which the recognizer keeps in
memory for what was added in this session (dim × 4 bytes per image); an index loaded from a
file keeps its back-end, since its file holds only the searched (possibly reduced) vectors.

Deciding, not only ranking (loop closure): when the index holds a calibrated threshold
(tscm.deploy.retrieval.calibration), every returned place says whether it is `accepted` (its score ≤ the
threshold) and a `confidence` in (0, 1] (0.5 at the threshold); without one both are None
(tscm.deploy.retrieval.place_decisions).
`query_sequence` scores the newest image by the last L images it was given (SeqSLAM-style, the
map's entries in the order they were added, i.e. along the route); `observe` is loop closure
inside one traversal: it queries the map while excluding the most recent entries (by their
times, or by how many were added after them), then adds the image.
"""

from __future__ import annotations

from pathlib import Path
from time import perf_counter
from typing import Any, Callable, Sequence

import numpy as np
import torch

from tscm.data.images import as_rgb, eval_transform
from tscm.deploy.retrieval.index import PlaceIndex, read_index_metadata, recommended_config
from tscm.deploy.retrieval.place_decisions import (Place, distance_row, ranked_places, sequence_decision_score,
                                                   threshold_rule, top1_decision_score)
from tscm.errors import TscmError
from tscm.evaluation.consistency import ConsistencyFilter
from tscm.evaluation.extract import Described, InputSpec, describe_images
from tscm.evaluation.ranking import rank_matrix
from tscm.evaluation.sequence import UNSEEN_SQUARED_DISTANCE, SequenceMatcher

MIN_TRAIN_AFTER = 1000
RECOGNIZER_META_KEY = "recognizer"  # inside the index's model_meta: the requested back-end, kept across saves


def index_model_meta(meta: dict[str, Any], source: str | Path | None) -> dict[str, Any]:
    """What an index records about the model that made its descriptors (beside the fingerprint)."""
    return {
        "checkpoint": None if source is None else str(Path(source).resolve()),
        "preset": meta.get("preset"),
        "role": meta.get("role"),
        "descriptor_dim": int(meta["descriptor_dim"]),
        "image_size": [int(s) for s in meta["image_size"]],
        "mean": [float(m) for m in meta["mean"]],
        "std": [float(s) for s in meta["std"]],
        "runtime": meta.get("runtime", "torch"),
        "precision": meta.get("precision", "float32"),
    }


def training_minimum(backend: str, params: dict[str, Any]) -> int:
    """Fewest descriptors `PlaceIndex.train` accepts for this back-end (0: it needs no training)."""
    needed = 0
    if params.get("pca_dim") is not None or backend == "pca-flat":
        needed = max(needed, int(params.get("pca_dim") or 256))
    if backend == "ivfpq":
        needed = max(needed, int(params.get("nlist", 1024)), 2 ** int(params.get("pq_bits", 8)))
    return needed


class PlaceRecognizer:
    """An extractor and a place index: `add` images of known places, `query` new images."""

    def __init__(self, extractor, meta: dict[str, Any], *, source: str | Path | None = None,
                 index: PlaceIndex | None = None, backend: str = "auto", backend_params: dict[str, Any] | None = None,
                 train_after: int | None = None, batch_size: int = 16) -> None:
        self.extractor = extractor
        self.meta = meta
        self.fingerprint: str = meta["fingerprint"]
        self.dim = int(meta["descriptor_dim"])
        self.batch_size = batch_size
        self.source = source
        self.index = index
        if index is not None and index.dim != self.dim:
            raise TscmError(f"index holds {index.dim}-d descriptors, the model makes {self.dim}-d ones")
        self._configure(backend, dict(backend_params or {}), train_after)
        # The session's original descriptors with their ids, paths and coordinates; None when the
        # map was loaded from a file (which keeps only the searched vectors).
        self._held: list[np.ndarray] | None = [] if index is None else None
        self._ids: list[np.ndarray] = []
        self._paths: list[str] = []
        self._xy: list[np.ndarray] | None = []
        self._times: list[np.ndarray] | None = []
        self._sequence = None  # the SequenceMatcher of query_sequence, made on first use
        self._loop_matcher = None  # the SequenceMatcher of observe with sequences (a growing map), made on first use
        self._loop_index = None  # the index whose distances that matcher holds
        self._consistency = None  # the ConsistencyFilter of observe / query_sequence, made on first use
        self._input_spec: InputSpec | None = None
        self._largest_id: int | None = None  # of the map's ids, found on first use, then kept by add_descriptors

    def _configure(self, backend: str, params: dict[str, Any], train_after: int | None) -> None:
        """Check and record the requested back-end, its parameters and when to train it."""
        if backend == "auto":
            if params:
                raise TscmError(f"backend 'auto' chooses its own parameters; name a backend to set {', '.join(params)}")
            minimum = 0
        else:
            PlaceIndex.create(backend, self.dim, **params)  # fails now on an unknown back-end or parameter
            minimum = training_minimum(backend, params)
        train_after = train_after if train_after is not None else max(2 * minimum, MIN_TRAIN_AFTER)
        if train_after < minimum:
            raise TscmError(f"train_after={train_after}: backend {backend!r} needs at least {minimum} descriptors to train")
        self.backend, self.backend_params, self.train_after = backend, params, train_after

    def _model_meta(self) -> dict[str, Any]:
        requested = {"backend": self.backend, "params": self.backend_params, "train_after": self.train_after}
        return {**index_model_meta(self.meta, self.source), RECOGNIZER_META_KEY: requested}

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, index: str | Path | PlaceIndex | None = None, *,
                        backend: str = "auto", runtime: str = "torch", threads: int | None = None,
                        calibration_paths: Sequence[str | Path] = (), train_after: int | None = None,
                        batch_size: int = 16, **backend_params: Any) -> PlaceRecognizer:
        """A recognizer with the model of `checkpoint` (directory or exported .onnx) run by `runtime`.

        `index`: None (start an empty map with `backend`), or an index file / PlaceIndex made by this
        model, which keeps its own back-end.
        """
        from tscm.inference.runtimes import make_extractor

        if index is not None and (backend != "auto" or backend_params or train_after is not None):
            raise TscmError("backend settings apply to a new map; an existing index keeps the back-end it was built with")
        extractor, meta = make_extractor(checkpoint, runtime, threads=threads, calibration_paths=calibration_paths)
        loaded = None
        if isinstance(index, PlaceIndex):
            loaded = index
            if loaded.model_fingerprint != meta["fingerprint"]:
                raise TscmError(f"index was built from descriptors of model {loaded.model_fingerprint!r}, but "
                                f"{checkpoint} has fingerprint {meta['fingerprint']!r}; rebuild the index with this model")
        elif index is not None:
            loaded = PlaceIndex.load(index, expected_fingerprint=meta["fingerprint"])
        if loaded is not None:
            backend, backend_params = loaded.backend, dict(loaded.params)
        return cls(extractor, meta, source=checkpoint, index=loaded, backend=backend, backend_params=backend_params,
                   train_after=train_after, batch_size=batch_size)

    @classmethod
    def load(cls, path: str | Path, checkpoint: str | Path | None = None, *, runtime: str = "torch",
             threads: int | None = None, batch_size: int = 16) -> PlaceRecognizer:
        """The map saved at `path`, with the checkpoint recorded in it (or `checkpoint`, which must be the same model)."""
        if checkpoint is None:
            recorded = (read_index_metadata(path).get("model_meta") or {}).get("checkpoint")
            if not recorded:
                raise TscmError(f"{path}: the index records no checkpoint; pass one (--checkpoint)")
            if not Path(recorded).exists():
                raise TscmError(f"{path}: the checkpoint it records, {recorded}, does not exist; pass one (--checkpoint)")
            checkpoint = recorded
        return cls.from_checkpoint(checkpoint, path, runtime=runtime, threads=threads, batch_size=batch_size)

    # ---- state --------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return 0 if self.index is None else self.index.count

    @property
    def can_rebuild(self) -> bool:
        """Whether the original descriptors of every entry are held (needed to switch or retrain)."""
        return self._held is not None

    # ---- adding -------------------------------------------------------------------------
    def describe(self, images: Sequence[Any], *, on_bad_image: str = "fail", progress: bool = False,
                 report: Callable[[str], None] | None = None) -> Described:
        """Descriptors of `images` with this recognizer's model (tscm.evaluation.extract.describe_images)."""
        return describe_images(self.extractor, list(images), InputSpec.of(self.meta), batch_size=self.batch_size,
                               on_bad_image=on_bad_image, progress=progress, report=report)

    def add(self, images: Sequence[Any], xy=None, ids=None, *, times=None, on_bad_image: str = "fail",
            progress: bool = False, report: Callable[[str], None] | None = None) -> Described:
        """Describe `images` and add them as known places; returns what was added and skipped.

        `xy`: N×2 coordinates (metres) or None, for every add or for none. `ids`: N unique
        integers, default the next free numbers. `times`: N frame numbers or seconds (for
        `observe`'s exclusion of recent frames), for every add or for none. A skipped image leaves
        its id unused.
        """
        images = list(images)
        if not images:
            raise TscmError("add: no images given")
        if xy is not None:
            xy = np.asarray(xy, dtype=np.float64)
            if xy.shape != (len(images), 2):
                raise TscmError(f"add: expected coordinates of shape ({len(images)}, 2), got {xy.shape}")
        if times is not None:
            times = np.asarray(times, dtype=np.float64)
            if times.shape != (len(images),):
                raise TscmError(f"add: expected {len(images)} times, got shape {times.shape}")
        if ids is None:
            start = self._next_id()
            ids = np.arange(start, start + len(images), dtype=np.int64)
        ids = np.asarray(ids)
        if ids.shape != (len(images),) or not np.issubdtype(ids.dtype, np.integer):
            raise TscmError(f"add: expected {len(images)} integer ids, got shape {ids.shape} dtype {ids.dtype}")
        described = self.describe(images, on_bad_image=on_bad_image, progress=progress, report=report)
        if not described.kept:
            raise TscmError(f"add: none of the {len(images)} images could be read")
        kept = np.asarray(described.kept)
        paths = [str(images[i]) if isinstance(images[i], (str, Path)) else "" for i in described.kept]
        self.add_descriptors(described.descriptors, ids[kept], xy=None if xy is None else xy[kept], paths=paths,
                             times=None if times is None else times[kept])
        return described

    def add_descriptors(self, descriptors: np.ndarray, ids, *, xy=None, paths: Sequence[str] | None = None,
                        times=None) -> None:
        """Add descriptors made by this recognizer's model (e.g. by `describe`); may switch back-end (module doc)."""
        descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
        ids = np.asarray(ids, dtype=np.int64)
        paths = list(paths) if paths is not None else [""] * len(descriptors)
        if self.index is None:
            self.index = PlaceIndex.create("flat", self.dim, model_fingerprint=self.fingerprint,
                                           model_meta=self._model_meta())
        self.index.add(descriptors, ids, paths=paths, xy=xy, times=times)
        if len(ids) and self._largest_id is not None:
            self._largest_id = max(self._largest_id, int(ids.max()))
        if self._held is None:
            return
        self._held.append(descriptors)
        self._ids.append(ids)
        self._paths += paths
        if xy is None:
            self._xy = None
        elif self._xy is not None:
            self._xy.append(np.asarray(xy, dtype=np.float64))
        if times is None:
            self._times = None
        elif self._times is not None:
            self._times.append(np.asarray(times, dtype=np.float64))
        target = self._target_config()
        if target is not None and not self._index_matches(*target):
            self.rebuild()

    def _next_id(self) -> int:
        """One more than the largest id in the map (kept up to date by add_descriptors: streaming adds one
        entry per frame, and a scan over every id would grow with the map)."""
        if self.count == 0:
            return 0
        if self._largest_id is None:
            self._largest_id = int(self.index.ids.max())
        return self._largest_id + 1

    def _target_config(self) -> tuple[str, dict[str, Any]] | None:
        """The back-end the map should be on now, or None while it collects descriptors to train on."""
        if self.backend == "auto":
            return recommended_config(self.count, self.dim)
        if training_minimum(self.backend, self.backend_params) == 0 or self.count >= self.train_after:
            return self.backend, self.backend_params
        return None

    def _index_matches(self, backend: str, params: dict[str, Any]) -> bool:
        return self.index.backend == backend and all(self.index.params.get(k) == v for k, v in params.items())

    def rebuild(self, backend: str | None = None, **params: Any) -> None:
        """Rebuild the index from every descriptor held, training on all of them.

        With `backend`, switch to it (with `params`); else rebuild the requested back-end.
        """
        if not self.can_rebuild:
            raise TscmError("rebuild: this map was loaded from a file, which holds only the searched vectors; "
                            "build it again from the images (tscm index build)")
        if self.count == 0:
            raise TscmError("rebuild: the map is empty; add images first")
        if backend is not None:
            self._configure(backend, params, None)
        chosen, chosen_params = (recommended_config(self.count, self.dim) if self.backend == "auto"
                                 else (self.backend, self.backend_params))
        minimum = training_minimum(chosen, chosen_params)
        if self.count < minimum:
            raise TscmError(f"rebuild: backend {chosen!r} needs at least {minimum} descriptors to train, "
                            f"the map holds {self.count}")
        previous_thresholds = list(self.index.thresholds)
        self.index = PlaceIndex.build(
            np.concatenate(self._held), np.concatenate(self._ids), paths=self._paths,
            xy=None if self._xy is None else np.concatenate(self._xy), backend=chosen,
            times=None if self._times is None else np.concatenate(self._times),
            model_fingerprint=self.fingerprint, model_meta=self._model_meta(), **chosen_params)
        # Thresholds travel with the map; one measured in the old space no longer applies (reported by `stale`).
        self.index.thresholds = previous_thresholds

    # ---- search -------------------------------------------------------------------------
    def query(self, image: Any, k: int = 5) -> list[Place]:
        """The `k` nearest known places of one image (fewer if the map holds fewer), nearest first."""
        return self.query_many([image], k)[0]

    def query_many(self, images: Sequence[Any], k: int = 5) -> list[list[Place]]:
        """`query` for several images, described and searched in batches."""
        self._check_not_empty()
        return self.search(self.describe(images).descriptors, k)

    @property
    def threshold(self) -> dict[str, Any] | None:
        """The index's calibrated single-frame threshold for its current search space, or None."""
        return None if self.index is None else self.index.threshold(1)

    def search(self, descriptors: np.ndarray, k: int = 5, *, exclude_positions: int = 0) -> list[list[Place]]:
        """Places for descriptors made by this recognizer's model, one list per descriptor.

        `exclude_positions` leaves out the map's last n entries (the most recently added).
        """
        rule, found = self._search_rows(descriptors, k, exclude_positions)
        return [ranked_places(self.index, rows.tolist(), scores.tolist(), rule, value) for rows, scores, value in found]

    def _search_rows(self, descriptors: np.ndarray, k: int, exclude_positions: int):
        """(rule, [(map rows, match scores, decision score or None) per descriptor]) of `search`."""
        self._check_not_empty()
        if not (isinstance(k, int) and k >= 1):
            raise TscmError(f"k: expected a positive integer, got {k!r}")
        descriptors = np.atleast_2d(descriptors)
        searchable = self.count - exclude_positions
        rule = threshold_rule(self.index, 1)
        if searchable <= 0:
            return rule, [(np.zeros(0, np.int64), np.zeros(0, np.float32), None) for _ in range(len(descriptors))]
        wanted = max(k, rule.hits_needed() if rule is not None else 1)
        result = self.index.search(descriptors, min(wanted, searchable), entries=searchable)
        found = []
        for row, (positions, distances) in enumerate(zip(result.indices, result.distances)):
            keep = positions >= 0  # hits come nearest first; -1 (missing) only at the end
            hit_rows, hit_scores = positions[keep], distances[keep]
            value = None
            if rule is not None and len(hit_rows):
                value = top1_decision_score(self.index, rule, descriptors[row], hit_rows, hit_scores, searchable)
            found.append((hit_rows[:k], hit_scores[:k], value))
        return rule, found

    def describe_one(self, image: Any, *, timings: dict[str, float] | None = None) -> np.ndarray:
        """The 1×D descriptor of one image, the streaming way: no batching machinery around a lone image.

        The same numbers as `describe([image])`; `timings` (if given) gets the seconds of "decode"
        (read, convert, resize, normalise) and "describe" (the model) added.
        """
        tic = perf_counter()
        spec = self._spec
        tensor = eval_transform(as_rgb(image), spec.image_size, spec.mean, spec.std)
        tac = perf_counter()
        if getattr(self.extractor, "training", False):
            self.extractor.eval()  # once: describing never trains, and eval() walks every module
        with torch.inference_mode():
            descriptor = self.extractor(tensor[None]).detach().float().cpu().numpy()
        if timings is not None:
            timings["decode"] = timings.get("decode", 0.0) + tac - tic
            timings["describe"] = timings.get("describe", 0.0) + perf_counter() - tac
        return np.ascontiguousarray(descriptor, dtype=np.float32)

    @property
    def _spec(self) -> InputSpec:
        if self._input_spec is None:
            self._input_spec = InputSpec.of(self.meta)
        return self._input_spec

    def query_sequence(self, image: Any, k: int = 5, *, length: int = 10, consistency: int | None = None,
                       timings: dict[str, float] | None = None) -> list[Place]:
        """Places for the newest of a stream of query images, scored over the last `length` images given
        (SeqSLAM-style trajectories through the map in the order its entries were added).

        The first images of a stream are scored over the images seen so far. A threshold
        calibrated for sequences of `length` frames gives `accepted`/`confidence` by its decision
        score; `consistency` = k also asks k consecutive images to agree on a progression through
        the map (tscm.evaluation.consistency). `timings` gets each stage's seconds added (decode,
        describe, search, sequence, decision).
        """
        self._check_not_empty()
        if self._sequence is None or self._sequence.length != length or self._sequence.num_db != self.count:
            self._sequence = SequenceMatcher(length, self.count)
        descriptor = self.describe_one(image, timings=timings)
        tic = perf_counter()
        row = distance_row(self.index, descriptor[0], self.count)
        tac = perf_counter()
        scores = self._sequence.push(row)
        ranking = rank_matrix(scores[None, :], min(k, self.count))
        toc = perf_counter()
        rule = threshold_rule(self.index, length)
        value, consistent = None, True
        rows = ranking.indices[0].tolist()
        if rule is not None:
            value = sequence_decision_score(self.index, rule, scores, rows[0])
            consistent = self._consistent(consistency, rule.accepts(value), rows[0])
        places = ranked_places(self.index, rows, ranking.distances[0].tolist(), rule, value, consistent)
        if timings is not None:
            timings["search"] = timings.get("search", 0.0) + tac - tic
            timings["sequence"] = timings.get("sequence", 0.0) + toc - tac
            timings["decision"] = timings.get("decision", 0.0) + perf_counter() - toc
        return places

    def _consistent(self, frames: int | None, passed: bool, position: int) -> bool:
        """Push one frame into the temporal-consistency filter (made on first use, remade when `frames` changes)."""
        if frames is None:
            return True
        if self._consistency is None or self._consistency.frames != frames:
            self._consistency = ConsistencyFilter(frames)
        return self._consistency.push(passed, position)

    def reset_sequence(self) -> None:
        """Forget the images `query_sequence` and `observe` have seen (a new traversal starts)."""
        self._sequence = self._loop_matcher = None
        self._consistency = None

    def observe(self, image: Any, *, time: float | None = None, exclude_recent: float = 0, k: int = 1,
                xy=None, sequence: int = 1, consistency: int | None = None,
                timings: dict[str, float] | None = None) -> list[Place]:
        """Loop closure inside one traversal: the places of `image` among the map's entries older than
        `exclude_recent` (in the unit of `time`: frames or seconds; without times, entries added),
        then `image` joins the map. Returns the (possibly empty) list of loop-closure candidates.

        With `sequence` = L > 1, candidates are ranked by the sequence score over the last L images observed
        (as `query_sequence`) against the map as it grew: an entry added after an image counts as unseen for it.
        The first candidate's `accepted` follows the index's threshold for L-frame scores and its decision
        score; with `consistency` = k the k − 1 frames before must also have been accepted on a consistent
        progression through the map (tscm.evaluation.consistency). `timings` gets each stage's seconds added.
        """
        if exclude_recent < 0:
            raise TscmError(f"exclude_recent: expected a non-negative number of frames or seconds, got {exclude_recent}")
        if not (isinstance(sequence, int) and sequence >= 1):
            raise TscmError(f"sequence: expected a number of frames ≥ 1, got {sequence!r}")
        descriptor = self.describe_one(image, timings=timings)
        tic = perf_counter()
        recent = self._recent_entries(time, exclude_recent)
        if sequence == 1:
            rule, value = threshold_rule(self.index, 1), None
            rows, scores = np.zeros(0, np.int64), np.zeros(0, np.float32)
            if self.count:
                rule, [(rows, scores, value)] = self._search_rows(descriptor, k, recent)
            tac = toc = perf_counter()
        else:
            row = distance_row(self.index, descriptor[0], self.count) if self.count else np.zeros(0, np.float32)
            tac = perf_counter()
            rule, rows, scores, value = self._loop_sequence(sequence, row, self.count - recent, k)
            toc = perf_counter()
        candidates: list[Place] = []
        if len(rows):
            consistent = True
            if rule is not None and consistency is not None:
                consistent = self._consistent(consistency, rule.accepts(value), int(rows[0]))
            candidates = ranked_places(self.index, rows.tolist(), scores.tolist(), rule, value, consistent)
        elif rule is not None and consistency is not None:
            self._consistent(consistency, False, -1)  # nothing to match breaks a run of agreeing frames
        decided = perf_counter()
        self.add_descriptors(descriptor, [self._next_id()], xy=None if xy is None else np.asarray([xy], dtype=np.float64),
                             paths=[str(image) if isinstance(image, (str, Path)) else ""],
                             times=None if time is None else [time])
        if timings is not None:
            timings["search"] = timings.get("search", 0.0) + tac - tic  # single frames: the decision score too
            if sequence > 1:
                timings["sequence"] = timings.get("sequence", 0.0) + toc - tac
            timings["decision"] = timings.get("decision", 0.0) + decided - toc
            timings["add"] = timings.get("add", 0.0) + perf_counter() - decided
        return candidates

    def _recent_entries(self, time: float | None, exclude_recent: float) -> int:
        """How many of the newest map entries are too recent to be loop closures for an image at `time`."""
        if not self.count:
            return 0
        times = self.index.times
        if time is not None and times is not None:
            return int(np.sum(times > time - exclude_recent))
        return int(min(self.count, round(exclude_recent)))

    def _loop_sequence(self, length: int, row: np.ndarray, searchable: int, k: int):
        """(rule, rows, sequence scores, decision score) of `observe` with sequences: `row` (distances to every
        entry) joins the loop-closure sequence history, and the first `searchable` entries are ranked."""
        matcher = self._loop_matcher
        if (matcher is None or matcher.length != length or matcher.num_db > len(row)
                or self._loop_index is not self.index):
            # A new map, or one rebuilt in another search space: distances from before do not compare.
            matcher = self._loop_matcher = SequenceMatcher(length, 0, unseen=UNSEEN_SQUARED_DISTANCE)
            self._loop_index = self.index
        scores = matcher.push(row)[:searchable]
        rule = threshold_rule(self.index, length)
        if not len(scores):
            return rule, np.zeros(0, np.int64), scores, None
        ranking = rank_matrix(scores[None, :], min(k, len(scores)))
        rows = ranking.indices[0]
        value = None if rule is None else sequence_decision_score(self.index, rule, scores, int(rows[0]))
        return rule, rows, ranking.distances[0], value

    def _check_not_empty(self) -> None:
        if self.count == 0:
            raise TscmError("query: the map is empty; add images of known places first")

    # ---- files --------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the map (index, model fingerprint, checkpoint path, requested back-end), atomically."""
        if self.count == 0:
            raise TscmError(f"save {path}: the map is empty; add images first")
        self.index.save(path)
