"""Error types and how the CLI reports them: one line ``error: ...`` (no traceback), exit status 2 for
bad user input, 1 for work that started but could not finish."""
from __future__ import annotations

import functools


class UserInputError(ValueError):
    """Bad input from the user: an option, a name, a file or a field. The message says what and where."""


class DataError(UserInputError):
    """A dataset file is missing or malformed; the message names the file, line or field."""


class RunFailure(RuntimeError):
    """Work that was started could not finish; ``what`` prefixes the CLI message."""

    what = ""


class TrainingError(RunFailure):
    """Training cannot go on (for example a NaN loss); the message names the run, epoch and batch."""

    what = "training failed: "


def report_errors(fn):
    """Decorator for CLI commands: user-input errors (unknown plugin names included) exit 2, run
    failures exit 1, each printed as one ``error: ...`` line."""
    import click

    from fusionbench.registry import UnknownPluginError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UserInputError, UnknownPluginError) as err:
            click.echo(f"error: {err}", err=True)
            raise SystemExit(2)
        except RunFailure as err:
            click.echo(f"error: {err.what}{err}", err=True)
            raise SystemExit(1)

    return wrapper
