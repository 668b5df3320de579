"""The `tscm` command: thin sub-commands that call the library."""

from __future__ import annotations

import argparse
import importlib
import sys

from tscm import __version__
from tscm.config.option_checks import check_option_limits
from tscm.errors import TscmError

# Sub-command modules under tscm.commands, in the order `tscm --help` lists them.
COMMANDS = [
    "check_data",
    "evaluate",
    "visualize",
    "info",
    "import_official",
    "train_teacher",
    "distill",
    "demo",
    "ablation",
    "synth",
    "export",
    "export_descriptors",
    "card",
    "index",
    "query",
    "loop_closure",
    "data",
    "bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tscm", description="Visual place recognition by teacher-student cross-metric distillation."
    )
    parser.add_argument("--version", action="version", version=f"tscm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMANDS:
        module = importlib.import_module(f"tscm.commands.{module_name}")
        command = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_option_limits(args)
        return int(args._run(args) or 0)
    except TscmError as error:
        if args.debug:
            raise
        print(f"tscm {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:
        # A full disk, a read-only folder, a vanished file: one line naming it (the old output is kept:
        # every write goes through a temporary file).
        if args.debug:
            raise
        where = f"{error.filename}: " if getattr(error, "filename", None) else ""
        print(f"tscm {args.command}: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"tscm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
