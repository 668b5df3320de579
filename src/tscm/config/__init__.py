"""Typed settings: the one idiom of every settings object, and a training run's `TrainConfig` (YAML presets,
command-line overrides, resolved copy).

A run is described by one `TrainConfig` made of sections (`data`, `model`, `mining`, `train`,
`loss`, `distill`, `eval`, `run`). A preset is a YAML file with the same sections; shipped presets
live in `tscm/configs/*.yaml` and are found by name (`demo_teacher`), any other YAML by path.
Every field can be overridden as `section.field=value`; values are converted to the field's type
and checked, and unknown sections/fields or bad values raise `TscmError` naming them.

The modules, one job each: `fields` (the idiom: a field with its help, choices and range, and the one
path that converts, checks and sets a value, used by `TrainConfig`, the demo's `RunOptions` and the
bench's `BenchSettings`), `sections` (TrainConfig's dataclasses and its checks across fields), `loading`
(defaults → preset or file → overrides → checks), `quick` (the `--quick` overrides), `yaml_text`
(reading a settings file as plain YAML, bounded), `option_checks` (device, seed and count options
that commands share). The Python API is re-exported here.
"""

from tscm.config.loading import load_config, train_config_from_dict
from tscm.config.sections import TrainConfig

__all__ = ["TrainConfig", "load_config", "train_config_from_dict"]
