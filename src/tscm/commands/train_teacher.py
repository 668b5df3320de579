"""`tscm train-teacher`: train a teacher with hard-negative mining (YAML preset + overrides)."""

from __future__ import annotations

import argparse

from tscm.commands.training_options import add_training_arguments, overrides_from_args, print_result
from tscm.config import load_config
from tscm.errors import TscmError

NAME = "train-teacher"
HELP = "train a teacher network with triplet loss and hard-negative mining"
DEFAULT_CONFIG = "demo_teacher"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(parser, DEFAULT_CONFIG)


def run(args: argparse.Namespace) -> int:
    from tscm.train.runs import resume_run, train_teacher

    overrides = overrides_from_args(args)
    if args.resume:
        if args.config:
            raise TscmError("--resume uses the run's saved config; drop --config")
        result = resume_run(args.resume, overrides, kind="teacher")
    else:
        config = load_config(args.config or DEFAULT_CONFIG, overrides, kind="teacher")
        result = train_teacher(config)
    print_result(result)
    return 0
