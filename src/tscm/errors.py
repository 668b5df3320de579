"""The project's error type: raised for bad input, printed by the CLI without a traceback."""


class TscmError(Exception):
    """A user-facing error whose message names the file, field or value and what was expected."""
