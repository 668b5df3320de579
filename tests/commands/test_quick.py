"""`--quick` of `tscm demo` / `tscm ablation` / `tscm bench`: its values first, then every flag given wins."""

from __future__ import annotations

from pathlib import Path

from tscm import cli
from tscm.commands.run_options import options_from_args
from tscm.experiments.common import training_config


def run_options(*words: str):
    return options_from_args(cli.build_parser().parse_args(["demo", "--out", "unused", *words]), "demo")


def test_demo_quick_trains_one_seed_unless_seeds_are_given():
    assert run_options("--quick").seeds == (0,)
    assert run_options().seeds == (0, 1, 2)
    assert run_options("--quick", "--seeds", "4", "4", "2").seeds == (4, 2)  # a seed given twice is trained once


def test_demo_quick_training_runs_take_the_quick_values_then_the_flags():
    options = run_options("--quick", "--epochs", "3", "--set", "train.batch_size=2")
    config = training_config("demo_student", "student", options, Path("data"), Path("run"), "student", seed=5)
    assert (config.train.epochs, config.train.max_queries_per_epoch, config.train.batch_size) == (3, 8, 2)
    assert (config.mining.num_random, config.run.tensorboard, config.train.seed) == (16, False, 5)
    plain = training_config("demo_student", "student", run_options(), Path("data"), Path("run"), "student", seed=5)
    assert (plain.train.max_queries_per_epoch, plain.mining.num_random) != (8, 16)


def test_bench_quick_takes_the_quick_values_then_the_flags(monkeypatch):
    import tscm.bench.suite

    seen = []
    monkeypatch.setattr(tscm.bench.suite, "run_bench", lambda settings, out: seen.append(settings))
    assert cli.main(["bench", "--quick", "--queries", "30", "mining"]) == 0
    assert cli.main(["bench"]) == 0
    quick, plain = seen
    assert (quick.quick, quick.queries, quick.sizes, quick.models, quick.parts) == (
        True, 30, [1000], ["student-tiny"], ("mining",))
    assert (plain.quick, plain.queries, plain.sizes, plain.parts) == (False, 1000, [10_000, 250_000],
                                                                      ("extraction", "matching", "city"))
