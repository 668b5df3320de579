"""`tscm check-data`: validate a data set and print a summary."""

from __future__ import annotations

import argparse
import os

NAME = "check-data"
HELP = "Validate a data set (any supported format): counts, area, coverage, duplicates, missing or unreadable images."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="data set: folder, Pittsburgh .mat, CSV manifest or ground-truth .npz")
    parser.add_argument("--split", default="test", help="split to check (default: test)")
    parser.add_argument("--name", default=None, help="data-set name when a folder holds several (e.g. pitts30k)")
    parser.add_argument("--radius", type=float, default=25.0, help="metres within which a query needs a database image (default: 25)")
    parser.add_argument("--skip-images", action="store_true", help="do not open the images")
    parser.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="threads that decode images (default: CPU count, at most 8)"
    )


def run(args: argparse.Namespace) -> int:
    from tscm.data.checks import check_placeset
    from tscm.data.formats import load_placeset

    placeset = load_placeset(args.path, split=args.split, name=args.name)
    report = check_placeset(placeset, radius_m=args.radius, open_images=not args.skip_images, workers=args.workers)
    print(report.format())
    return 0 if report.ok else 1
