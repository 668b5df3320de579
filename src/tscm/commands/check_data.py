"""`tscm check-data`: validate a data set and print a summary."""

from __future__ import annotations

import argparse
import os

from tscm.commands.bag_options import add_bag_arguments, bag_selection
from tscm.errors import TscmError

NAME = "check-data"
HELP = "Validate a data set (any supported format): counts, area, coverage, duplicates, missing or unreadable images."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="data set: folder, Pittsburgh .mat, CSV manifest, ground-truth .npz, Nordland or VPR-Bench folder, ROS bag")
    parser.add_argument("--split", default=None, help="split to check (default: test; a .mat file's own split)")
    parser.add_argument("--name", default=None, help="data-set name when a folder holds several (e.g. pitts30k)")
    parser.add_argument("--radius", type=float, default=None,
                        help="a query needs a database image within this distance, in the data set's unit: metres "
                             "(default 25) or ±frames (default 1)")
    parser.add_argument("--skip-images", action="store_true", help="do not open the images")
    parser.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="threads that decode images (default: CPU count, at most 8)"
    )
    add_bag_arguments(parser, query_bag=True)


def run(args: argparse.Namespace) -> int:
    from tscm.data.checks import check_placeset
    from tscm.data.formats import load_placeset

    if args.workers < 1:
        raise TscmError(f"--workers: expected a number of threads ≥ 1, got {args.workers}")
    placeset = load_placeset(args.path, split=args.split, name=args.name, bag=bag_selection(args))
    report = check_placeset(placeset, radius=args.radius, open_images=not args.skip_images, workers=args.workers)
    print(report.format())
    return 0 if report.ok else 1
