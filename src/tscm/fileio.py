"""Atomic file writes: a reader never sees a half-written file, and a failed write keeps the old one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from tscm.errors import TscmError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    if path.is_dir():
        raise TscmError(f"{path}: is a folder; give a file name to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp_path
        # mkstemp creates 0600, and some writers (safetensors) create the file anew with 0600: give it the
        # permissions a plain open() would (umask applies), after it is written.
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def check_header(header: Any, format_name: str, version: int, where: str, required: Sequence[str] = ()) -> dict:
    """`header` (a file's JSON metadata) if it names `format_name` at `version` and has the `required`
    fields; else TscmError naming the file and the field. One check for every tscm file format."""
    if not isinstance(header, dict):
        raise TscmError(f"{where}: metadata must be a JSON object, got {type(header).__name__}")
    if header.get("format") != format_name:
        raise TscmError(f"{where}: field 'format' is {header.get('format')!r}, expected {format_name!r} "
                        "(not a file of this kind)")
    if header.get("format_version") != version:
        raise TscmError(f"{where}: field 'format_version' is {header.get('format_version')!r}; this tscm reads "
                        f"version {version}")
    absent = [name for name in required if name not in header]
    if absent:
        raise TscmError(f"{where}: metadata lacks the field(s) {', '.join(absent)}")
    return header
