"""Typed settings: the one idiom (fields with their range, one override path), training presets, overrides,
errors, saved copies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from tscm.cli import build_parser
from tscm.config import TrainConfig, load_config, train_config_from_dict
from tscm.config.fields import build_settings, check_fields, setting
from tscm.config.loading import shipped_presets
from tscm.errors import TscmError
from tscm.commands.training_options import overrides_from_args


def test_shipped_presets_are_found_and_valid():
    names = shipped_presets()
    for expected in ("demo_teacher", "demo_student", "paper_pitts30k_teacher", "paper_pitts30k_student"):
        assert expected in names
    for name in names:
        load_config(name)


def test_paper_presets_hold_the_published_settings():
    for name, kind in (("paper_pitts30k_teacher", "teacher"), ("paper_pitts30k_student", "student")):
        config = load_config(name, kind=kind)
        t, m = config.train, config.mining
        assert (t.optimizer, t.lr, t.weight_decay, t.lr_gamma) == ("adam", 1e-5, 1e-3, 0.99)
        assert (t.epochs, t.patience, t.batch_size, t.seed) == (200, 10, 8, 1234)
        assert (m.num_negatives, m.num_random, m.margin, m.refresh_every_epochs) == (10, 1000, 0.1, 1)
        assert (m.pos_radius_m, m.neg_radius_m, m.positive_rule) == (10.0, 25.0, "descriptor")
        assert config.loss.margin == 0.1
    assert load_config("paper_pitts30k_student").mining.descriptors == "teacher"


def test_overrides_are_typed():
    config = load_config(
        "demo_teacher",
        ["train.lr=3e-4", "mining.positive_rule=descriptor", "train.progress=false", "mining.num_negatives=7", "train.lr_gamma=1"],
    )
    assert config.train.lr == pytest.approx(3e-4) and isinstance(config.train.lr, float)
    assert config.mining.positive_rule == "descriptor"
    assert config.train.progress is False
    assert config.mining.num_negatives == 7
    assert config.train.lr_gamma == 1.0


@pytest.mark.parametrize(
    "override, words",
    [
        ("trian.lr=1", ["unknown section", "trian"]),
        ("train.lrr=1", ["unknown setting", "train.lrr", "lr"]),
        ("train.lr=fast", ["train.lr", "number", "fast"]),
        ("train.epochs=2.5", ["train.epochs", "integer"]),
        ("train.progress=maybe", ["train.progress", "true or false"]),
        ("mining.positive_rule=compass", ["mining.positive_rule", "heading", "compass"]),
        ("train.lr=-1", ["train.lr", "positive"]),
        ("mining.pos_radius_m=30", ["pos_radius_m", "neg_radius_m"]),
        ("train.lr", ["section.field=value"]),
    ],
)
def test_bad_overrides_name_the_setting(override, words):
    with pytest.raises(TscmError) as error:
        load_config("demo_teacher", [override])
    for word in words:
        assert word in str(error.value)


def test_yaml_file_errors_name_the_file_and_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train:\n  lr: 1.0e-3\n  warmup: 5\n")
    with pytest.raises(TscmError) as error:
        load_config(str(path))
    assert str(path) in str(error.value) and "train.warmup" in str(error.value)
    path.write_text("train: [1, 2\n")
    with pytest.raises(TscmError, match="not valid YAML"):
        load_config(str(path))
    with pytest.raises(TscmError, match="not a YAML file and not a shipped preset"):
        load_config("no_such_preset")


def test_kind_mismatch_is_an_error():
    with pytest.raises(TscmError, match="describes a student run"):
        load_config("demo_student", kind="teacher")


def test_resolved_config_round_trips_through_yaml():
    config = load_config("demo_student", ["train.lr=2.5e-4", "run.name=x"])
    again = train_config_from_dict(yaml.safe_load(config.to_yaml()))
    assert again == config
    assert again != TrainConfig()


def test_cli_dotted_flags_and_set_both_override():
    args = build_parser().parse_args(
        ["train-teacher", "--set", "train.lr=3e-4", "--mining.positive_rule", "heading", "--train.epochs", "3"]
    )
    overrides = overrides_from_args(args)
    assert sorted(overrides) == sorted(["train.lr=3e-4", "mining.positive_rule=heading", "train.epochs=3"])
    config = load_config("paper_pitts30k_teacher", overrides)
    assert (config.train.lr, config.mining.positive_rule, config.train.epochs) == (3e-4, "heading", 3)


@dataclass
class Knobs:
    """A settings class of the command-line kind (AS_FLAGS), one field of each sort."""

    AS_FLAGS: ClassVar[bool] = True

    sizes: list[int] = setting([10], least=2, most=100)
    seeds: tuple[int, ...] = setting((0,), least=0)
    epochs: int | None = setting(None, least=1)
    out: Path = Path("runs")
    rule: str = setting("a", choices=("a", "b"))
    budget: float = setting(1.0, above=0, most=10)

    def check(self) -> None:
        check_fields(self)


def test_overrides_are_converted_to_each_fields_type():
    knobs = build_settings(Knobs, {"sizes": "3,4", "seeds": ["5"], "epochs": "2", "out": "runs/a", "budget": "10"})
    assert (knobs.sizes, knobs.seeds, knobs.epochs, knobs.out, knobs.budget) == ([3, 4], (5,), 2, Path("runs/a"), 10.0)
    assert Knobs().sizes is not Knobs().sizes  # a list default is each instance's own


@pytest.mark.parametrize("values, message", [
    ({"sizes": [3, 1]}, "--sizes: expected an integer in 2..100, got 1"),
    ({"epochs": 0}, "--epochs: expected an integer ≥ 1, got 0"),
    ({"budget": 0}, "--budget: expected a number in (0, 10], got 0"),
    ({"budget": 1e12}, "--budget: expected a number in (0, 10], got 1e+12"),
    ({"rule": "c"}, "--rule: expected one of a, b, got 'c'"),
    ({"seeds": "1,x"}, "--seeds: expected an integer, got 'x'"),
    ({"colour": 1}, "unknown setting '--colour'"),
])
def test_a_bad_value_names_the_flag_the_value_and_what_was_expected(values, message):
    with pytest.raises(TscmError) as error:
        build_settings(Knobs, values)
    assert message in str(error.value)


def test_later_layers_win_and_check_sees_values_set_in_code():
    knobs = build_settings(Knobs, {"epochs": 3, "rule": "b"}, {"epochs": 5})
    assert (knobs.epochs, knobs.rule) == (5, "b")
    knobs.epochs = 0
    with pytest.raises(TscmError, match="--epochs: expected an integer ≥ 1, got 0"):
        knobs.check()


def test_a_training_range_is_checked_as_it_is_set_and_in_code():
    with pytest.raises(TscmError, match=r"override 'train.lr_gamma=2': train.lr_gamma: expected a number in \(0, 1\]"):
        load_config("demo_teacher", ["train.lr_gamma=2"])
    config = load_config("demo_teacher")
    config.mining.num_random = 0
    with pytest.raises(TscmError, match="mining.num_random: expected an integer ≥ 1, got 0"):
        config.check()
