"""Google's client libraries log whole requests and responses at DEBUG (GOOGLE_SDK_PYTHON_LOGGING_SCOPE, or a
DEBUG root logger): a Secret Manager version's payload, a Cloud Run body's env values. gpuops keeps those
records but drops their payloads, on every transport logger of the clients it uses."""
from __future__ import annotations

import logging

REDACTED = "<not logged by gpuops>"


class NoPayloads(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key in ("httpRequest", "httpResponse", "request", "response"):
            value = getattr(record, key, None)
            if isinstance(value, dict) and "payload" in value:
                setattr(record, key, {**value, "payload": REDACTED})
        return True


def guard(*logger_names: str) -> None:
    """Filters attach to a logger, not to its children: name each transport logger that logs bodies."""
    for name in logger_names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, NoPayloads) for f in logger.filters):
            logger.addFilter(NoPayloads())
