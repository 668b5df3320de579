"""Public place-recognition data sets with a known source, fetched once and verified file by file.

`fetch_dataset(name, to)` downloads the source archive (resumable: an interrupted download is kept
beside the target as `.<target>.download` and continued with an HTTP Range request), extracts only
the files listed in the SHA-256 list shipped with tscm (`tscm/data/checksums/<name>.sha256`, the
`sha256sum` format), checks every one, and only then moves the finished folder into place: a
mismatch, a truncated archive or an interruption leaves no half-written folder. Files of the
archive that the list does not name are not extracted (the Nordland archive holds frames 2701–3576
and other seasons that the demo does not use; see SOURCES). `url` may be a mirror or a local copy
of the same archive (a path or file:// URL, never deleted).

`resolve_named_dataset(name)` is the data spec behind `tscm demo --data nordland`: the verified copy
in the cache (`$TSCM_CACHE` or ~/.cache/tscm, like the synthetic city), fetched on first use.

Network is contacted only here, and only when a user asks for a named data set.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from http.client import HTTPException
from importlib import resources
from pathlib import Path
from typing import Iterator, Mapping
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import Request, urlopen

from tscm.errors import TscmError
from tscm.fileio import read_json

MARKER = ".tscm-fetch.json"  # written last into a verified folder: name, source, file count, list digest
_CHUNK = 1 << 20
_TIMEOUT_S = 60


@dataclass(frozen=True)
class DatasetSource:
    name: str
    url: str
    folder: str  # the data set's folder inside the archive, below the archive's own top folder
    about: str
    layout: str  # what a copy at --data PATH must look like


SOURCES: dict[str, DatasetSource] = {
    "nordland": DatasetSource(
        name="nordland",
        # The public repository TimQuelch/seqslam at one fixed commit, as GitHub serves its archive.
        url="https://codeload.github.com/TimQuelch/seqslam/tar.gz/38311ace3bec3f4acec10c684fd81e28d02143fd",
        folder="datasets/nordland_trimmed",
        about="Nordland summer/winter frames 1–2700 at 64×32 (the copy the real demo uses), from the public GitHub "
              "repository TimQuelch/seqslam at commit 38311ace3bec3f4acec10c684fd81e28d02143fd, folder "
              "datasets/nordland_trimmed",
        layout="a folder with summer/ and winter/ holding images-00010.png … images-27000.png",
    ),
}


@dataclass
class FetchResult:
    name: str
    folder: Path
    files: int  # verified files in the folder
    skipped: int  # archive files not in the list, left out
    downloaded_bytes: int  # 0 when the archive was local or the folder was already there
    already_there: bool = False


def named_datasets() -> tuple[str, ...]:
    return tuple(SOURCES)


def is_named_dataset(data: str | os.PathLike) -> bool:
    """Whether a --data value names a data set tscm can fetch (an existing path of that name wins)."""
    text = os.fspath(data)
    return text in SOURCES and not Path(text).exists()


def source_of(name: str) -> DatasetSource:
    if name not in SOURCES:
        raise TscmError(f"data set {name!r}: unknown; tscm can fetch {', '.join(SOURCES)}")
    return SOURCES[name]


# ---- checksum lists ---------------------------------------------------------------------------------
def parse_checksums(text: str, where: str) -> dict[str, str]:
    """`sha256sum` lines (`<64 hex>  <relative path>`) as {relative path: digest}."""
    sums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        name = name.strip()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not name:
            raise TscmError(f"{where}:{number}: expected '<64 lower-case hex digits>  <relative path>', got {line[:80]!r}")
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or name.startswith("/"):
            raise TscmError(f"{where}:{number}: {name!r} is not a relative path inside the data set")
        sums[Path(name).as_posix()] = digest
    if not sums:
        raise TscmError(f"{where}: no checksums")
    return sums


def format_checksums(sums: Mapping[str, str]) -> str:
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items()))


def shipped_checksums(name: str) -> dict[str, str]:
    """The SHA-256 list shipped with tscm for data set `name`."""
    source_of(name)
    resource = resources.files("tscm.data").joinpath("checksums", f"{name}.sha256")
    try:
        text = resource.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TscmError(f"the checksum list of {name} is missing from this tscm installation ({resource})") from None
    return parse_checksums(text, f"{name}.sha256")


def checksum_digest(sums: Mapping[str, str]) -> str:
    return hashlib.sha256(format_checksums(sums).encode("utf-8")).hexdigest()


# ---- the folder -------------------------------------------------------------------------------------
def is_verified_copy(folder: Path, name: str, sums: Mapping[str, str]) -> bool:
    """Whether `folder` was written by a fetch of `name` against exactly this checksum list."""
    try:  # the bounded reader: a FIFO or huge file in place of the marker is refused, not read
        marker = read_json(folder / MARKER, "fetch marker")
    except (TscmError, OSError):
        return False
    return (isinstance(marker, dict) and marker.get("name") == name
            and marker.get("checksums_sha256") == checksum_digest(sums)
            and all((folder / relative).is_file() for relative in sums))


def fetch_dataset(name: str, to: str | os.PathLike, *, url: str | None = None,
                  checksums: Mapping[str, str] | None = None, progress: bool = True) -> FetchResult:
    """Download (or read) the archive of `name`, extract and verify its listed files into `to` (module doc).

    `checksums` replaces the shipped list (tests, or a larger copy of one's own).
    """
    source = source_of(name)
    sums = dict(checksums) if checksums is not None else shipped_checksums(name)
    target = Path(to)
    if target.exists():
        if is_verified_copy(target, name, sums):
            return FetchResult(name, target, len(sums), 0, 0, already_there=True)
        if not target.is_dir() or any(target.iterdir()):
            raise TscmError(f"--to {target}: exists and is not a verified copy of {name}; remove it or choose another folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    location = url or source.url
    local = _local_file(location)
    downloaded = 0
    if local is None:
        archive = target.parent / f".{target.name}.download"
        downloaded = download(location, archive, name=name, progress=progress)
    else:
        archive = local
    try:
        skipped = extract_verified(archive, source.folder, sums, target, name=name, origin=location, progress=progress)
    except _DamagedArchive as error:
        if local is None and not error.truncated:
            archive.unlink(missing_ok=True)  # wrong bytes: the next attempt starts afresh
        raise TscmError(str(error)) from None
    if local is None:
        archive.unlink(missing_ok=True)
    return FetchResult(name, target, len(sums), skipped, downloaded)


def _local_file(location: str) -> Path | None:
    parsed = urlparse(location)
    if parsed.scheme == "file":
        path = Path(parsed.path)
    elif parsed.scheme in ("http", "https"):
        return None
    else:
        path = Path(location)
    if not path.is_file():
        raise TscmError(f"--url {location}: no such archive file (give an http(s) URL or a local .tar.gz / .zip)")
    return path


# ---- download ---------------------------------------------------------------------------------------
def offline_advice(name: str, url: str) -> str:
    source = source_of(name)
    return (f"Without network: download {url} (or a mirror of it) on a machine that can, then run "
            f"`tscm data fetch {name} --to DIR --url ARCHIVE` with the file; or pass a copy you already have "
            f"as --data PATH ({source.layout})")


def download(url: str, partial: Path, *, name: str, progress: bool = True) -> int:
    """Download `url` into `partial`, continuing what an earlier attempt left there; bytes received now."""
    from tqdm import tqdm

    from tscm import __version__

    have = partial.stat().st_size if partial.exists() else 0
    headers = {"User-Agent": f"tscm/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=_TIMEOUT_S)  # noqa: S310 - http(s) only, see _local_file
    except HTTPError as error:
        if error.code == 416 and have:  # nothing after what we hold: the server's file is shorter; start again
            partial.unlink()
            return download(url, partial, name=name, progress=progress)
        raise TscmError(f"could not download {url}: HTTP {error.code} {error.reason}. {offline_advice(name, url)}") from None
    except (URLError, OSError, HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise TscmError(f"could not download {url} ({reason}). {offline_advice(name, url)}") from None
    received = 0
    with response:
        total = _total_size(response, have)
        if have and response.status != 206:  # the server ignored the range: the whole file comes again
            have = 0
        mode = "ab" if have else "wb"
        try:
            with open(partial, mode) as handle, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                      desc=f"download {name}", disable=None if progress else True) as bar:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    handle.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except (OSError, HTTPException) as error:
            raise TscmError(f"download of {url} stopped after {have + received} bytes ({error}); run the command "
                            "again to continue where it stopped") from None
    size = partial.stat().st_size
    if total is not None and size < total:
        raise TscmError(f"download of {url} stopped at {size} of {total} bytes; run the command again to continue "
                        "where it stopped")
    return received


def _total_size(response, have: int) -> int | None:
    """The whole file's size from Content-Range (a resumed download) or Content-Length, if the server says."""
    content_range = response.headers.get("Content-Range") or ""
    if response.status == 206 and "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit():
        return int(length) + (have if response.status == 206 else 0)
    return None


# ---- extraction -------------------------------------------------------------------------------------
class _DamagedArchive(Exception):
    def __init__(self, message: str, truncated: bool) -> None:
        super().__init__(message)
        self.truncated = truncated


def _members(archive: Path) -> Iterator[tuple[str, object]]:
    """(name, file object) of every regular file in a .tar(.gz|.bz2|.xz) or .zip archive, in stored order."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                if not info.is_dir():
                    with bundle.open(info) as handle:
                        yield info.filename, handle
        return
    with tarfile.open(archive, mode="r|*") as bundle:
        for member in bundle:
            if member.isfile():
                yield member.name, bundle.extractfile(member)


def extract_verified(archive: Path, folder: str, sums: Mapping[str, str], target: Path, *, name: str,
                     origin: str, progress: bool = True) -> int:
    """Extract the listed files of `folder` inside `archive` to `target`, each checked against `sums`;
    returns how many archive files of that folder were left out. The folder appears only when complete."""
    from tqdm import tqdm

    prefix = folder.strip("/") + "/"
    staging = target.parent / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    found: set[str] = set()
    skipped = 0
    try:
        with tqdm(total=len(sums), unit="file", desc=f"verify {name}", disable=None if progress else True) as bar:
            for member_name, handle in _members(archive):
                # Archives of a repository hold one top folder (e.g. seqslam-<commit>/): drop it.
                inside = member_name.split("/", 1)[1] if "/" in member_name else member_name
                if not inside.startswith(prefix):
                    continue
                relative = inside[len(prefix):]
                if relative not in sums:
                    skipped += 1
                    continue
                destination = staging / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with open(destination, "wb") as out:
                    while chunk := handle.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                if digest.hexdigest() != sums[relative]:
                    raise _DamagedArchive(f"{origin}: {relative} has SHA-256 {digest.hexdigest()[:16]}…, expected "
                                          f"{sums[relative][:16]}…; the archive is damaged or not the {name} release "
                                          "tscm knows (nothing was written)", truncated=False)
                found.add(relative)
                bar.update(1)
        missing = sorted(set(sums) - found)
        if missing:
            raise _DamagedArchive(f"{origin}: {len(missing)} of the {len(sums)} listed files of {name} are not in "
                                  f"{folder}/ of the archive (first: {missing[0]}); is it the right archive? "
                                  "(nothing was written)", truncated=False)
        (staging / MARKER).write_text(json.dumps({
            "name": name, "source": origin, "folder": folder, "files": len(sums),
            "checksums_sha256": checksum_digest(sums)}, indent=2) + "\n", encoding="utf-8")
        if target.exists():
            target.rmdir()  # an empty folder the user made: replaced by the verified one
        os.rename(staging, target)
    except (EOFError, tarfile.ReadError, zipfile.BadZipFile, zlib.error, OSError) as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError) and not isinstance(error, (EOFError, tarfile.ReadError)) and error.errno:
            raise  # a full disk or a read-only folder: reported as such by the CLI
        raise _DamagedArchive(f"{origin}: the archive is truncated or damaged ({error}); run the command again to "
                              "continue the download (nothing was written)", truncated=True) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return skipped


# ---- the demo's data spec ---------------------------------------------------------------------------
def resolve_named_dataset(name: str, *, cache_dir: str | os.PathLike | None = None, url: str | None = None,
                          progress: bool = True) -> Path:
    """The verified copy of data set `name` in the cache (`<cache>/data/<name>`), fetched on first use.

    Offline on first use, the TscmError says where to get the archive and how to point tscm at it.
    """
    from tscm.data.synthetic.city import default_cache_dir

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / "data" / name
    sums = shipped_checksums(name)
    if is_verified_copy(target, name, sums):
        return target
    if target.exists():  # a damaged or foreign folder in tscm's own cache: fetch a fresh copy beside it first
        shutil.rmtree(target)
    fetch_dataset(name, target, url=url, checksums=sums, progress=progress)
    return target
