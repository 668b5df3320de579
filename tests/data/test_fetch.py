"""`tscm data fetch`: archives served by a local HTTP server on 127.0.0.1 (good, corrupted, truncated,
resumed), checked against checksum lists; the shipped Nordland list against the shared copy."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tscm import cli
from tscm.data.fetch import (
    MARKER, fetch_dataset, is_verified_copy, parse_checksums, resolve_named_dataset, shipped_checksums,
)
from tscm.data.formats import load_placeset
from tscm.errors import TscmError

FOLDER = "seqslam-0123abc/datasets/nordland_trimmed"


def make_archive(files: dict[str, bytes], extra: dict[str, bytes] | None = None) -> bytes:
    """A .tar.gz as GitHub serves a repository: one top folder, the data set below it, other files beside."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        for name, data in {**{f"{FOLDER}/{k}": v for k, v in files.items()}, **(extra or {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def sums_of(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


FILES = {f"{season}/images-{10 * k:05d}.png": f"{season} frame {k} ".encode() * 300
         for season in ("summer", "winter") for k in range(1, 6)}
EXTRA = {f"{FOLDER}/summer/images-99990.png": b"a frame tscm does not list", "seqslam-0123abc/README.md": b"hello"}


class ArchiveServer:
    """Serves one archive at /archive.tar.gz with HTTP Range support; `cut_at` ends a response early."""

    def __init__(self) -> None:
        self.data = b""
        self.cut_at: int | None = None
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server interface
                server.ranges.append(self.headers.get("Range"))
                if self.path != "/archive.tar.gz":
                    self.send_error(404)
                    return
                data, start = server.data, 0
                requested = self.headers.get("Range")
                if requested:
                    start = int(requested.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                end = len(data) if server.cut_at is None else max(server.cut_at, start)
                self.wfile.write(data[start:end])
                self.wfile.flush()
                if server.cut_at is not None:
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/archive.tar.gz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ArchiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and "partial" in p.name)


def test_a_good_archive_is_extracted_verified_and_recognised_afterwards(tmp_path):
    with ArchiveServer() as server:
        server.data = make_archive(FILES, EXTRA)
        result = fetch_dataset("nordland", tmp_path / "nordland", url=server.url, checksums=sums_of(FILES), progress=False)
    target = tmp_path / "nordland"
    assert (result.files, result.skipped, result.downloaded_bytes) == (len(FILES), 1, len(server.data))
    for name, data in FILES.items():
        assert (target / name).read_bytes() == data
    assert not (target / "summer" / "images-99990.png").exists() and not (target / "README.md").exists()
    assert (target / MARKER).is_file() and is_verified_copy(target, "nordland", sums_of(FILES))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nordland"]  # the download is gone, nothing half-done
    again = fetch_dataset("nordland", target, url="http://127.0.0.1:9/never-contacted", checksums=sums_of(FILES))
    assert again.already_there


def test_a_corrupted_file_is_refused_and_nothing_is_written(tmp_path, capsys):
    damaged = dict(FILES)
    damaged["winter/images-00030.png"] = b"not the frame"
    archive = tmp_path / "damaged.tar.gz"
    archive.write_bytes(make_archive(damaged))
    with pytest.raises(TscmError, match=r"winter/images-00030.png has SHA-256 .*\(nothing was written\)"):
        fetch_dataset("nordland", tmp_path / "out", url=str(archive), checksums=sums_of(FILES), progress=False)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == [] and archive.exists()
    # A listed file the archive lacks is refused the same way.
    partial = {k: v for k, v in FILES.items() if k != "summer/images-00050.png"}
    archive.write_bytes(make_archive(partial))
    with pytest.raises(TscmError, match="1 of the 10 listed files"):
        fetch_dataset("nordland", tmp_path / "out", url=f"file://{archive}", checksums=sums_of(FILES), progress=False)
    assert not (tmp_path / "out").exists()


