"""`tscm data`: public data sets with a known source, fetched and verified file by file."""

from __future__ import annotations

import argparse

from tscm.data.fetch import named_datasets

NAME = "data"
HELP = "fetch a public data set (e.g. nordland) and check every file against the SHA-256 sums shipped with tscm"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="data_action", metavar="ACTION", required=True)
    fetch = actions.add_parser("fetch", help="download, extract and verify a data set into a folder",
                               description="Download a data set's archive (resumable), extract the files tscm lists "
                                           "for it, check each against its SHA-256 sum, then move the folder into "
                                           "place: a damaged or truncated archive leaves no half-written folder.")
    fetch.add_argument("name", choices=named_datasets(), help="data set")
    fetch.add_argument("--to", required=True, metavar="DIR", help="folder to create (must be new or empty)")
    fetch.add_argument("--url", default=None,
                       help="a mirror URL or a local copy of the same archive (.tar.gz or .zip; default: the source)")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bars")
    actions.add_parser("list", help="the data sets tscm can fetch, with their sources")


def run(args: argparse.Namespace) -> int:
    from tscm.data.fetch import SOURCES, fetch_dataset

    if args.data_action == "list":
        for source in SOURCES.values():
            print(f"{source.name}: {source.about}\n  source {source.url}")
        return 0
    result = fetch_dataset(args.name, args.to, url=args.url, progress=not args.no_progress)
    if result.already_there:
        print(f"{result.folder}: already a verified copy of {result.name} ({result.files} files)")
        return 0
    print(f"wrote {result.folder}: {result.files} files of {result.name}, each matching its SHA-256 sum"
          + (f"; {result.skipped} other files of the archive left out" if result.skipped else "")
          + (f"; downloaded {result.downloaded_bytes / 2**20:.1f} MB" if result.downloaded_bytes else ""))
    print(f"use it with: tscm demo --data {result.folder}   (or tscm check-data {result.folder} --split test)")
    return 0
