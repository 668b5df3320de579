"""`tscm demo`: teacher, distilled student and no-distillation baseline on the synthetic city, one table."""

from __future__ import annotations

import argparse

NAME = "demo"
HELP = ("Train the tiny teacher, distil the tiny student with the paper's loss, train the same student without "
        "distillation, and compare all three (and raw pixels) on the test split; minutes on a laptop CPU.")


def add_run_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    """Options shared with `tscm ablation`."""
    parser.add_argument("--data", default=None,
                        help="data set (folder, .mat, .csv, .npz) or synthetic:<preset> (generated on first use "
                             "into $TSCM_CACHE or ~/.cache/tscm, reused after)")
    parser.add_argument("--name", default="", help="data-set name when a folder holds several (e.g. pitts30k)")
    parser.add_argument("--out", default=None, help=f"run folder (default: runs/{kind}-<date>-<time>); must be new or empty")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of every training run (default: the preset's)")
    parser.add_argument("--max-queries", type=int, default=None,
                        help="train queries per epoch, a random subset (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="a mechanics check in seconds (1 epoch, 8 queries, tiny mining); numbers mean nothing")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch/faiss CPU threads (default: 1; the tiny models gain little from more, and on a "
                             "busy machine extra threads spin and slow training several-fold; 0: library default)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N (default: cpu)")
    parser.add_argument("--cache-dir", default=None, help="where synthetic cities are cached (default: $TSCM_CACHE or ~/.cache/tscm)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch when describing the test split")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="a training setting for every run, e.g. --set train.lr=1e-4 (repeatable)")


def options_from_args(args: argparse.Namespace, kind: str, seed: int, default_data: str):
    from pathlib import Path

    from tscm.experiments.demo import RunOptions, default_run_dir
    from tscm.errors import TscmError

    for flag, value in (("--epochs", args.epochs), ("--max-queries", args.max_queries), ("--threads", args.threads),
                        ("--batch-size", args.batch_size)):
        if value is not None and value < (0 if flag == "--threads" else 1):
            raise TscmError(f"{flag}: expected a positive number, got {value}")
    return RunOptions(
        out=Path(args.out) if args.out else default_run_dir(kind),
        data=args.data or default_data,
        name=args.name,
        seed=seed,
        epochs=args.epochs,
        max_queries=args.max_queries,
        quick=args.quick,
        threads=args.threads,
        device=args.device,
        cache_dir=args.cache_dir,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        overrides=list(args.overrides),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, NAME)
    parser.add_argument("--seed", type=int, default=0, help="seed of every training run (default: 0)")


def run(args: argparse.Namespace) -> int:
    from tscm.experiments.demo import DEFAULT_DATA, run_demo

    outcome = run_demo(options_from_args(args, NAME, args.seed, DEFAULT_DATA))
    return 1 if outcome.picture_failures else 0
