"""Files in and out: atomic writes (a reader never sees a half-written file, a failed write keeps the old
one), output paths checked before any work, and bounded reads of small JSON files and regular files."""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import errno
import json
import os
import re
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from tscm.errors import TscmError, excerpt


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
        group = _GROUP.get()
        if group is not None:  # moved into place with the rest of the group (atomic_group)
            group.append((tmp_path, path))
            return
        os.replace(tmp_path, path)
    except BaseException as error:
        tmp_path.unlink(missing_ok=True)
        converted = write_error(path, error)
        if converted is None:
            raise
        raise converted from None


_GROUP: contextvars.ContextVar[list[tuple[Path, Path]] | None] = contextvars.ContextVar("tscm_atomic_group", default=None)


@contextlib.contextmanager
def atomic_group() -> Iterator[None]:
    """Files written with `atomic_path` inside the block are moved into place together when the block
    ends without error; on an error none is, and each keeps its previous content. For a command that
    writes several files (an HDF5 file, arrays, names, pairs): all of them, or none."""
    if _GROUP.get() is not None:  # nested: the outer group decides
        yield
        return
    pending: list[tuple[Path, Path]] = []
    token = _GROUP.set(pending)
    try:
        yield
    except BaseException:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _GROUP.reset(token)
    for position, (tmp, path) in enumerate(pending):
        try:
            os.replace(tmp, path)
        except OSError as error:  # renames in one folder hardly fail; still, leave no temporary file
            for later, _ in pending[position:]:
                later.unlink(missing_ok=True)
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
        raise TscmError(f"{where}: field 'format' is {excerpt(header.get('format'))}, expected {format_name!r} "
                        "(not a file of this kind)")
    if header.get("format_version") != version:
        raise TscmError(f"{where}: field 'format_version' is {excerpt(header.get('format_version'))}; this tscm reads "
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


# ----- reading: only regular files, JSON within bounds ----------------------------------------------

# A tscm JSON file (meta.json, an index header, results.json, settings) is kilobytes; these bounds are
# far above any real one and far below what would exhaust memory or the stack.
MAX_JSON_BYTES = 64 << 20
MAX_JSON_DEPTH = 64

_FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words ("a named pipe (FIFO)", "a folder", ...)."""
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def stat_regular(path: str | os.PathLike, what: str = "file") -> os.stat_result:
    """The stat of `path` when it is a regular file (symbolic links followed); else a TscmError saying what
    it is: missing, a folder, a FIFO / socket / device (which would block or never end if read), or a
    path that cannot be resolved (a symbolic link loop, a component that is not a folder)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise TscmError(f"{path}: {what} not found") from None
    except OSError as error:  # ELOOP, ENOTDIR, ENAMETOOLONG, EACCES...
        raise TscmError(f"{path}: unreadable {what} ({error.strerror or error})") from None
    if not stat.S_ISREG(info.st_mode):
        raise TscmError(f"{path}: is {file_kind(info.st_mode)}, not a regular {what}")
    return info


def read_bytes_bounded(path: str | os.PathLike, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of the regular file `path`, or a TscmError when it is not one or is larger than `max_bytes`."""
    info = stat_regular(path, what)
    if info.st_size > max_bytes:
        raise TscmError(f"{path}: {what} of {info.st_size} bytes is larger than the {max_bytes} this tscm reads")
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TscmError(f"{path}: {what} is larger than the {max_bytes} bytes this tscm reads")
    return data


def _json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether `value` nests lists/objects deeper than `limit` (an iterative walk: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


class _RepeatedKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object_without_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's dict; a key given twice is refused (json keeps the last one without a word)."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _RepeatedKey(key)
        obj[key] = value
    return obj


def parse_json(text: str | bytes, where: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """JSON from `text`, nested at most `max_depth` deep; a TscmError naming `where` otherwise (with a
    short excerpt at most, never the document)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            raise TscmError(f"{where}: not UTF-8 JSON (byte {error.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_object_without_repeats)
    except RecursionError:
        value = None
        deep = True
    except _RepeatedKey as repeated:
        raise TscmError(f"{where}: the key {excerpt(repeated.key)} appears twice in one object (which one counts "
                        "would be a guess); not a file tscm wrote") from None
    except ValueError as error:  # JSONDecodeError, or an integer of more digits than Python converts
        position = f" at line {error.lineno}, column {error.colno}" if isinstance(error, json.JSONDecodeError) else ""
        reason = error.msg if isinstance(error, json.JSONDecodeError) else excerpt(str(error)).strip("'\"")
        raise TscmError(f"{where}: not valid JSON{position}: {reason}") from None
    else:
        deep = _json_depth_exceeds(value, max_depth)
    if deep:
        raise TscmError(f"{where}: JSON nested deeper than {max_depth} levels; not a file tscm wrote")
    return value


def read_json(path: str | os.PathLike, what: str = "JSON file", max_bytes: int = MAX_JSON_BYTES,
              max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON document in the regular file `path`, within `max_bytes` and `max_depth`; TscmError naming
    the file otherwise."""
    return parse_json(read_bytes_bounded(path, max_bytes, what), str(path), max_depth)


# ----- writing: every output path checked before the first byte -----------------------------------


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def real_path(path: str | os.PathLike) -> Path:
    """`path` with symbolic links resolved, absolute; unlike Path.resolve a symbolic link loop is left
    as it is (reported when the file is opened) instead of raising RuntimeError."""
    return Path(os.path.realpath(path))


def _input_files(inputs: Mapping[str, Any]) -> Iterator[tuple[str, Path]]:
    """(role, file) for every input; a folder stands for the files directly in it (a checkpoint folder)."""
    for role, value in inputs.items():
        if value is None:
            continue
        values = [value] if isinstance(value, (str, os.PathLike)) else value
        for item in values:
            item = Path(item)
            if item.is_dir():
                try:
                    yield from ((role, child) for child in item.iterdir() if child.is_file())
                except OSError:
                    continue
            else:
                yield role, item


def _writable_ancestor(path: Path) -> tuple[Path | None, str | None]:
    """The nearest existing folder above `path` and why it cannot take a new file (None when it can)."""
    ancestor = path.parent
    while True:
        try:
            info = os.stat(ancestor)
        except FileNotFoundError:
            if ancestor.parent == ancestor:
                return None, "no existing folder above it"
            ancestor = ancestor.parent
            continue
        except OSError as error:
            return ancestor, error.strerror or str(error)
        break
    if not stat.S_ISDIR(info.st_mode):
        return ancestor, f"{ancestor} is {file_kind(info.st_mode) if not stat.S_ISREG(info.st_mode) else 'a file'}, not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(ancestor).f_flag & os.ST_RDONLY)
        return ancestor, os.strerror(errno.EROFS if read_only else errno.EACCES)
    return ancestor, None


def check_outputs(outputs: Mapping[str, str | os.PathLike | None] | Iterable[tuple[str, str | os.PathLike | None]],
                  inputs: Mapping[str, str | os.PathLike | Iterable[str | os.PathLike] | None] = {}) -> None:
    """Refuse, before any work, output paths a command could not write or must not: a folder, a FIFO or
    device, an unresolvable path, one of the command's inputs (same resolved path or same file: a hard
    link), the same file named twice, or a path whose nearest existing folder is a file or not writable.

    `outputs` maps the option (e.g. "--json") to its path (None: not asked for), or lists (option, path)
    pairs where one option names several files (the files of an output folder); `inputs` maps what an
    input is (e.g. "the data set") to its file(s); a folder stands for the files directly in it.
    """
    seen: dict[tuple, str] = {}
    existing = []
    for option, target in (outputs.items() if isinstance(outputs, Mapping) else outputs):
        if target is None or target == "":
            continue
        path = Path(target)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            info = None
            if path.is_symlink():  # a dangling link: writing would create its target somewhere else
                raise TscmError(f"{option} {path}: is a symbolic link to a missing file; give a plain file name")
        except OSError as error:
            raise TscmError(f"{option} {path}: cannot be resolved ({error.strerror or error})") from None
        if info is not None and not stat.S_ISREG(info.st_mode):
            raise TscmError(f"{option} {path}: is {file_kind(info.st_mode)}; give a file name to write")
        ancestor, problem = _writable_ancestor(path)
        if problem is not None:
            raise TscmError(f"{option} {path}: could not be written: {problem} (nothing was written)")
        key = (info.st_dev, info.st_ino) if info is not None else ("path", str(real_path(path)))
        if key in seen:
            raise TscmError(f"{option} {path}: the same file as {seen[key]}; give each output its own file")
        seen[key] = f"{option} {path}"
        if info is not None:
            existing.append((option, path, key))
    if not existing:
        return
    real_outputs = {real_path(path): (option, path) for option, path, _ in existing}
    keys = {key: (option, path) for option, path, key in existing}
    for role, file in _input_files(inputs):
        hit = keys.get(_identity(file)) or real_outputs.get(real_path(file))
        if hit is not None:
            option, path = hit
            raise TscmError(f"{option} {path}: is {role} ({file}), an input of this command; "
                            "writing there would destroy it, give another file")


def check_output_folder(option: str, folder: str | os.PathLike, names: Iterable[str],
                        inputs: Mapping[str, str | os.PathLike | Iterable[str | os.PathLike] | None] = {},
                        others: Mapping[str, str | os.PathLike | None] = {}) -> None:
    """Refuse, before any work, an output folder a command could not write into or must not: a path that
    is a file, FIFO or device, a dangling link, one of the command's input folders itself (a checkpoint or
    a bag folder: same resolved path or same inode), or a folder where one of the files `names` it will
    hold is refused by `check_outputs` (a folder, an input, not writable). `others` are the command's
    other outputs, checked with them (none may be the same file as one in the folder)."""
    path = Path(folder)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        info = None
        if path.is_symlink():  # a dangling link: the folder would be made somewhere else, or not at all
            raise TscmError(f"{option} {path}: is a symbolic link to a missing folder; give a plain folder name")
    except OSError as error:
        raise TscmError(f"{option} {path}: cannot be resolved ({error.strerror or error})") from None
    if info is not None and not stat.S_ISDIR(info.st_mode):
        kind = "a file" if stat.S_ISREG(info.st_mode) else file_kind(info.st_mode)
        raise TscmError(f"{option} {path}: is {kind}; give a folder to write into")
    if info is not None:
        for role, value in inputs.items():
            for item in [] if value is None else [value] if isinstance(value, (str, os.PathLike)) else value:
                if Path(item).is_dir() and (_identity(Path(item)) == (info.st_dev, info.st_ino)
                                            or real_path(item) == real_path(path)):
                    raise TscmError(f"{option} {path}: is {role} ({item}), an input of this command; "
                                    "writing into it would mix outputs with it, give another folder")
    check_outputs([*((option, path / name) for name in names), *others.items()], inputs)
