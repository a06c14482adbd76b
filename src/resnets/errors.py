"""The exception types the CLI reports as one line instead of a traceback.

Bad depth, unknown model, missing or corrupt data, bad config value: each raises `UserError`
with a message that names the value and what would be valid. The CLI prints it on one line and
exits with status 2. A process of a torchrun job that loses the others raises
`DistributedFailure` (one line, status 1: torchrun restarts a group whose worker failed). Any
other exception is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """A mistake in the user's input (name, value, path, file), described in one line."""


class DistributedFailure(RuntimeError):
    """A collective failed or timed out under torchrun: another process died or hung. The
    message is one line that says where the last checkpoint is."""


def one_line_warnings(python_show):
    """A `warnings.showwarning` that prints our own warnings as one line, `warning: ...`, and
    anybody else's as `python_show` does (the `resnets` command and a study's workers use it)."""
    import sys
    from pathlib import Path

    package = Path(__file__).parent

    def show(message, category, filename, lineno, file=None, line=None):
        if package in Path(filename).parents:
            print(f"warning: {message}", file=file or sys.stderr)
        else:
            python_show(message, category, filename, lineno, file, line)

    return show


def integer(value, what: str, low: int | None = None) -> int:
    """`value` as an int if it is a whole number of an integer type (int, numpy's, a 0-d integer
    tensor: anything `operator.index` takes; never a bool, a float such as 1.5 or 1.0, or a
    string) at least `low`; else a UserError naming `what`. The one check every public
    function taking a count, an index or a seed makes, so that 1.5 is refused, not truncated."""
    import operator

    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise UserError(f"{what} must be an integer, got {value!r}") from None
    if low is not None and number < low:
        raise UserError(f"{what} must be >= {low}, got {number}")
    return number
