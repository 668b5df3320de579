"""Reader for the Nordland folder: summer and winter frames of the same railway journey.

Layout (the copy in `shared/data/nordland`: every 10th frame of the 1 fps sequence)::

    <root>/summer/images-00010.png … images-27000.png    database
    <root>/winter/images-00010.png … images-27000.png    queries

The same file name in both seasons shows the same place. Frame k (k = 1, 2, …) is
`images-%05d.png % (10 * k)`; the reader checks that the k-th name in sorted order is exactly
that, so a frame missing from both seasons is an error rather than a silent shift of every
later frame. The set has unit "frame": a database frame within ±radius frames of a query's
frame is a true match.

Splits are sections of track, never mixed (the 100-frame gaps keep them kilometres apart):
train k 1–1800, val 1901–2200, test 2301–2700, and `all` (every frame). A split's database is
that section's summer frames, its queries the same section's winter frames.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from tscm.data.places import PlaceSet
from tscm.errors import TscmError
from tscm.fileio import real_path

DATABASE_SEASON = "summer"
QUERY_SEASON = "winter"
FRAME_STEP = 10  # this copy keeps every 10th frame of the 1 fps sequence
# First and last frame k of each split; None: every frame.
SPLITS: dict[str, tuple[int, int] | None] = {"train": (1, 1800), "val": (1901, 2200), "test": (2301, 2700), "all": None}
_NAME = re.compile(r"images-(\d+)\.png")


def is_nordland_root(path: Path) -> bool:
    return (path / DATABASE_SEASON).is_dir() and (path / QUERY_SEASON).is_dir()


def _frame_names(folder: Path) -> list[str]:
    names = sorted(p.name for p in folder.glob("images-*.png"))
    if not names:
        raise TscmError(f"{folder}: no images-*.png frames found")
    for name in names:
        if not _NAME.fullmatch(name):
            raise TscmError(f"{folder / name}: expected a frame name like images-00010.png")
    return names


def nordland_frames(root: str | Path) -> list[tuple[int, str]]:
    """(frame k, file name) of every frame, checked to exist in both seasons and to number 1, 2, …"""
    root = Path(root)
    if not is_nordland_root(root):
        raise TscmError(f"{root}: expected {DATABASE_SEASON}/ and {QUERY_SEASON}/ folders (Nordland layout)")
    summer = _frame_names(root / DATABASE_SEASON)
    winter = _frame_names(root / QUERY_SEASON)
    seasons = {DATABASE_SEASON: summer, QUERY_SEASON: winter}
    for (season, names), (other_season, other) in zip(seasons.items(), reversed(seasons.items())):
        unmatched = sorted(set(names) - set(other))
        if unmatched:
            more = f" (and {len(unmatched) - 1} more)" if len(unmatched) > 1 else ""
            raise TscmError(
                f"{root / season / unmatched[0]}: no {other_season}/{unmatched[0]}{more}; both seasons must hold the same frames"
            )
    frames = []
    for k, name in enumerate(summer, start=1):
        expected = f"images-{FRAME_STEP * k:05d}.png"
        if name != expected:
            raise TscmError(
                f"{root / DATABASE_SEASON / name}: frame {k} in sorted order should be {expected} "
                f"(frame k is images-%05d.png % ({FRAME_STEP}·k), without gaps)"
            )
        frames.append((k, name))
    return frames


def split_frames(frames: list[tuple[int, str]], split: str, root: Path) -> list[tuple[int, str]]:
    """The frames of one split's section of track."""
    if split not in SPLITS:
        raise TscmError(f"{root}: unknown Nordland split {split!r}; expected one of {', '.join(SPLITS)}")
    section = SPLITS[split]
    if section is None:
        return frames
    first, last = section
    chosen = [(k, name) for k, name in frames if first <= k <= last]
    if not chosen:
        raise TscmError(f"{root}: split {split!r} is frames {first}–{last}, but this copy has frames 1–{len(frames)}")
    return chosen


def read_nordland(root: str | Path, split: str = "test") -> PlaceSet:
    """Read `<root>/{summer,winter}/images-*.png` (format and splits in this module's docstring)."""
    root = real_path(root)
    frames = split_frames(nordland_frames(root), split, root)
    numbers = [k for k, _ in frames]
    return PlaceSet(
        name=root.name,
        split=split,
        db_paths=[root / DATABASE_SEASON / name for _, name in frames],
        query_paths=[root / QUERY_SEASON / name for _, name in frames],
        db_xy=numbers,
        query_xy=numbers,
        unit="frame",
    )


def write_nordland_manifest(root: str | Path, out_csv: str | Path, splits: tuple[str, ...] = tuple(SPLITS)) -> Path:
    """Write the CSV manifest (path,frame,role,split) that reads as `read_nordland` does, split by split.

    A frame appears once per split it belongs to (so once in `all` and once in its section).
    Paths are relative to the CSV when the frames lie under the CSV's folder, so the folder can
    be moved as a whole; otherwise they are absolute.
    """
    root = real_path(root)
    out_csv = Path(out_csv)
    frames = nordland_frames(root)
    chosen = {split: split_frames(frames, split, root) for split in splits}
    base = real_path(out_csv).parent
    prefix = root.relative_to(base) if root.is_relative_to(base) else root
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["path", "frame", "role", "split"])
        for split, split_set in chosen.items():
            for season, role in ((DATABASE_SEASON, "database"), (QUERY_SEASON, "query")):
                for k, name in split_set:
                    writer.writerow([(prefix / season / name).as_posix(), k, role, split])
    return out_csv
