"""Reader for a CSV manifest: the simplest way to bring your own images and where they were taken.

Format (UTF-8, comma-separated, one header row, one image per row)::

    path,east,north,role,heading,timestamp,split
    db/0001.jpg,584321.5,4477012.0,database,90,2024-05-01T10:00:00Z,test
    q/0001.jpg,584325.1,4477010.2,query,,,test

or, for an ordered traversal such as a train journey, frame numbers instead of coordinates::

    path,frame,role,split
    summer/images-00010.png,1,database,train
    winter/images-00010.png,1,query,train

- `path`: the image file, relative to the CSV's folder or absolute.
- Positions, exactly one of the two kinds per file:
  - `east`, `north`: planar coordinates in metres (UTM or any local metric frame; all rows in
    the same frame). Place-recognition radii (25 m, 10 m) are measured in this frame.
  - `frame`: an integer position along an ordered traversal (unit "frame"): a database frame
    within ±radius frames of a query's frame shows the query's place.
- `role`: `database` (the known places) or `query` (images to localise).
- `heading` (optional column): camera heading in degrees.
- `timestamp` (optional column): when the image was taken, ISO 8601 (`2024-05-01T10:00:00Z`,
  `2024-05-01T12:00:00+02:00`; without an offset it is read as UTC) or a plain number of
  seconds. Stored as seconds since 1970-01-01 UTC (a plain number is taken as it is).
- `split` (optional column): the split the row belongs to (`train`, `val`, `test` or any name,
  compared exactly). Reading split S keeps only the rows whose split is S; asking for a split
  no row has is an error that lists the splits present. Without this column every row is used
  and the requested split only labels the set. With it, every row must name its split; an
  image in several splits is written once per split.

`heading` and `timestamp` are kept for a role only when every row of that role has a value; a
role where some rows have one and others do not is an error (an empty cell is more likely a
mistake than a meaning). Column order is free; other columns, and a column named twice, are an
error (a misspelt `heading` would otherwise be silently ignored). Empty lines are skipped.
Rows keep their file order within each role.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tscm.data.places import MAX_COORDINATE, PlaceSet
from tscm.errors import TscmError, excerpt
from tscm.fileio import real_path

REQUIRED_COLUMNS = ("path", "role")
METRIC_COLUMNS = ("east", "north")
FRAME_COLUMN = "frame"
OPTIONAL_COLUMNS = ("heading", "timestamp", "split")
KNOWN_COLUMNS = REQUIRED_COLUMNS + METRIC_COLUMNS + (FRAME_COLUMN,) + OPTIONAL_COLUMNS
ROLES = ("database", "query")
# The `split` that reads every row of the file whatever its split (labelled "train+test", etc.).
ALL_SPLITS = "*"
_INTEGER = re.compile(r"[+-]?\d+")


def _number(text: str, csv_path: Path, line: int, column: str, unit: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TscmError(f"{csv_path} line {line}: column '{column}': expected a number in {unit}, got {excerpt(text)}") from None
    if not math.isfinite(value):
        raise TscmError(f"{csv_path} line {line}: column '{column}': expected a finite number, got {excerpt(text)}")
    if column in METRIC_COLUMNS and abs(value) > MAX_COORDINATE:
        raise TscmError(f"{csv_path} line {line}: column '{column}': a coordinate of {value:g} metres is out of range "
                        f"(expected |value| ≤ {MAX_COORDINATE:g})")
    return value


def _frame(text: str, csv_path: Path, line: int) -> int:
    if not _INTEGER.fullmatch(text):
        raise TscmError(f"{csv_path} line {line}: column 'frame': expected an integer frame number, got {excerpt(text)}")
    # Compared as text first: int() of thousands of digits fails, and a huge frame overflows a float later.
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > 15 or abs(int(text)) > MAX_COORDINATE:
        raise TscmError(f"{csv_path} line {line}: column 'frame': frame number {excerpt(text, 30)} is out of range "
                        f"(expected |frame| ≤ {MAX_COORDINATE:g})")
    return int(text)


def parse_timestamp(text: str, csv_path: Path, line: int) -> float:
    """Seconds from an ISO 8601 timestamp (UTC unless it carries an offset) or a plain number."""
    try:
        return _number(text, csv_path, line, "timestamp", "seconds")
    except TscmError:
        pass
    try:
        # Python 3.10 does not read the "Z" (UTC) suffix itself.
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise TscmError(
            f"{csv_path} line {line}: column 'timestamp': expected ISO 8601 (e.g. 2024-05-01T10:00:00Z) "
            f"or a number of seconds, got {excerpt(text)}"
        ) from None
    if moment.tzinfo is None:
        # Reading a naive time in the machine's zone would make results depend on where they ran.
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _all_or_none(values: list[str], lines: list[int], csv_path: Path, role: str, column: str, parse) -> np.ndarray | None:
    """The parsed column for one role when every row has a value, None when none has; else an error."""
    present = [bool(v) for v in values]
    if not any(present):
        return None
    if not all(present):
        line = lines[present.index(False)]
        raise TscmError(f"{csv_path} line {line}: column '{column}' is empty, but other {role} rows have one")
    return np.asarray([parse(v, line) for v, line in zip(values, lines)], dtype=np.float64)


def _read_text(csv_path: Path) -> str:
    data = csv_path.read_bytes()
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as error:
        offset = start + error.start
        line = data[:offset].count(b"\n") + 1
        raise TscmError(
            f"{csv_path} line {line} (byte {offset}): not UTF-8 text (byte 0x{data[offset]:02x}); save the manifest as UTF-8"
        ) from None


def _check_header(columns: list[str], csv_path: Path) -> str:
    """The position kind ("m" or "frame") the header declares; an error for any other header."""
    expected = (
        f"expected {','.join(REQUIRED_COLUMNS)} and either {','.join(METRIC_COLUMNS)} or {FRAME_COLUMN}, "
        f"optionally {','.join(OPTIONAL_COLUMNS)}"
    )
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise TscmError(f"{csv_path}: header {columns}: column(s) {repeated} named more than once; {expected}")
    unknown = [c for c in columns if c not in KNOWN_COLUMNS]
    if unknown:
        raise TscmError(f"{csv_path}: header {columns}: unknown column(s) {unknown}; {expected}")
    has_frame = FRAME_COLUMN in columns
    has_metric = any(c in columns for c in METRIC_COLUMNS)
    if has_frame and has_metric:
        metric = ",".join(METRIC_COLUMNS)
        raise TscmError(f"{csv_path}: header {columns}: both metric ({metric}) and frame positions; {expected}")
    needed = REQUIRED_COLUMNS + ((FRAME_COLUMN,) if has_frame else METRIC_COLUMNS)
    missing = [c for c in needed if c not in columns]
    if missing:
        raise TscmError(f"{csv_path}: header {columns}: missing column(s) {missing}; {expected}")
    return "frame" if has_frame else "m"


def read_csv_manifest(csv_path: str | Path, split: str = "test") -> PlaceSet:
    """Read a manifest (format in this module's docstring); the set is named after the file."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise TscmError(f"{csv_path}: manifest not found")
    base = real_path(csv_path).parent
    reader = csv.reader(io.StringIO(_read_text(csv_path), newline=""))
    try:
        columns = [c.strip() for c in next(reader, [])]
        unit = _check_header(columns, csv_path)
        rows = []  # (line, {column: value}) of every non-empty row
        for cells in reader:
            line = reader.line_num
            if len(cells) > len(columns):
                raise TscmError(f"{csv_path} line {line}: more values than header columns")
            values = dict(zip(columns, (c.strip() for c in cells)))
            if any(values.values()):
                rows.append((line, {c: values.get(c, "") for c in columns}))
    except csv.Error as error:
        raise TscmError(f"{csv_path} line {reader.line_num}: not readable as CSV: {error}") from None

    fields = ("paths", "xy", "heading", "timestamp", "line")
    roles: dict[str, dict[str, list]] = {role: {f: [] for f in fields} for role in ROLES}
    splits_present: list[str] = []
    for line, values in rows:
        # Role, path and position are checked on every row, not only the requested split's, so a broken
        # file fails whatever split is read.
        role = values["role"].lower()
        if role not in ROLES:
            raise TscmError(f"{csv_path} line {line}: column 'role': expected database or query, got {excerpt(values['role'])}")
        if not values["path"]:
            raise TscmError(f"{csv_path} line {line}: column 'path' is empty")
        if unit == "frame":
            position = _frame(values[FRAME_COLUMN], csv_path, line)
        else:
            position = tuple(_number(values[c], csv_path, line, c, "metres") for c in METRIC_COLUMNS)
        if "split" in values:
            if not values["split"]:
                raise TscmError(f"{csv_path} line {line}: column 'split' is empty; every row must name its split")
            if values["split"] not in splits_present:
                splits_present.append(values["split"])
            if split != ALL_SPLITS and values["split"] != split:
                continue
        entry = roles[role]
        entry["paths"].append(Path(os.path.abspath(base / values["path"])))
        entry["xy"].append(position)
        entry["heading"].append(values.get("heading", ""))
        entry["timestamp"].append(values.get("timestamp", ""))
        entry["line"].append(line)

    if "split" in columns and split != ALL_SPLITS and split not in splits_present:
        present = ", ".join(splits_present) or "none"
        raise TscmError(f"{csv_path}: no rows of split {split!r}; the file has split(s) {present}")
    if split == ALL_SPLITS:  # the set is labelled with the splits it joins, in order of first appearance
        split = "+".join(splits_present) if splits_present else "test"
    where = f" of split {split!r}" if "split" in columns else ""
    for role in ROLES:
        if not roles[role]["paths"]:
            raise TscmError(f"{csv_path}: no rows with role '{role}'{where}")

    def optional(role: str, column: str, parse) -> np.ndarray | None:
        entry = roles[role]
        return _all_or_none(entry[column], entry["line"], csv_path, role, column, parse)

    def heading(text: str, line: int) -> float:
        return _number(text, csv_path, line, "heading", "degrees")

    def seconds(text: str, line: int) -> float:
        return parse_timestamp(text, csv_path, line)

    db, query = roles["database"], roles["query"]
    return PlaceSet(
        name=csv_path.stem,
        split=split,
        db_paths=db["paths"],
        query_paths=query["paths"],
        db_xy=np.asarray(db["xy"], dtype=np.float64),
        query_xy=np.asarray(query["xy"], dtype=np.float64),
        db_heading=optional("database", "heading", heading),
        query_heading=optional("query", "heading", heading),
        unit=unit,
        db_time=optional("database", "timestamp", seconds),
        query_time=optional("query", "timestamp", seconds),
    )
