"""`tscm distill --teacher CKPT`: train a student from a frozen teacher (YAML preset + overrides)."""

from __future__ import annotations

import argparse

from tscm.commands.training_options import add_training_arguments, overrides_from_args, print_result
from tscm.config import load_config
from tscm.errors import TscmError

NAME = "distill"
HELP = "train a student by cross-metric distillation from a frozen teacher checkpoint"
DEFAULT_CONFIG = "demo_student"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--teacher",
        metavar="CKPT",
        default=None,
        help="teacher checkpoint folder (optional only for loss.preset=none with mining.descriptors=student)",
    )
    add_training_arguments(parser, DEFAULT_CONFIG)


def run(args: argparse.Namespace) -> int:
    from tscm.train.runs import distill, resume_run

    overrides = overrides_from_args(args)
    if args.resume:
        if args.config or args.teacher:
            raise TscmError("--resume uses the run's saved config and teacher; drop --config/--teacher")
        result = resume_run(args.resume, overrides, kind="student")
    else:
        config = load_config(args.config or DEFAULT_CONFIG, overrides, kind="student")
        result = distill(config, args.teacher)
    print_result(result)
    return 0
