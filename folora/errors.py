"""Errors meant for the person running folora, not for a stack trace.

Anything the user can fix (a bad config value, a missing data file, a model that is not available offline,
a diverging loss) is raised as `FoloraError` with a message that says what was wrong and how to fix it.
The entry point prints the message alone and exits non-zero.
"""


class FoloraError(Exception):
    """A problem with the user's input or environment, explained in plain words."""


def require(condition: bool, message: str) -> None:
    """Raise `FoloraError(message)` unless `condition` holds."""
    if not condition:
        raise FoloraError(message)
