"""Command-line options shared by `tscm train-teacher` and `tscm distill`.

`--config NAME|FILE` picks the preset, `--set section.field=value` (repeatable) and one dotted flag
per setting (`--train.lr 3e-4`) override it, `--resume RUN` continues a run folder.
"""

from __future__ import annotations

import argparse
import os

from tscm.config.loading import shipped_presets
from tscm.config.sections import all_keys

_DEST_PREFIX = "setting__"


def add_training_arguments(parser: argparse.ArgumentParser, default_config: str) -> None:
    parser.add_argument(
        "--config",
        default=None,
        metavar="NAME|FILE",
        help=f"YAML preset name ({', '.join(shipped_presets())}) or file (default: {default_config})",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override one setting, e.g. --set train.lr=3e-4 --set mining.positive_rule=heading (repeatable)",
    )
    parser.add_argument("--resume", metavar="RUN", default=None, help="continue this run folder from its last checkpoint")
    group = parser.add_argument_group("settings (each overrides the preset; same as --set)")
    for key, field in all_keys():
        choices = field.metadata.get("choices")
        help_text = field.metadata.get("help", "")
        if choices:
            help_text += f" ({'|'.join(choices)})"
        group.add_argument(f"--{key}", dest=_DEST_PREFIX + key.replace(".", "__"), default=None, metavar="V", help=help_text)


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    """--set items first, then dotted flags, as `section.field=value` strings."""
    overrides = list(args.overrides)
    for dest, value in vars(args).items():
        if dest.startswith(_DEST_PREFIX) and value is not None:
            key = dest[len(_DEST_PREFIX) :].replace("__", ".")
            overrides.append(f"{key}={value}")
    return overrides


def print_result(result) -> None:
    """The run's summary, printed once (by rank 0 under torchrun)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    metrics = result.metrics
    if metrics.get("stopped") == "stop_after_steps":
        from tscm.train.checkpoints import RunCheckpoints

        if RunCheckpoints(result.run_dir, save_model=None).has_state():
            print(f"stopped after {metrics['steps']} steps (train.stop_after_steps); continue with --resume "
                  f"{result.run_dir} --set train.stop_after_steps=0 (without it the run stops again at once)")
        else:
            print(f"stopped after {metrics['steps']} steps (train.stop_after_steps), before the first checkpoint "
                  "(train.checkpoint_every_steps): there is nothing to resume; start the run again under the same "
                  f"name ({result.run_dir}) without train.stop_after_steps")
        return
    untrained = (metrics.get("untrained_val_recall") or {}).get("1")
    best = metrics.get("best_val_recall_at_1")
    protocol = (metrics.get("last_val") or {}).get("protocol", "")
    lines = [f"run folder: {result.run_dir}"]
    if untrained is not None:
        lines.append(f"validation R@1 untrained: {untrained:.2f} %  ({protocol})")
    if best is not None:
        lines.append(f"validation R@1 best:      {best:.2f} %  (epoch {metrics['best_epoch']})")
    lines.append(f"stopped: {metrics['stopped']} after {metrics['epochs_completed']} epochs, {metrics['steps']} steps")
    lines.append(f"best checkpoint: {result.best_checkpoint}")
    lines.append(f"last checkpoint: {result.last_checkpoint}")
    print("\n".join(lines))
