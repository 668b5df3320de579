"""`tscm import-official`: convert a published TSCM checkpoint (*.pth.tar) into a native checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from tscm.errors import TscmError

NAME = "import-official"
HELP = "Import a published TSCM checkpoint (*.pth.tar) as a native checkpoint directory."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="published checkpoint file (*.pth.tar)")
    parser.add_argument("--role", required=True, choices=["teacher", "student"], help="which network the file holds")
    parser.add_argument("--out", required=True, help="output checkpoint directory (new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")


def run(args: argparse.Namespace) -> int:
    from tscm.fileio import atomic_group, check_output_folder
    from tscm.models.checkpoint import META_FILE, WEIGHTS_FILE, save_checkpoint
    from tscm.models.official import load_official_with_report

    out = Path(args.out)
    # Before the published file is read: --out is a folder (or new), not the input, and its files writable.
    check_output_folder("--out", out, (WEIGHTS_FILE, META_FILE), {"the published checkpoint": args.checkpoint})
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise TscmError(f"--out {out}: exists and is not an empty folder; choose a new folder or pass --overwrite")
    model, report = load_official_with_report(args.checkpoint, args.role)
    extra = {
        "imported_from": Path(args.checkpoint).name,
        "published_epoch": report.epoch,
        "published_step": report.step,
        "published_keys_mapped": len(report.mapped),
        "published_keys_aliased": len(report.aliases),
        "published_keys_dropped": len(report.dropped),
    }
    with atomic_group():  # weights and metadata together: a failure keeps an --overwrite'd checkpoint whole
        meta = save_checkpoint(args.out, model, model.config, extra=extra)
    print(
        f"imported {args.role} from {args.checkpoint}: {len(report.mapped)} keys mapped, "
        f"{len(report.aliases)} aliases resolved, {len(report.dropped)} unused keys dropped"
    )
    print(f"wrote {args.out} (preset {meta['preset']}, fingerprint {meta['fingerprint']})")
    return 0
