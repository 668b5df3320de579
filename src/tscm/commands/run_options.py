"""Command-line options shared by `tscm demo` and `tscm ablation` (not a command itself)."""

from __future__ import annotations

import argparse

from tscm.config.fields import build_settings, flags_given
from tscm.config.quick import QUICK_RUN


def add_run_arguments(parser: argparse.ArgumentParser, kind: str, default_data: str) -> None:
    parser.add_argument("--data", default=default_data,
                        help="data set (folder, .mat, .csv, .npz, a Nordland or VPR-Bench folder), synthetic:<preset> "
                             f"(generated on first use into $TSCM_CACHE or ~/.cache/tscm, reused after) or nordland (fetched and "
                             f"checked on first use, cached there too); default {default_data}")
    parser.add_argument("--name", default="", help="data-set name when a folder holds several (e.g. pitts30k)")
    parser.add_argument("--out", default=None, help=f"run folder (default: runs/{kind}-<date>-<time>); must be new or empty")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="seeds of the student runs; rows give mean ± standard error over them "
                             "(default: 0 1 2; with --quick: 0)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of every training run (default: the preset's)")
    parser.add_argument("--max-queries", type=int, default=None, help="train queries per epoch, a random subset (default: the preset's)")
    parser.add_argument("--quick", action="store_true",
                        help="a mechanics check in seconds (1 epoch, 8 queries, tiny mining; one seed unless --seeds "
                             "is given); numbers mean nothing")
    parser.add_argument("--threads", type=int, default=2, help="torch/faiss CPU threads (default: 2; 0: library default)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="training runs at once, each in its own process with threads/jobs threads (default: 2 on "
                             "the CPU with --threads 2 or more, else 1); a run's numbers depend on its threads, not on "
                             "what runs beside it")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N (default: cpu)")
    parser.add_argument("--cache-dir", default=None, help="where synthetic cities are cached (default: $TSCM_CACHE or ~/.cache/tscm)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch when describing the test split")
    parser.add_argument("--teacher-config", default=None, help="teacher training preset (default: chosen by the data)")
    parser.add_argument("--student-config", default=None, help="student training preset (default: chosen by the data)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="a training setting for every run, e.g. --set train.lr=1e-4 (repeatable)")


def options_from_args(args: argparse.Namespace, kind: str):
    """The RunOptions the flags give (defaults, then the `--quick` values, then the flags given), checked."""
    from tscm.experiments.common import RunOptions, default_run_dir

    given = flags_given(args, RunOptions)
    if "seeds" in given:
        given["seeds"] = tuple(dict.fromkeys(given["seeds"]))  # a seed given twice is trained once
    given.setdefault("jobs", default_jobs(args.threads, args.device))
    return build_settings(RunOptions, QUICK_RUN if args.quick else {}, given, out=default_run_dir(kind))


def default_jobs(threads: int, device: str) -> int:
    """Two runs side by side on a CPU with two or more threads (tiny batches keep one thread per run busier than
    two threads in one run); one elsewhere."""
    return 2 if device == "cpu" and threads >= 2 else 1
