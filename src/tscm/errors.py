"""The project's error type: raised for bad input, printed by the CLI without a traceback."""


class TscmError(Exception):
    """A user-facing error whose message names the file, field or value and what was expected.

    The CLI prints it as one line and exits with `exit_code` (2: bad input; 130: interrupted).
    """

    exit_code = 2
