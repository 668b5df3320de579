"""One module per `tscm` sub-command.

Each module defines `NAME` (the sub-command), `HELP` (one line), `add_arguments(parser)` and
`run(args) -> int | None`. `tscm.cli` lists them in `COMMANDS`; a command imports heavy
libraries inside `run`, so `tscm --help` stays fast. `training_options.py` holds the options
`train-teacher` and `distill` share; it is not a command itself.
"""