def test_a_truncated_download_is_reported_and_resumed_with_a_range_request(tmp_path):
    with ArchiveServer() as server:
        server.data = make_archive(FILES, EXTRA)
        server.cut_at = len(server.data) // 2
        with pytest.raises(TscmError, match=f"stopped at {server.cut_at} of {len(server.data)} bytes; run the command again"):
            fetch_dataset("nordland", tmp_path / "nordland", url=server.url, checksums=sums_of(FILES), progress=False)
        partial = tmp_path / ".nordland.download"
        assert partial.stat().st_size == server.cut_at and not (tmp_path / "nordland").exists()
        server.cut_at = None
        result = fetch_dataset("nordland", tmp_path / "nordland", url=server.url, checksums=sums_of(FILES), progress=False)
    assert server.ranges == [None, f"bytes={len(server.data) // 2}-"]
    assert result.downloaded_bytes == len(server.data) - len(server.data) // 2
    assert is_verified_copy(tmp_path / "nordland", "nordland", sums_of(FILES)) and not partial.exists()


def test_a_truncated_local_archive_is_one_line_and_leaves_no_folder(tmp_path, capsys):
    archive = tmp_path / "cut.tar.gz"
    whole = make_archive(FILES)
    archive.write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(TscmError, match="truncated or damaged"):
        fetch_dataset("nordland", tmp_path / "out", url=str(archive), checksums=sums_of(FILES), progress=False)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_offline_says_where_to_get_the_data_and_how_to_point_tscm_at_it(tmp_path, capsys):
    with ArchiveServer() as server:
        url = server.url
    # The server is closed: nothing listens on that port any more.
    code = cli.main(["data", "fetch", "nordland", "--to", str(tmp_path / "n"), "--url", url, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "could not download" in err and "--url ARCHIVE" in err and "--data PATH" in err
    with pytest.raises(TscmError, match="--data PATH"):
        resolve_named_dataset("nordland", cache_dir=tmp_path / "cache", url=url, progress=False)
    assert not (tmp_path / "cache" / "data" / "nordland").exists()


def test_checksum_lists_are_parsed_strictly():
    assert parse_checksums("a" * 64 + "  summer/x.png\n", "list") == {"summer/x.png": "a" * 64}
    for bad in ("xyz  summer/x.png", "a" * 64 + "  ../escape.png", "a" * 64 + "  /abs.png", ""):
        with pytest.raises(TscmError):
            parse_checksums(bad, "list")


def test_the_shipped_nordland_list_covers_exactly_the_shared_copy(nordland_root):
    sums = shipped_checksums("nordland")
    on_disk = {p.relative_to(nordland_root).as_posix(): p for p in nordland_root.rglob("*.png")}
    assert set(sums) == set(on_disk) and len(sums) == 5400
    for name, path in on_disk.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sums[name], name


@pytest.mark.slow
def test_fetch_of_the_shared_copy_as_an_archive_gives_a_folder_the_demo_reads(nordland_root, tmp_path, capsys):
    archive = tmp_path / "seqslam.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as bundle:
        for season in ("summer", "winter"):
            bundle.add(nordland_root / season, arcname=f"{FOLDER}/{season}")
    code = cli.main(["data", "fetch", "nordland", "--to", str(tmp_path / "nordland"), "--url", str(archive),
                     "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "5400 files of nordland" in out
    placeset = load_placeset(tmp_path / "nordland", split="test")
    assert (placeset.num_db, placeset.num_queries, placeset.unit) == (400, 400, "frame")
    # The demo's data spec: the cache is filled from the same archive once, then reused without it.
    cached = resolve_named_dataset("nordland", cache_dir=tmp_path / "cache", url=str(archive), progress=False)
    assert cached == tmp_path / "cache" / "data" / "nordland"
    assert resolve_named_dataset("nordland", cache_dir=tmp_path / "cache", url="http://127.0.0.1:9/unused") == cached
