"""Command-line options shared by `tscm demo` and `tscm ablation` (not a command itself)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tscm.config import TrainConfig, load_config
from tscm.config.fields import apply_text_overrides
from tscm.config.option_checks import check_device, check_seeds
from tscm.errors import TscmError


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
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="a training setting for every run, e.g. --set train.lr=1e-4 (repeatable)")


def options_from_args(args: argparse.Namespace, kind: str):
    from tscm.experiments.common import RunOptions, default_run_dir

    for flag, value, least in (("--epochs", args.epochs, 1), ("--max-queries", args.max_queries, 1),
                               ("--threads", args.threads, 0), ("--jobs", args.jobs, 1),
                               ("--batch-size", args.batch_size, 1)):
        if value is not None and value < least:
            raise TscmError(f"{flag}: expected an integer ≥ {least}, got {value}")
    check_device(args.device)
    check_seeds(args.seeds)
    # Everything the runs will use is checked now, before the run folder exists: a mistake found after
    # minutes of training (or in a folder a second try may not reuse) helps nobody.
    apply_text_overrides(TrainConfig(), args.overrides, "--set")
    for flag, preset, role in (("--teacher-config", args.teacher_config, "teacher"),
                               ("--student-config", args.student_config, "student")):
        if preset is not None:
            try:
                load_config(preset, kind=role)
            except TscmError as error:
                raise TscmError(f"{flag} {preset}: {error}") from None
    _check_data(args.data)
    seeds = tuple(dict.fromkeys(args.seeds)) if args.seeds else ((0,) if args.quick else (0, 1, 2))
    return RunOptions(
        out=Path(args.out) if args.out else default_run_dir(kind), data=args.data, name=args.name,
        seeds=seeds, epochs=args.epochs, max_queries=args.max_queries, quick=args.quick,
        threads=args.threads, jobs=args.jobs or default_jobs(args.threads, args.device), device=args.device, cache_dir=args.cache_dir, batch_size=args.batch_size,
        progress=not args.no_progress, teacher_config=args.teacher_config, student_config=args.student_config,
        overrides=list(args.overrides),
    )


def default_jobs(threads: int, device: str) -> int:
    """Two runs side by side on a CPU with two or more threads (tiny batches keep one thread per run busier than
    two threads in one run); one elsewhere."""
    return 2 if device == "cpu" and threads >= 2 else 1


def _check_data(data: str) -> None:
    """A data set that exists, or a known synthetic preset (generated later, on first use)."""
    from tscm.data.synthetic import SYNTHETIC_PREFIX, is_synthetic_spec

    if is_synthetic_spec(data):
        from tscm.data.synthetic.city import PRESETS

        preset = data[len(SYNTHETIC_PREFIX):] or "demo"
        if preset not in PRESETS:
            raise TscmError(f"--data {data}: unknown synthetic preset {preset!r}; expected one of {', '.join(PRESETS)}")
    elif not data or not Path(data).exists():
        from tscm.data.fetch import is_named_dataset

        if not is_named_dataset(data):
            raise TscmError(f"--data {data!r}: no such file or folder (or use synthetic:<preset>, e.g. synthetic:demo, "
                            "or nordland, fetched on first use)")
