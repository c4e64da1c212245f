"""The kinds of failure an operator must tell apart (CLI exit 2, 1 and 3)."""
from __future__ import annotations


class BadInput(ValueError):
    """Input that cannot be acted on: the message names the field and the fix (exit 2)."""


class CheckFailed(RuntimeError):
    """The flow ran and a check said no: a guardrail, a gate, a smoke test (exit 1)."""

    def __init__(self, message: str, details: list | None = None):
        super().__init__(message)
        self.details = details or []


class CouldNotRun(RuntimeError):
    """gpuops could not do its job (an internal error, an API unreachable after retries) (exit 3).

    The message says what was left: back in the safe state, or resumable and how.
    """
