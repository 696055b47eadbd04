"""The one exception type users see: a bad input named in one line."""

from __future__ import annotations

__all__ = ["UQError", "UQErrors", "SpecFitError", "require", "require_fit"]


class UQError(ValueError):
    """A bad input or a state the user can fix.

    The message is one line that names the value, the limit and the fix; the CLI
    prints it alone (exit code 2) and never a traceback unless ``--debug``.
    """


class UQErrors(UQError):
    """Several bad inputs found at once (e.g. every problem of a campaign file): one line each.

    ``messages`` holds the lines in the order to show them; ``str()`` joins them with newlines,
    so ``--debug`` shows them all too. The CLI prints each as its own ``error: …`` line.
    """

    def __init__(self, messages: list[str]) -> None:
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))


def require(condition: bool, message: str) -> None:
    """Raise :class:`UQError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise UQError(message)


class SpecFitError(UQError):
    """A spec that is valid in itself but does not fit what it is applied to: the image shape, or a
    file it names (missing, unreadable, wrong shape). Known only once the run has both; the campaign
    loader, which checks specs without them, lets these through."""


def require_fit(condition: bool, message: str) -> None:
    """Raise :class:`SpecFitError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise SpecFitError(message)
