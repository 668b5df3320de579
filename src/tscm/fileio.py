"""Atomic file writes: a reader never sees a half-written file, and a failed write keeps the old one."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from tscm.errors import TscmError


# Write failures that are about the disk or its permissions, not about the data: reported in one line
# naming the file the command meant to write.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG)


def write_error(path: Path, error: BaseException) -> TscmError | None:
    """A one-line TscmError for a failed write of `path` (full disk, read-only folder...), or None when
    `error` is not such a failure. safetensors reports disk errors as SafetensorError ("... I/O error: No
    space left on device (os error 28)", or "IoError(Os { code: 28, ... })" in older versions), which
    is recognised too."""
    code = None
    if isinstance(error, OSError):
        code = error.errno
    elif type(error).__name__ == "SafetensorError":
        import re

        found = re.search(r"code: (\d+)|os error (\d+)", str(error))
        code = int(found.group(1) or found.group(2)) if found else None
    if code not in DISK_ERRNOS:
        return None
    kept = "the previous file is kept" if path.is_file() else "nothing was written"
    return TscmError(f"{path}: could not be written: {os.strerror(code)} ({kept})")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    A full disk or a read-only folder is reported as one TscmError naming `path` (the old file stays).
    """
    path = Path(path)
    if path.is_dir():
        raise TscmError(f"{path}: is a folder; give a file name to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        converted = write_error(path, error)
        if converted is None:
            raise
        raise converted from None
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
    except BaseException as error:
        tmp_path.unlink(missing_ok=True)
        converted = write_error(path, error)
        if converted is None:
            raise
        raise converted from None


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


def exchange_paths(first: str | os.PathLike, second: str | os.PathLike) -> bool:
    """Swap two existing paths in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`).

    False, with nothing changed, where the system or file system cannot (the caller then swaps in
    two renames); a crash never sees neither path.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without the wrapper (glibc < 2.28, some others)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(second))
