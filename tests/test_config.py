"""Typed training settings: presets, overrides, errors, saved copies."""

from __future__ import annotations

import pytest
import yaml

from tscm.cli import build_parser
from tscm.config import TrainConfig, load_config, train_config_from_dict
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
