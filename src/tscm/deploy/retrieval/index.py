"""Place index: descriptors of known places, searchable through faiss, saved as one safetensors file.

Back-ends (``PlaceIndex.create(backend, dim, **params)``) are listed in `index_backends`; the file
format is `index_file`; PCA is `pca`; how each back-end is searched is `index_search`.

Distances returned by ``search`` are squared L2 in the space the back-end searches (after PCA and
whitening where those are used), so they are comparable within one index, not across back-ends.
A query gets bitwise the same hits, distances and tie order (lower row first) alone as in any
batch: PCA projects each query with its own matrix-vector product, and the exhaustive searches
(flat and PCA-flat with fp32 storage, IVF's coarse lists, IVF-PQ's re-ranking) are
`tscm.evaluation.search.exact_search`. A lone query runs on one thread, with a handful of numpy
calls around one memory-bound matrix-vector product over the stored vectors (N·d·4 bytes).

A threshold (``calibrate``) is a distance below which a top-1 match is accepted, chosen on a
validation split for a target precision; it is only meaningful in the space it was measured in
(back-end, PCA), so it records that space and is ignored, with a warning, in any other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tscm import __version__
from tscm.deploy.retrieval.index_backends import (QUANTIZER_TRAIN_LIMIT, SEARCH_PARAMS, apply_search_params, build_faiss_index,
                                        check_params, flat_vectors, recommended_config)
from tscm.deploy.retrieval.index_file import finite_number, read_index_arrays, read_index_metadata, write_index_file
from tscm.deploy.retrieval.index_search import IndexSearch, SearchResult
from tscm.deploy.retrieval.pca import PCA_TRAIN_LIMIT, PcaProjection, sample_rows
from tscm.errors import TscmError
from tscm.evaluation.ranking import squared_norms


def _as_descriptors(values, dim: int, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float32)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != dim:
        raise TscmError(f"{what}: expected an N×{dim} array of descriptors, got shape {np.shape(values)}")
    if not np.isfinite(array).all():
        raise TscmError(f"{what}: descriptors must be finite numbers (found NaN or inf)")
    return np.ascontiguousarray(array)


def _read_only(array: np.ndarray | None) -> np.ndarray | None:
    """A view of `array` that callers cannot write through (None stays None)."""
    if array is None:
        return None
    view = array.view()
    view.flags.writeable = False
    return view


class _GrowingRows:
    """Rows appended batch by batch into a buffer with room to spare (its capacity doubles), so a map
    that grows by one entry per frame copies O(1) rows per add, not every row so far."""

    def __init__(self, rows: np.ndarray) -> None:
        self._buffer = np.array(rows)
        self.count = len(rows)

    @property
    def rows(self) -> np.ndarray:
        return self._buffer[: self.count]

    def append(self, rows: np.ndarray) -> np.ndarray:
        """The rows so far followed by `rows` (a view of the buffer)."""
        needed = self.count + len(rows)
        if needed > len(self._buffer):
            bigger = np.empty((max(needed, 2 * len(self._buffer), 16), *self._buffer.shape[1:]), self._buffer.dtype)
            bigger[: self.count] = self._buffer[: self.count]
            self._buffer = bigger
        self._buffer[self.count:needed] = rows
        self.count = needed
        return self.rows


class PlaceIndex:
    """Descriptors of database places with their image ids, optional coordinates and paths."""

    def __init__(self, backend: str, dim: int, params: dict[str, Any], faiss_index, pca: PcaProjection | None,
                 model_fingerprint: str | None, model_meta: dict[str, Any] | None) -> None:
        self.backend = backend
        self.dim = dim
        self.params = params
        self.model_fingerprint = model_fingerprint
        self.model_meta = model_meta
        self._faiss = faiss_index
        self._pca = pca
        self._ids = np.zeros(0, dtype=np.int64)
        self._xy: np.ndarray | None = None
        self._times: np.ndarray | None = None
        self._paths: list[str] | None = None
        self._vectors: np.ndarray | None = None  # the searched vectors, reconstructed on demand
        self._vector_norms: np.ndarray | None = None  # their squared norms, computed on demand
        self._search = IndexSearch(backend, faiss_index)  # with its caches (reset by train/add)
        # Streaming adds: growing copies of ids, coordinates, times, norms and searched vectors, and the
        # set of ids (uniqueness checked in O(added), not by sorting every id), made on first use.
        self._growing: dict[str, _GrowingRows] = {}
        self._id_set: set[int] | None = None
        self.thresholds: list[dict[str, Any]] = []
        self.position_unit = "m"  # of the coordinates in `xy`: "m" (east, north) or "frame" (frame, 0)
        apply_search_params(backend, faiss_index, params)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def create(cls, backend: str, dim: int, *, model_fingerprint: str | None = None,
               model_meta: dict[str, Any] | None = None, **params: Any) -> PlaceIndex:
        """An empty index; back-ends with PCA or IVF need `train` before `add`."""
        params = check_params(backend, dim, params)
        if model_meta is not None:
            try:
                json.dumps(model_meta)
            except (TypeError, ValueError) as error:
                raise TscmError(f"index model_meta must be JSON-serialisable: {error}") from None
        search_dim = params.get("pca_dim") or dim
        return cls(backend, dim, params, build_faiss_index(backend, search_dim, params), None,
                   model_fingerprint, model_meta)

    @classmethod
    def build(cls, descriptors, ids=None, *, paths: Sequence[str] | None = None, xy=None, times=None, backend: str = "auto",
              train_descriptors=None, model_fingerprint: str | None = None,
              model_meta: dict[str, Any] | None = None, **params: Any) -> PlaceIndex:
        """Create, train (on `train_descriptors`, else the database itself) and fill an index.

        `backend="auto"` takes `recommended_config` for this database size (`params` override it).
        """
        descriptors = np.asarray(descriptors, dtype=np.float32)
        if descriptors.ndim != 2 or len(descriptors) == 0:
            raise TscmError(f"index build: expected a non-empty N×D descriptor array, got shape {descriptors.shape}")
        if backend == "auto":
            backend, chosen = recommended_config(len(descriptors), descriptors.shape[1])
            params = {**chosen, **params}
        index = cls.create(backend, descriptors.shape[1], model_fingerprint=model_fingerprint,
                           model_meta=model_meta, **params)
        if index.needs_training:
            index.train(descriptors if train_descriptors is None else train_descriptors)
        if ids is None:
            ids = np.arange(len(descriptors), dtype=np.int64)
        index.add(descriptors, ids, paths=paths, xy=xy, times=times)
        return index

    # ---- state --------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return int(len(self._ids))

    @property
    def ids(self) -> np.ndarray:
        """The image ids of the entries, in the order they were added (read-only view)."""
        return _read_only(self._ids)

    def entry(self, position: int) -> dict[str, Any]:
        """What the index knows of the entry at `position` (order of adding): id, xy, path, time."""
        return {
            "id": int(self._ids[position]),
            "xy": None if self._xy is None else (float(self._xy[position, 0]), float(self._xy[position, 1])),
            "path": None if self._paths is None else (self._paths[position] or None),
            "time": None if self._times is None else float(self._times[position]),
        }

    @property
    def coordinates(self) -> np.ndarray | None:
        """Each entry's coordinates (N×2 metres, read-only view), if the map was given them."""
        return _read_only(self._xy)

    @property
    def times(self) -> np.ndarray | None:
        """Each entry's time (frame number or seconds, read-only view), if the map was given them."""
        return _read_only(self._times)

    @property
    def search_dim(self) -> int:
        return int(self._faiss.d)

    def space(self) -> dict[str, Any]:
        """What distances returned by `search` depend on: back-end, its build parameters, the PCA."""
        search_only = SEARCH_PARAMS.get(self.backend, ())
        return {
            "backend": self.backend,
            "params": {k: v for k, v in sorted(self.params.items()) if k not in search_only},
            "pca_sha256": None if self._pca is None else self._pca.sha256,
        }

    def empty_copy(self) -> PlaceIndex:
        """An index with the same back-end, parameters, PCA and trained quantisers, holding no entries:
        distances in it are in this index's space (used to calibrate thresholds on other images)."""
        import faiss

        clone = faiss.clone_index(self._faiss)
        clone.reset()
        copy = PlaceIndex(self.backend, self.dim, dict(self.params), clone, self._pca, self.model_fingerprint,
                          self.model_meta)
        return copy

    def to_search_space(self, descriptors) -> np.ndarray:
        """Descriptors as the back-end searches them (PCA-projected where the index uses PCA)."""
        descriptors = _as_descriptors(descriptors, self.dim, "index descriptors")
        return self._pca.apply(descriptors) if self._pca is not None else descriptors

    def vectors(self) -> np.ndarray:
        """The searched vectors of every entry (after PCA; approximate for quantised back-ends), N×search_dim."""
        have = 0 if self._vectors is None else len(self._vectors)
        if have != self.count:
            import faiss

            if self.backend == "ivfpq":
                ivf = faiss.extract_index_ivf(self._faiss)
                ivf.make_direct_map()
            if 0 < have < self.count:  # entries were only added since: reconstruct just those
                new_rows = np.asarray(self._faiss.reconstruct_n(have, self.count - have), dtype=np.float32)
                self._vectors = self._grown("vectors", self._vectors, new_rows)
            else:
                self._vectors = np.ascontiguousarray(self._faiss.reconstruct_n(0, self.count), dtype=np.float32)
        return self._vectors

    def vector_norms(self) -> np.ndarray:
        """‖x‖² of every entry's searched vector (`squared_norms` of `vectors()`), computed for new entries only."""
        vectors = self.vectors()
        have = 0 if self._vector_norms is None else len(self._vector_norms)
        if have != len(vectors):
            new_norms = squared_norms(vectors[have:])
            self._vector_norms = new_norms if have == 0 else self._grown("vector_norms", self._vector_norms, new_norms)
        return self._vector_norms

    def threshold(self, sequence_length: int = 1) -> dict[str, Any] | None:
        """The calibrated threshold for scores over `sequence_length` frames, if one applies to this space."""
        for entry in self.thresholds:
            if entry.get("sequence_length", 1) == sequence_length and entry.get("space") == self.space():
                return entry
        return None

    def stale_thresholds(self) -> list[dict[str, Any]]:
        """Thresholds measured in another space (the index was rebuilt or retrained since)."""
        return [entry for entry in self.thresholds if entry.get("space") != self.space()]

    def set_threshold(self, entry: dict[str, Any]) -> None:
        """Store a calibrated threshold for this space (replacing one for the same sequence length)."""
        length = entry.get("sequence_length", 1)
        self.thresholds = [t for t in self.thresholds if t.get("sequence_length", 1) != length]
        self.thresholds.append({**entry, "sequence_length": length, "space": self.space()})

    @property
    def needs_training(self) -> bool:
        return (self.params.get("pca_dim") is not None and self._pca is None) or not self._faiss.is_trained

    @property
    def memory_bytes(self) -> int:
        """Bytes held for search: the faiss index (as serialised), PCA, ids, coordinates, paths."""
        return sum(array.nbytes for array in self._arrays().values())

    def set_search_params(self, **params: Any) -> None:
        """Change search-time parameters (ivfpq: nprobe, rerank > 0 if built with re-ranking; hnsw: ef_search)."""
        allowed = SEARCH_PARAMS.get(self.backend, ())
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise TscmError(f"index backend {self.backend!r} cannot change {', '.join(unknown)} after building; "
                            f"search parameters: {', '.join(allowed) or 'none'}")
        if self.backend == "ivfpq" and "rerank" in params and (params["rerank"] == 0) != (self.params["rerank"] == 0):
            raise TscmError("index parameter rerank can change between positive values only; "
                            "turning re-ranking on or off needs a rebuild")
        merged = check_params(self.backend, self.dim, {**self.params, **params})
        self.params = merged
        apply_search_params(self.backend, self._faiss, merged)

    # ---- training and adding ------------------------------------------------------------
    def train(self, descriptors) -> None:
        """Fit PCA and/or the faiss quantisers on representative descriptors (database or training set)."""
        descriptors = _as_descriptors(descriptors, self.dim, "index train")
        if self.count:
            raise TscmError("index train: the index already holds descriptors; train before adding")
        descriptors = sample_rows(descriptors, QUANTIZER_TRAIN_LIMIT)
        pca_dim = self.params.get("pca_dim")
        if pca_dim is not None:
            if len(descriptors) < pca_dim:
                raise TscmError(f"index train: PCA to {pca_dim} dims needs at least {pca_dim} training "
                                f"descriptors, got {len(descriptors)}")
            self._pca = PcaProjection.fit(sample_rows(descriptors, PCA_TRAIN_LIMIT), pca_dim, self.params["whiten"])
            descriptors = self._pca.apply(descriptors)
        if not self._faiss.is_trained:
            minimum = max(self.params.get("nlist", 1), 2 ** self.params.get("pq_bits", 0))
            if len(descriptors) < minimum:
                raise TscmError(f"index train: backend {self.backend!r} with {self.params} needs at least "
                                f"{minimum} training descriptors, got {len(descriptors)}")
            self._faiss.train(descriptors)
            self._search.forget_training()

    def add(self, descriptors, ids, paths: Sequence[str] | None = None, xy=None, times=None) -> None:
        """Append descriptors with their image ids (unique int64), and paths/coordinates/times if known.

        Either every add gives paths (or coordinates, or times), or none does.
        """
        descriptors = _as_descriptors(descriptors, self.dim, "index add")
        count = len(descriptors)
        if self.needs_training:
            raise TscmError(f"index add: backend {self.backend!r} with these parameters must be trained first "
                            "(call train() with database or training descriptors)")
        ids = np.asarray(ids)
        if ids.shape != (count,) or not np.issubdtype(ids.dtype, np.integer):
            raise TscmError(f"index add: expected {count} integer ids, got shape {ids.shape} dtype {ids.dtype}")
        ids = ids.astype(np.int64)
        if self._id_set is None or len(self._id_set) != self.count:
            self._id_set = set(self._ids.tolist())
        new_ids = ids.tolist()
        if len(set(new_ids)) != len(new_ids) or not self._id_set.isdisjoint(new_ids):
            raise TscmError("index add: image ids must be unique within the index (found a repeated id)")
        first = self.count == 0
        if xy is not None:
            xy = np.asarray(xy, dtype=np.float64)
            if xy.shape != (count, 2) or not np.isfinite(xy).all():
                raise TscmError(f"index add: expected finite coordinates of shape ({count}, 2), got {xy.shape}")
        if paths is not None:
            paths = [str(path) for path in paths]
            if len(paths) != count:
                raise TscmError(f"index add: expected {count} paths, got {len(paths)}")
        if not first and (xy is None) != (self._xy is None):
            raise TscmError("index add: coordinates must be given for every batch or for none")
        if not first and (paths is None) != (self._paths is None):
            raise TscmError("index add: paths must be given for every batch or for none")
        if times is not None:
            times = np.asarray(times, dtype=np.float64)
            if times.shape != (count,) or not np.isfinite(times).all():
                raise TscmError(f"index add: expected {count} finite times (frames or seconds), got shape {times.shape}")
        if not first and (times is None) != (self._times is None):
            raise TscmError("index add: times must be given for every batch or for none")
        searched = self._pca.apply(descriptors) if self._pca is not None else descriptors
        scan = self._search.forget_rows()
        self._faiss.add(searched)
        self._id_set.update(new_ids)
        self._ids = self._grown("ids", self._ids, ids)
        if xy is not None:
            self._xy = xy if first else self._grown("xy", self._xy, xy)
        if times is not None:
            self._times = times if first else self._grown("times", self._times, times)
        if paths is not None:
            if first:
                self._paths = paths  # a list of its own (made above)
            else:
                self._paths.extend(paths)
        if scan is not None and len(scan.vectors) + count == self.count:
            # The rows kept their norms; only the new rows' are computed.
            self._search.scan = scan.extended(flat_vectors(self._faiss), searched, self._grown)

    def _grown(self, name: str, current: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """`current` followed by `rows`, through the growing buffer of `name` when `current` is its content."""
        grower = self._growing.get(name)
        if grower is None or grower.count != len(current) or not np.may_share_memory(grower.rows, current):
            grower = self._growing[name] = _GrowingRows(current)
        return grower.append(rows)

    # ---- search -------------------------------------------------------------------------
    def search(self, queries, k: int, *, entries: int | None = None) -> SearchResult:
        """The `k` nearest database entries for each query (N×dim, or one dim-vector), among the first `entries`
        added (None: all; loop closure leaves a robot's newest frames out).

        A query gets the same hits, distances and tie order alone as in any batch, and from the exhaustive
        back-ends the same as a search of all entries with the later ones dropped. Batches smaller than
        SINGLE_THREAD_BELOW run on one thread.
        """
        if self.count == 0:
            raise TscmError("index search: the index is empty; add database descriptors before querying")
        if not (isinstance(k, (int, np.integer)) and k >= 1):
            raise TscmError(f"index search: k must be a positive integer, got {k!r}")
        if entries is not None and not (isinstance(entries, (int, np.integer)) and 1 <= entries <= self.count):
            raise TscmError(f"index search: entries must be a number of entries in 1..{self.count}, got {entries!r}")
        queries = _as_descriptors(queries, self.dim, "index search")
        distances, indices = self._search.search(queries, int(k), self.params, self._pca, self.count,
                                                 None if entries is None else int(entries))
        missing = indices < 0
        rows = np.maximum(indices, 0)
        ids = self._ids[rows]
        if missing.any():
            ids[missing] = -1
        xy = None
        if self._xy is not None:
            xy = self._xy[rows]
            xy[missing] = np.nan
        paths = None
        if self._paths is not None:
            table = self._paths
            paths = [[table[i] if i >= 0 else None for i in row] for row in indices.tolist()]
        return SearchResult(distances, indices, ids, xy, paths)

    # ---- files --------------------------------------------------------------------------
    def _arrays(self) -> dict[str, np.ndarray]:
        import faiss

        arrays = {"faiss_index": faiss.serialize_index(self._faiss), "ids": self._ids}
        if self._xy is not None:
            arrays["xy"] = self._xy
        if self._times is not None:
            arrays["times"] = self._times
        if self._paths is not None:
            encoded = [path.encode("utf-8") for path in self._paths]
            arrays["paths_utf8"] = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
            arrays["paths_end"] = np.cumsum([len(item) for item in encoded], dtype=np.int64)
        if self._pca is not None:
            arrays["pca_mean"] = self._pca.mean
            arrays["pca_projection"] = self._pca.projection
        return arrays

    def save(self, path: str | Path) -> None:
        """Write the index to one safetensors file, atomically (a failed save keeps the old file)."""
        arrays = {name: np.ascontiguousarray(array) for name, array in self._arrays().items()}
        write_index_file(path, arrays, {
            "package_version": __version__,
            "backend": self.backend,
            "params": self.params,
            "dim": self.dim,
            "search_dim": self.search_dim,
            "count": self.count,
            "memory_bytes": sum(array.nbytes for array in arrays.values()),
            "model_fingerprint": self.model_fingerprint,
            "model_meta": self.model_meta,
            "pca_whiten": None if self._pca is None else self._pca.whiten,
            "thresholds": self.thresholds,
            "position_unit": self.position_unit,
        })

    @classmethod
    def load(cls, path: str | Path, expected_fingerprint: str | None = None) -> PlaceIndex:
        """Read an index; with `expected_fingerprint`, refuse one built from another model's descriptors."""
        import faiss

        meta = read_index_metadata(path)
        if expected_fingerprint is not None and meta["model_fingerprint"] != expected_fingerprint:
            raise TscmError(
                f"{path}: index was built from descriptors of model {meta['model_fingerprint']!r}, "
                f"but the model in use has fingerprint {expected_fingerprint!r}; rebuild the index with this model"
            )
        arrays = read_index_arrays(path, meta)
        try:
            faiss_index = faiss.deserialize_index(arrays["faiss_index"])
        except RuntimeError as error:
            raise TscmError(f"{path}: the stored faiss index cannot be read ({error}); the file is corrupt") from None
        pca = None
        if "pca_mean" in arrays:
            pca = PcaProjection(arrays["pca_mean"], arrays["pca_projection"], bool(meta["pca_whiten"]))
        count = meta["count"]
        try:
            check_params(meta["backend"], meta["dim"], meta["params"])
        except TscmError as error:
            raise TscmError(f"{path}: stored index parameters are invalid: {error}") from None
        index = cls(meta["backend"], meta["dim"], meta["params"], faiss_index, pca,
                    meta["model_fingerprint"], meta["model_meta"])
        if faiss_index.ntotal != count or len(arrays["ids"]) != count:
            raise TscmError(f"{path}: metadata says {count} entries, but the faiss index holds "
                            f"{faiss_index.ntotal} and ids {len(arrays['ids'])}; the file is inconsistent")
        index._ids = arrays["ids"].astype(np.int64)
        if "xy" in arrays:
            index._xy = arrays["xy"]
        if "times" in arrays:
            index._times = arrays["times"]
        thresholds = meta.get("thresholds", [])
        if not isinstance(thresholds, list) or not all(isinstance(t, dict) and finite_number(t.get("distance"))
                                                       for t in thresholds):
            raise TscmError(f"{path}: field 'thresholds' must be a list of calibrations with a finite 'distance'")
        index.thresholds = thresholds
        index.position_unit = "frame" if meta.get("position_unit") == "frame" else "m"  # older files: metres
        if "paths_utf8" in arrays:
            blob = arrays["paths_utf8"].tobytes()
            ends = arrays["paths_end"].tolist()
            starts = [0] + ends[:-1]
            index._paths = [blob[a:b].decode("utf-8") for a, b in zip(starts, ends)]
        return index
