"""The one error type users see.

Every failure a user can fix (bad name, no network, corrupt file, full disk)
is raised as :class:`KnowLMError` with a *hint* that says what to do next.
The CLI prints ``error: ...`` and ``hint: ...`` and exits 1; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations


class KnowLMError(Exception):
    """A user-facing failure with a one-line fix hint."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message if not self.hint else f"{self.message} ({self.hint})"
