"""`tscm ablation`: the distillation-loss ablation (same student, same steps and start) over several seeds."""

from __future__ import annotations

import argparse

NAME = "ablation"
HELP = ("The paper's distillation ablation on any data set: the same student trained with no distillation, "
        "L_soft, L_cm, L_soft + L_cm (the paper's total), the published squared hinge, regression and RKD, "
        "over several seeds, one shared teacher; mean ± standard error per row.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from tscm.commands.demo import add_run_arguments

    add_run_arguments(parser, NAME)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="seeds of the student runs, each row trained once per seed (default: 0 1 2)")
    parser.add_argument("--rows", nargs="+", default=None, metavar="PRESET",
                        help="loss presets to compare (default: all of none soft cm soft+cm tscm tscm-published "
                             "regression rkd; presets with the same terms are trained once)")
    parser.add_argument("--teacher", default=None,
                        help="a trained teacher checkpoint to share (default: train one with the first seed)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tscm.experiments.ablation import DEFAULT_DATA, run_ablation
    from tscm.commands.demo import options_from_args

    options = options_from_args(args, NAME, args.seeds[0], DEFAULT_DATA)
    run_ablation(options, args.seeds, args.rows, Path(args.teacher) if args.teacher else None)
    return 0
