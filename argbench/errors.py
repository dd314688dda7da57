"""The one base class of errors that mean "your input is wrong".

The CLI catches :class:`UserError` once and prints its message as one line, exit status 2, no traceback. Raise a
subclass (or :class:`UserError` itself) wherever a file, key, value or flag supplied by the user is wrong; the
message names what is wrong, where (file, key, value) and what is expected. Anything else is a bug and keeps its
traceback.
"""


class UserError(ValueError):
    """Bad user input: one line for the user, exit 2. A ``ValueError`` too, so callers that catch that still do."""
