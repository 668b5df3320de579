"""`tscm info`: parameters, descriptor size, input size and multiply-adds of a checkpoint or preset."""

from __future__ import annotations

import argparse
from pathlib import Path

from tscm.errors import TscmError

NAME = "info"
HELP = "Describe a model checkpoint directory or a preset: parameters per part, descriptor dim, input size, MACs."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="checkpoint directory or preset name (teacher-paper, student-paper, teacher-tiny, student-tiny)")
    parser.add_argument("--no-macs", action="store_true", help="skip counting multiply-adds (a forward pass)")


def run(args: argparse.Namespace) -> int:
    from tscm.models.checkpoint import load_checkpoint
    from tscm.models.presets import build_model, list_presets, multiply_adds_per_image, parameter_counts

    if Path(args.model).is_dir():
        model, meta = load_checkpoint(args.model)
        source = f"checkpoint {args.model} (preset {meta['preset']}, fingerprint {meta['fingerprint']})"
        if meta.get("teacher_fingerprint"):
            source += f"\nteacher fingerprint: {meta['teacher_fingerprint']}"
    elif args.model in list_presets():
        model = build_model(args.model)
        source = f"preset {args.model}"
    else:
        raise TscmError(f"{args.model!r} is neither a checkpoint directory nor a preset ({', '.join(list_presets())})")
    config = model.config
    counts = parameter_counts(model)
    print(source)
    print(f"role: {model.role}")
    if config.description:
        print(f"description: {config.description}")
    print(f"parameters: {counts.pop('total'):,}")
    for part, count in counts.items():
        print(f"  {part}: {count:,}")
    print(f"descriptor dim: {model.descriptor_dim}")
    print(f"input size: 3×{config.image_size[0]}×{config.image_size[1]} (mean {list(config.mean)}, std {list(config.std)})")
    if not args.no_macs:
        macs = multiply_adds_per_image(model)
        print(f"multiply-adds per image: {macs:,} ({macs / 1e9:.2f} G)")
    return 0
