"""Data-set checks behind `tscm check-data`: counts, area, coverage, duplicates and image health."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from tscm.data.formats.ground_truth_npz import is_placeholder_path
from tscm.data.places import PlaceSet

# Images decode at reduced scale: every compressed byte is still read, so truncation shows, at a
# fraction of the cost of a full decode.
_DRAFT_SIZE = (64, 64)
_LISTED = 10  # problems printed per kind; the counts are always complete


def image_problem(path: Path) -> str | None:
    """None when `path` is a readable image, else why not ("missing" or "unreadable: ...")."""
    from PIL import Image

    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as image:
            image.draft("RGB", _DRAFT_SIZE)
            image.load()
    except Exception as error:  # any decoder failure means the file cannot feed a model
        return f"unreadable: {type(error).__name__}: {error}"
    return None


def find_image_problems(paths: Sequence[Path], workers: int = 4, progress: bool = True) -> dict[Path, str]:
    """The paths that are missing or unreadable, with the reason; images decode in threads."""
    from tqdm import tqdm

    unique = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(
            tqdm(pool.map(image_problem, unique), total=len(unique), desc="images", unit="img", disable=None if progress else True)
        )
    return {path: problem for path, problem in zip(unique, results) if problem is not None}


@dataclass
class DataReport:
    """What `check-data` found; `ok` is False when any image is missing or unreadable."""

    placeset: PlaceSet
    radius_m: float
    queries_without_positive: list[int]
    duplicate_db: list[Path]
    duplicate_queries: list[Path]
    shared_paths: list[Path]
    images_checked: bool
    images_without_files: int
    image_problems: dict[Path, str] = field(default_factory=dict)

    @property
    def missing(self) -> dict[Path, str]:
        return {p: r for p, r in self.image_problems.items() if r == "missing"}

    @property
    def unreadable(self) -> dict[Path, str]:
        return {p: r for p, r in self.image_problems.items() if r != "missing"}

    @property
    def ok(self) -> bool:
        return not self.image_problems

    def format(self) -> str:
        ps = self.placeset
        xy = np.concatenate([ps.db_xy, ps.query_xy])
        low, high = xy.min(axis=0), xy.max(axis=0)
        lines = [
            f"data set {ps.name}, split {ps.split}",
            f"  database images   {ps.num_db}" + ("" if ps.db_heading is None else " (with headings)"),
            f"  queries           {ps.num_queries}" + ("" if ps.query_heading is None else " (with headings)"),
            f"  area              {high[0] - low[0]:.1f} m east × {high[1] - low[1]:.1f} m north "
            f"(east {low[0]:.1f}..{high[0]:.1f}, north {low[1]:.1f}..{high[1]:.1f})",
            f"  queries without a database image within {self.radius_m:g} m: {len(self.queries_without_positive)}"
            + _examples([f"#{i}" for i in self.queries_without_positive]),
            f"  duplicate database paths: {len(self.duplicate_db)}" + _examples(self.duplicate_db),
            f"  duplicate query paths: {len(self.duplicate_queries)}" + _examples(self.duplicate_queries),
            f"  paths used as both database and query: {len(self.shared_paths)}" + _examples(self.shared_paths),
        ]
        if self.images_without_files:
            lines.append(f"  images not named by the data set (ground truth only): {self.images_without_files}")
        if not self.images_checked:
            lines.append("  images: not opened (--skip-images)")
        else:
            lines.append(f"  missing images: {len(self.missing)}" + _examples(list(self.missing)))
            lines.append(f"  unreadable images: {len(self.unreadable)}")
            lines.extend(f"    {p}: {r}" for p, r in list(self.unreadable.items())[:_LISTED])
        lines.append("result: OK" if self.ok else "result: PROBLEMS (missing or unreadable images)")
        return "\n".join(lines)


def _examples(items: Sequence) -> str:
    if not items:
        return ""
    shown = ", ".join(str(i) for i in items[:_LISTED])
    return f"  [{shown}{', ...' if len(items) > _LISTED else ''}]"


def _duplicates(paths: Sequence[Path]) -> list[Path]:
    return [p for p, count in Counter(paths).items() if count > 1]


def check_placeset(
    placeset: PlaceSet, radius_m: float = 25.0, open_images: bool = True, workers: int = 4, progress: bool = True
) -> DataReport:
    """Run every check on `placeset`; images are opened only when `open_images`."""
    positives = placeset.positives(radius_m)
    all_paths = placeset.db_paths + placeset.query_paths
    real_paths = [p for p in all_paths if not is_placeholder_path(p)]
    problems = find_image_problems(real_paths, workers, progress) if open_images else {}
    return DataReport(
        placeset=placeset,
        radius_m=radius_m,
        queries_without_positive=[i for i, p in enumerate(positives) if len(p) == 0],
        duplicate_db=_duplicates(placeset.db_paths),
        duplicate_queries=_duplicates(placeset.query_paths),
        shared_paths=sorted(set(placeset.db_paths) & set(placeset.query_paths)),
        images_checked=open_images,
        images_without_files=len(all_paths) - len(real_paths),
        image_problems=problems,
    )
