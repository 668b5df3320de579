"""The project's error type: raised for bad input, printed by the CLI without a traceback."""


class TscmError(Exception):
    """A user-facing error whose message names the file, field or value and what was expected.

    The CLI prints it as one line and exits with `exit_code` (2: bad input; 130: interrupted).
    """

    exit_code = 2


# The longest excerpt of a user's value that a message quotes: a value read from a file may be huge,
# nested or full of shared references, and a one-line error must stay one short line.
EXCERPT_CHARS = 80


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """A short, escaped, one-line rendering of `value` (a string is quoted, containers are cut short),
    made in bounded time and memory whatever `value` holds."""
    import reprlib

    class Shortener(reprlib.Repr):
        def repr_ndarray(self, array, level):  # NumPy's own repr renders every element of an object array
            return f"<{array.dtype} array of shape {tuple(array.shape)}>"

    shortener = Shortener()
    shortener.maxlevel = 2
    for name in ("maxlist", "maxtuple", "maxdict", "maxset", "maxfrozenset", "maxdeque", "maxarray"):
        setattr(shortener, name, 4)
    shortener.maxstring = shortener.maxother = shortener.maxlong = limit
    try:
        text = shortener.repr(value)
    except Exception:  # a value whose own repr fails (an int of 5000 digits): say what it is instead
        text = f"<{type(value).__name__}>"
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."
