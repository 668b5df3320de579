"""Reader for the `@utm@` folder format: coordinates are written in each image's file name.

Layout: `<root>/database/` and `<root>/queries/` (searched recursively), each image named
`@<east>@<north>@...@.jpg`. The full form is
`@east@north@zone_number@zone_letter@lat@lon@pano_id@tile_num@heading@pitch@roll@height@timestamp@note@.jpg`;
only east and north are required. Headings come from the heading field when every image of a
role carries one. `<root>` may also be `<root>/<split>/` or `<root>/images/<split>/`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tscm.data.places import PlaceSet
from tscm.errors import TscmError
from tscm.fileio import real_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DATABASE_FOLDER = "database"
QUERY_FOLDER = "queries"
# Index of each field after splitting the file name on "@" (index 0 is the empty prefix).
_EAST, _NORTH, _HEADING = 1, 2, 9


def find_utm_root(path: Path, split: str) -> Path | None:
    """The folder holding `database/` and `queries/` for `split`, or None."""
    for candidate in (path, path / split, path / "images" / split):
        if (candidate / DATABASE_FOLDER).is_dir() and (candidate / QUERY_FOLDER).is_dir():
            return candidate
    return None


def parse_utm_name(image_path: Path) -> tuple[float, float, float | None]:
    """(east, north, heading or None) from an `@east@north@...` file name."""
    fields = image_path.name.split("@")
    if len(fields) < 4 or fields[0] != "":
        raise TscmError(f"{image_path}: expected a name like @<east>@<north>@...@.jpg")
    try:
        east, north = float(fields[_EAST]), float(fields[_NORTH])
    except ValueError:
        raise TscmError(f"{image_path}: east/north fields {fields[_EAST]!r}, {fields[_NORTH]!r} are not numbers") from None
    if not (math.isfinite(east) and math.isfinite(north)):
        raise TscmError(f"{image_path}: east/north must be finite numbers")
    heading = None
    # The heading field exists only in the full form, whose last field is the extension.
    if len(fields) > _HEADING + 1 and fields[_HEADING].strip():
        try:
            heading = float(fields[_HEADING])
        except ValueError:
            raise TscmError(f"{image_path}: heading field {fields[_HEADING]!r} is not a number") from None
    return east, north, heading


def _read_role(folder: Path) -> tuple[list[Path], np.ndarray, np.ndarray | None]:
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise TscmError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    parsed = [parse_utm_name(p) for p in paths]
    xy = np.asarray([(east, north) for east, north, _ in parsed], dtype=np.float64)
    headings = [heading for _, _, heading in parsed]
    heading_array = None if any(h is None for h in headings) else np.asarray(headings, dtype=np.float64)
    return [real_path(p) for p in paths], xy, heading_array


def read_utm_folder(root: str | Path, split: str = "test") -> PlaceSet:
    """Read `<root>/{database,queries}` (or the `<split>` / `images/<split>` sub-folder)."""
    path = Path(root)
    found = find_utm_root(path, split)
    if found is None:
        raise TscmError(
            f"{path}: no '{DATABASE_FOLDER}' and '{QUERY_FOLDER}' folders in it, in {split}/ or in images/{split}/"
        )
    db_paths, db_xy, db_heading = _read_role(found / DATABASE_FOLDER)
    query_paths, query_xy, query_heading = _read_role(found / QUERY_FOLDER)
    name = real_path(path).name
    return PlaceSet(name, split, db_paths, query_paths, db_xy, query_xy, db_heading, query_heading)
