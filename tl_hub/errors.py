"""User-facing errors.

Every mistake a user can make (a wrong model id, a folder without images, a bad
argument) is reported as a :class:`TlHubError` whose message says what was wrong
and what to do.  The CLI prints it as one line, without a traceback.
"""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), for one-line errors."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class TlHubError(Exception):
    """An error caused by user input; the message names the problem and the fix."""


class ConfigError(TlHubError, ValueError):
    """An invalid recipe or training setting."""


class DataError(TlHubError, ValueError):
    """A dataset that tl-hub cannot train or evaluate on as given."""


class ModelError(TlHubError, OSError):
    """A model that cannot be loaded or adapted."""


class OutputError(TlHubError, OSError):
    """An output location that cannot be written safely."""


class TrainingError(TlHubError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN or infinite)."""
