"""The one exception type for user-facing errors.

The CLI catches it in one place and prints its message; a traceback is shown only with
``--debug``. Anything else that escapes is a bug in mailstack, not a user mistake.
"""

from __future__ import annotations

EXIT_ERROR = 1
EXIT_INVALID_CONFIG = 2


class MailstackError(Exception):
    """A mistake the user can fix: the message says what is wrong and how to fix it."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, *, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def __str__(self) -> str:
        if not self.details:
            return self.message
        return self.message + "\n" + "\n".join(f"  - {d}" for d in self.details)


class ConfigError(MailstackError):
    """mailstack.yml (or another site file) is invalid; ``details`` lists every problem."""

    exit_code = EXIT_INVALID_CONFIG
