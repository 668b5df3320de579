"""Reader for a CSV manifest: the simplest way to bring your own geo-tagged images.

Format (UTF-8, comma-separated, one header row, one image per row)::

    path,east,north,role,heading,timestamp
    db/0001.jpg,584321.5,4477012.0,database,90,2024-05-01T10:00:00Z
    q/0001.jpg,584325.1,4477010.2,query,,

- `path`: the image file, relative to the CSV's folder or absolute.
- `east`, `north`: planar coordinates in metres (UTM or any local metric frame; all rows in
  the same frame). Place-recognition radii (25 m, 10 m) are measured in this frame.
- `role`: `database` (the known places) or `query` (images to localise).
- `heading` (optional column): camera heading in degrees. Kept for a role only when every row
  of that role has a value; a role where some rows have one and others do not is an error.
- `timestamp` (optional column): free text (ISO 8601 recommended); read but not used yet.

Column order is free; other columns are an error (a misspelt `heading` would otherwise be
silently ignored). Rows keep their file order within each role.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from tscm.data.places import PlaceSet
from tscm.errors import TscmError

REQUIRED_COLUMNS = ("path", "east", "north", "role")
OPTIONAL_COLUMNS = ("heading", "timestamp")
ROLES = ("database", "query")


def _number(text: str, csv_path: Path, line: int, column: str, unit: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TscmError(f"{csv_path} line {line}: column '{column}': expected a number in {unit}, got {text!r}") from None
    if not math.isfinite(value):
        raise TscmError(f"{csv_path} line {line}: column '{column}': expected a finite number, got {text!r}")
    return value


def _headings(values: list[str], rows: list[int], csv_path: Path, role: str) -> np.ndarray | None:
    present = [bool(v.strip()) for v in values]
    if not any(present):
        return None
    if not all(present):
        line = rows[present.index(False)]
        raise TscmError(f"{csv_path} line {line}: column 'heading' is empty, but other {role} rows have one")
    return np.asarray([_number(v, csv_path, r, "heading", "degrees") for v, r in zip(values, rows)])


def read_csv_manifest(csv_path: str | Path, split: str = "test") -> PlaceSet:
    """Read a manifest (format in this module's docstring); the set is named after the file."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise TscmError(f"{csv_path}: manifest not found")
    base = csv_path.resolve().parent
    roles: dict[str, dict[str, list]] = {r: {"paths": [], "xy": [], "heading": [], "line": []} for r in ROLES}
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        unknown = [c for c in columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
        if missing or unknown:
            raise TscmError(
                f"{csv_path}: header {columns}: "
                + (f"missing column(s) {missing}; " if missing else "")
                + (f"unknown column(s) {unknown}; " if unknown else "")
                + f"expected {','.join(REQUIRED_COLUMNS)}[,{','.join(OPTIONAL_COLUMNS)}]"
            )
        reader.fieldnames = columns
        for row in reader:
            line = reader.line_num
            if row.get(None):
                raise TscmError(f"{csv_path} line {line}: more values than header columns")
            values = {k: (v or "").strip() for k, v in row.items()}
            if not any(values.values()):
                continue
            role = values["role"].lower()
            if role not in ROLES:
                raise TscmError(f"{csv_path} line {line}: column 'role': expected database or query, got {values['role']!r}")
            if not values["path"]:
                raise TscmError(f"{csv_path} line {line}: column 'path' is empty")
            entry = roles[role]
            entry["paths"].append(Path(os.path.abspath(base / values["path"])))
            entry["xy"].append(
                (_number(values["east"], csv_path, line, "east", "metres"), _number(values["north"], csv_path, line, "north", "metres"))
            )
            entry["heading"].append(values.get("heading", ""))
            entry["line"].append(line)
    for role in ROLES:
        if not roles[role]["paths"]:
            raise TscmError(f"{csv_path}: no rows with role '{role}'")
    db, query = roles["database"], roles["query"]
    return PlaceSet(
        name=csv_path.stem,
        split=split,
        db_paths=db["paths"],
        query_paths=query["paths"],
        db_xy=np.asarray(db["xy"], dtype=np.float64),
        query_xy=np.asarray(query["xy"], dtype=np.float64),
        db_heading=_headings(db["heading"], db["line"], csv_path, "database"),
        query_heading=_headings(query["heading"], query["line"], csv_path, "query"),
    )
