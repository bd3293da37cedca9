"""Errors caused by user input. The CLI prints their message (no traceback) and exits with status 2."""


class UserInputError(ValueError):
    """Bad input from the user: an option, a name, a file or a field. The message says what and where."""


class DataError(UserInputError):
    """A dataset file is missing or malformed; the message names the file, line or field."""


class TrainingError(RuntimeError):
    """Training cannot go on (for example a NaN loss); the message names the run, epoch and batch."""
