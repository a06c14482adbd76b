"""The one exception type for errors a user can cause.

Bad depth, unknown model, missing or corrupt data, bad config value: each raises `UserError`
with a message that names the value and what would be valid. The CLI prints it on one line and
exits with status 2. Any other exception is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """A mistake in the user's input (name, value, path, file), described in one line."""
