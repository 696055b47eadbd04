"""The one exception type users see: a bad input named in one line."""

from __future__ import annotations

__all__ = ["UQError", "require"]


class UQError(ValueError):
    """A bad input or a state the user can fix.

    The message is one line that names the value, the limit and the fix; the CLI
    prints it alone (exit code 2) and never a traceback unless ``--debug``.
    """


def require(condition: bool, message: str) -> None:
    """Raise :class:`UQError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise UQError(message)
