"""`tscm synth OUT`: write the built-in synthetic city in the Pittsburgh layout."""

from __future__ import annotations

import argparse

from tscm.config.option_checks import check_seed
from tscm.errors import TscmError

NAME = "synth"
HELP = "Generate the procedural synthetic city (Pittsburgh .mat layout, JPEG images) into OUT."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tscm.data.synthetic.city import PRESETS

    parser.add_argument("out", metavar="OUT", help="directory to create (must not exist or be empty)")
    parser.add_argument("--preset", default="demo", choices=list(PRESETS),
                        help="size and difficulty preset (default: demo, 64 px, about 6k images)")
    parser.add_argument("--seed", type=int, metavar="N", default=0,
                        help="random seed; the same seed gives identical files")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="rendering processes (default: one per core for cities of 2,000+ images)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it already holds a synthetic city")
    knobs = parser.add_argument_group("knobs (override the preset)")
    knobs.add_argument("--image-size", type=int, metavar="PX", help="square image side in pixels")
    knobs.add_argument("--streets-train", type=int, metavar="N", help="streets in the train split")
    knobs.add_argument("--streets-val", type=int, metavar="N", help="streets in the val split")
    knobs.add_argument("--streets-test", type=int, metavar="N", help="streets in the test split")
    knobs.add_argument("--street-length", type=float, metavar="M", dest="street_length_m",
                       help="street length in metres")
    knobs.add_argument("--db-spacing", type=float, metavar="M", dest="db_spacing_m",
                       help="metres between database places")
    knobs.add_argument("--db-headings", type=int, metavar="N", help="views per database place (1, 2, 3, 4, 6 or 12)")
    knobs.add_argument("--query-spacing", type=float, metavar="M", dest="query_spacing_m",
                       help="metres between query places")
    knobs.add_argument("--query-headings", type=int, metavar="N", help="views per query place (at most --db-headings)")
    knobs.add_argument("--difficulty", type=float, metavar="D",
                       help="appearance change between traversals: 0 none … 1 strong (max 2)")
    knobs.add_argument("--supersample", type=int, metavar="N", help="rays per pixel side (1..4; antialiasing)")
    knobs.add_argument("--jpeg-quality", type=int, metavar="N", help="JPEG quality 1..100")


def run(args: argparse.Namespace) -> int:
    from tscm.data.synthetic.city import generate_synthetic_city, resolve_config

    check_seed(args.seed, "--seed")
    if args.workers is not None and args.workers < 1:
        raise TscmError(f"--workers: expected a number of rendering processes ≥ 1, got {args.workers}")
    knob_names = ("image_size", "streets_train", "streets_val", "streets_test", "street_length_m", "db_spacing_m",
                  "db_headings", "query_spacing_m", "query_headings", "difficulty", "supersample", "jpeg_quality")
    config = resolve_config(args.preset, **{name: getattr(args, name) for name in knob_names})
    summary = generate_synthetic_city(args.out, args.preset, args.seed, config, workers=args.workers,
                                      progress=True, overwrite=args.overwrite)
    for split, counts in summary["counts"].items():
        print(f"{split}: {len(counts['streets'])} streets, {counts['database']} database images, "
              f"{counts['queries']} queries")
    rate = summary["images"] / max(summary["seconds"], 1e-9)
    print(f"wrote {summary['images']} images to {args.out} in {summary['seconds']:.1f} s ({rate:.0f} images/s)")
    return 0
