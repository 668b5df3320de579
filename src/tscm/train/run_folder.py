"""Run folders: create or reopen a run, record its config and command lines, and lock it while it trains."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tscm.config import TrainConfig
from tscm.config.fields import apply_text_overrides
from tscm.config.loading import apply_mapping
from tscm.config.yaml_text import load_yaml, read_yaml_text
from tscm.errors import TscmError
from tscm.fileio import write_text_atomic
from tscm.train.runtime import Runtime

CONFIG_FILE = "config.yaml"
COMMAND_FILE = "command.txt"
LOCK_FILE = ".lock"
# What a run that stopped before its first checkpoint leaves; such a folder may be started again.
_STARTUP_FILES = {CONFIG_FILE, COMMAND_FILE, LOCK_FILE, "steps.csv", "epochs.csv", "tensorboard", "last.new", "best.new"}


def current_command_line() -> str:
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def new_run_dir_path(config: TrainConfig, runtime: Runtime) -> Path:
    """Where a new run of `config` lives: run.output_dir / run.name (default: <kind>-<date>-<time>)."""
    name = config.run.name or f"{config.kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    name = runtime.broadcast_text(name)
    return Path(config.run.output_dir) / name


def create_run_dir(config: TrainConfig, runtime: Runtime, command_line: str, run_dir: Path | None = None) -> Path:
    """A new run folder holding config.yaml and command.txt (written by rank 0).

    An existing folder is refused unless it only holds what a run that never reached its first
    checkpoint leaves behind (then it is started again). `open_run_dir` calls this under the run lock.
    """
    run_dir = new_run_dir_path(config, runtime) if run_dir is None else Path(run_dir)
    if runtime.is_main:
        if run_dir.exists() and not run_dir.is_dir():
            raise TscmError(f"run folder {run_dir} exists and is a file; pick another run.name")
        if run_dir.is_dir():
            left = {p.name for p in run_dir.iterdir()}
            if left - _STARTUP_FILES:
                raise TscmError(f"run folder {run_dir} exists and holds a run ({', '.join(sorted(left - _STARTUP_FILES))}); "
                                "pick another run.name or --resume it")
            for stale in ("steps.csv", "epochs.csv"):
                (run_dir / stale).unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / CONFIG_FILE, config.to_yaml())
        record_command(run_dir, command_line)
    runtime.barrier()
    return run_dir


@contextlib.contextmanager
def open_run_dir(config: TrainConfig, runtime: Runtime, command_line: str, resume: str | Path | None = None,
                 before_write: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """The run folder (new, or `resume`'s), locked for this process while the block runs.

    The lock is taken before anything in the folder is touched, so a second process (a second
    `--resume`, or a start under the name of a run still before its first checkpoint) is refused
    and changes nothing; `before_write(run_dir)` runs under the lock before config.yaml and
    command.txt are written (the checks of a resume).
    """
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / CONFIG_FILE).is_file():
            raise TscmError(f"--resume {run_dir}: not a run folder (no {CONFIG_FILE})")
    else:
        run_dir = new_run_dir_path(config, runtime)
        if runtime.is_main:
            if run_dir.exists() and not run_dir.is_dir():
                raise TscmError(f"run folder {run_dir} exists and is a file; pick another run.name")
            run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir, runtime):
        if before_write is not None:
            before_write(run_dir)
        if resume is not None:
            reopen_run_dir(run_dir, config, runtime, command_line)
        else:
            create_run_dir(config, runtime, command_line, run_dir)
        yield run_dir


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
    mapping = load_yaml(read_yaml_text(path), str(path)) or {}
    config = TrainConfig()
    apply_mapping(config, mapping, str(path))
    apply_text_overrides(config, overrides)
    config.check()
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


@contextlib.contextmanager
def run_lock(run_dir: Path, runtime: Runtime) -> Iterator[None]:
    """Hold an exclusive lock on the run folder while it trains (rank 0), so two processes never
    train into one folder; a second one stops at once, naming the folder."""
    if not runtime.is_main:
        yield
        return
    import fcntl

    handle = open(run_dir / LOCK_FILE, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise TscmError(f"run folder {run_dir} is in use by {holder}; wait for it to finish "
                            "(two runs must not train into one folder)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()
