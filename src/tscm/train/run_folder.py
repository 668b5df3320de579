"""Run folders and training data: create or reopen a run, record its config and command lines."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Iterable

import yaml

from tscm.config import TrainConfig, apply_mapping, parse_override, set_value, validate
from tscm.data.places import PlaceSet
from tscm.errors import TscmError
from tscm.fileio import write_text_atomic
from tscm.train.runtime import Runtime

CONFIG_FILE = "config.yaml"
COMMAND_FILE = "command.txt"
SYNTHETIC_PREFIX = "synthetic:"


def current_command_line() -> str:
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def load_training_data(config: TrainConfig, runtime: Runtime) -> tuple[PlaceSet, PlaceSet]:
    """The train and validation PlaceSets; `synthetic:<preset>` generates the built-in city once."""
    from tscm.data.formats import load_placeset

    data = config.data
    if not data.path:
        raise TscmError("config: data.path is empty; give a data set (--set data.path=DIR) or synthetic:demo")
    root: str | Path = data.path
    if data.path.startswith(SYNTHETIC_PREFIX):
        from tscm.data.synthetic.city import ensure_synthetic_city

        preset = data.path[len(SYNTHETIC_PREFIX) :] or "demo"
        # One process generates the city; the others wait and then find it cached.
        if runtime.is_main:
            root = ensure_synthetic_city(preset, seed=data.synthetic_seed, progress=config.train.progress)
        runtime.barrier()
        if not runtime.is_main:
            root = ensure_synthetic_city(preset, seed=data.synthetic_seed, progress=False)
    name = data.name or None
    train_set = load_placeset(root, data.train_split, name=name)
    val_set = load_placeset(root, data.val_split, name=name)
    if data.val_split == "test" or val_set.split == "test":
        raise TscmError("config: data.val_split is the test split; model selection must use a validation split")
    return train_set, val_set


def create_run_dir(config: TrainConfig, runtime: Runtime, command_line: str) -> Path:
    """A new, empty run folder holding config.yaml and command.txt (written by rank 0)."""
    name = config.run.name or f"{config.kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    name = runtime.broadcast_text(name)
    run_dir = Path(config.run.output_dir) / name
    if runtime.is_main:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise TscmError(f"run folder {run_dir} exists and is not empty; pick another run.name or --resume it")
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / CONFIG_FILE, config.to_yaml())
        record_command(run_dir, command_line)
    runtime.barrier()
    return run_dir


def record_command(run_dir: Path, command_line: str) -> None:
    """Append the command line to command.txt (every start and resume of the run)."""
    path = run_dir / COMMAND_FILE
    previous = path.read_text(encoding="utf-8") if path.is_file() else ""
    write_text_atomic(path, previous + command_line + "\n")


def load_run_config(run_dir: str | Path, overrides: Iterable[str] = ()) -> TrainConfig:
    """The saved config of a run folder, with optional `section.field=value` overrides (for resume)."""
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise TscmError(f"{run_dir}: not a run folder (no {CONFIG_FILE})")
    try:
        mapping = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise TscmError(f"{path}: not valid YAML: {error}") from None
    config = TrainConfig()
    apply_mapping(config, mapping, str(path))
    for item in overrides:
        key, value = parse_override(item)
        set_value(config, key, value, f"override {item!r}")
    validate(config)
    return config


def reopen_run_dir(run_dir: str | Path, config: TrainConfig, runtime: Runtime, command_line: str) -> Path:
    """Reopen a run folder for --resume; its config.yaml is rewritten when overrides changed it."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise TscmError(f"--resume {run_dir}: not a run folder (no {CONFIG_FILE})")
    if runtime.is_main:
        write_text_atomic(run_dir / CONFIG_FILE, config.to_yaml())
        record_command(run_dir, command_line)
    runtime.barrier()
    return run_dir
