"""The one exception type for mistakes a user can fix (bad paths, bad records, bad options).

The CLI prints such errors as a single line and exits with status 2; anything else is a bug
and keeps its traceback.
"""


class EmoSetError(ValueError):
    """A user-fixable problem. The message names the file, record or key and what to do."""
