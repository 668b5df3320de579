"""`tscm ablation`: the distillation-loss ablation (same student, same steps and start) over several seeds."""

from __future__ import annotations

import argparse
from pathlib import Path

from tscm.commands.run_options import add_run_arguments, options_from_args
from tscm.errors import TscmError

NAME = "ablation"
HELP = ("The distillation ablation on any data set: the same student trained with each loss (no distillation, "
        "L_soft, L_cm, the paper's total, the published code's variants, STUN, regression, RKD, listwise) over several seeds, "
        "one shared teacher; mean ± standard error per row, each against no distillation.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser, NAME, "synthetic:ablation")
    parser.add_argument("--rows", nargs="+", default=["all"], metavar="SET|PRESET",
                        help="row sets (classic, paper = the published variants + STUN, all) or loss presets; "
                             "presets with the same terms are trained once (default: all)")
    parser.add_argument("--teacher", default=None, help="a trained teacher checkpoint to share (default: train one)")
    parser.add_argument("--grid", action="store_true",
                        help="also train every row on the teacher's tuples and measure last weights beside the best on "
                             "val: a tuples × checkpoint table (twice the training time)")


def run(args: argparse.Namespace) -> int:
    from tscm.experiments.ablation import run_ablation

    options = options_from_args(args, NAME)
    if args.teacher:
        from tscm.models.checkpoint import read_metadata

        meta = read_metadata(args.teacher)
        if meta.get("role") != "teacher":
            raise TscmError(f"--teacher {args.teacher}: holds a {meta.get('role')} model, expected a teacher")
    run_ablation(options, args.rows, Path(args.teacher) if args.teacher else None, grid=args.grid)
    return 0
