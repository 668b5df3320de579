"""Data-set checks behind `tscm check-data`: counts, area, coverage, duplicates and image health."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from tscm.data.formats.ground_truth_npz import is_placeholder_path
from tscm.data.formats.bag_frames import is_bag_frame_path
from tscm.data.images import MIN_USEFUL_SIDE, load_rgb
from tscm.data.places import PlaceSet, default_radius
from tscm.errors import TscmError

# Images decode at reduced scale: every compressed byte is still read, so truncation shows, at a
# fraction of the cost of a full decode.
_DRAFT_SIZE = (64, 64)
_LISTED = 10  # problems printed per kind; the counts are always complete


def image_problem(path: Path) -> str | None:
    """None when `path` is a readable image, else why not ("missing", "unreadable: ...", "tiny: ...").

    Images are read by the loader every command uses (tscm.data.images), so what passes here is
    what the models see.
    """
    if not is_bag_frame_path(path):  # a bag frame is no file of its own: the loader finds it in its bag
        try:
            os.stat(path)
        except FileNotFoundError:  # no file, or a symbolic link to none
            return "missing"
        except OSError:
            pass  # a symbolic link loop or a path through a file: load_rgb says which
    try:
        image = load_rgb(path, draft=_DRAFT_SIZE)
    except TscmError as error:
        return f"unreadable: {error}"
    except Exception as error:  # noqa: BLE001 - any decoder failure means the file cannot feed a model
        return f"unreadable: {type(error).__name__}: {error}"
    if min(image.size) < MIN_USEFUL_SIDE:
        return f"tiny: {image.width}×{image.height} pixels (below {MIN_USEFUL_SIDE}; it holds no place)"
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
    radius: float
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
        return {p: r for p, r in self.image_problems.items() if r != "missing" and not r.startswith("tiny")}

    @property
    def tiny(self) -> dict[Path, str]:
        return {p: r for p, r in self.image_problems.items() if r.startswith("tiny")}

    @property
    def no_query_has_a_match(self) -> bool:
        # A set without queries (a map, e.g. one robot traversal) has nothing to evaluate, and nothing wrong.
        return self.placeset.num_queries > 0 and len(self.queries_without_positive) == self.placeset.num_queries

    @property
    def ok(self) -> bool:
        """No missing or unreadable image, and at least one query with a true match (else nothing can be evaluated)."""
        return not self.missing and not self.unreadable and not self.no_query_has_a_match

    def format(self) -> str:
        ps = self.placeset
        lines = [
            f"data set {ps.name}, split {ps.split}",
            f"  database images   {ps.num_db}" + ("" if ps.db_heading is None else " (with headings)"),
            f"  queries           {ps.num_queries}" + ("" if ps.query_heading is None else " (with headings)"),
        ]
        if ps.unit == "m":
            xy = np.concatenate([ps.db_xy, ps.query_xy])
            low, high = xy.min(axis=0), xy.max(axis=0)
            lines.append(f"  area              {high[0] - low[0]:.1f} m east × {high[1] - low[1]:.1f} m north "
                         f"(east {low[0]:.1f}..{high[0]:.1f}, north {low[1]:.1f}..{high[1]:.1f})")
        elif ps.unit == "frame":
            frames = np.concatenate([ps.db_xy[:, 0], ps.query_xy[:, 0]])
            lines.append(f"  route             frames {int(frames.min())}..{int(frames.max())}")
        else:
            lines.append("  ground truth      listed matches per query (no positions)")
        within = "with no listed match" if ps.unit == "explicit" else f"without a database image within {ps.radius_text(self.radius)}"
        lines += [
            f"  queries {within}: {len(self.queries_without_positive)}"
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
            if self.tiny:
                lines.append(f"  warning: {len(self.tiny)} image(s) smaller than a few pixels" + _examples(list(self.tiny)))
        if self.shared_paths and len(self.shared_paths) == min(ps.num_db, ps.num_queries):
            lines.append("  warning: every query is also a database image: recall will be 100 % without meaning")
        problems = []
        if self.missing or self.unreadable:
            problems.append("missing or unreadable images")
        if self.no_query_has_a_match:
            problems.append("no query has a true match, so nothing can be evaluated (check the radius and its unit)")
        lines.append("result: OK" if self.ok else f"result: PROBLEMS ({'; '.join(problems)})")
        return "\n".join(lines)


def _examples(items: Sequence) -> str:
    if not items:
        return ""
    shown = ", ".join(str(i) for i in items[:_LISTED])
    return f"  [{shown}{', ...' if len(items) > _LISTED else ''}]"


def _duplicates(paths: Sequence[Path]) -> list[Path]:
    return [p for p, count in Counter(paths).items() if count > 1]


def _resolved(paths: Sequence[Path]) -> set[Path]:
    """Paths with symbolic links resolved, so a query folder linked to the database folder is seen as shared."""
    return {Path(os.path.realpath(p)) for p in paths}  # realpath: a symbolic link loop stays as it is, no error


def check_placeset(
    placeset: PlaceSet, radius: float | None = None, open_images: bool = True, workers: int = 4, progress: bool = True
) -> DataReport:
    """Run every check on `placeset`; images are opened only when `open_images`.

    `radius` is in the set's unit (default: 25 m, ±1 frame; ignored for listed matches).
    """
    radius = default_radius(placeset.unit) if radius is None else placeset.check_radius(radius, "--radius")
    positives = placeset.positives(radius)
    all_paths = placeset.db_paths + placeset.query_paths
    real_paths = [p for p in all_paths if not is_placeholder_path(p)]
    problems = find_image_problems(real_paths, workers, progress) if open_images else {}
    return DataReport(
        placeset=placeset,
        radius=radius,
        queries_without_positive=[i for i, p in enumerate(positives) if len(p) == 0],
        duplicate_db=_duplicates(placeset.db_paths),
        duplicate_queries=_duplicates(placeset.query_paths),
        shared_paths=sorted(_resolved(placeset.db_paths) & _resolved(placeset.query_paths)),
        images_checked=open_images,
        images_without_files=len(all_paths) - len(real_paths),
        image_problems=problems,
    )
