"""`tscm demo`: teacher, distilled student and no-distillation baseline over several seeds, one report."""

from __future__ import annotations

import argparse

from tscm.commands.run_options import add_run_arguments, options_from_args

NAME = "demo"
HELP = ("The main job: train a teacher, distil a student with the paper's loss and with tscm's recommended loss, "
        "train the same student without distillation (3 seeds), and compare them with reference floors on the test split.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, NAME, "synthetic:demo")


def run(args: argparse.Namespace) -> int:
    from tscm.experiments.demo import run_demo
    from tscm.experiments.report import format_table

    outcome = run_demo(options_from_args(args, NAME))
    print(format_table(outcome.results))
    return 1 if outcome.picture_failures else 0
