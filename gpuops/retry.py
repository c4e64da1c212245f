"""Transient-only retries with backoff, and a read-back guard for writes that are not idempotent."""
from __future__ import annotations

import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import requests
from google.api_core import exceptions as gexc

log = logging.getLogger("gpuops.retry")
T = TypeVar("T")


class TransientHTTPError(Exception):
    """A 429/5xx or a lost connection from a client whose errors are not classified here (huggingface_hub):
    its adapter raises this instead, holding no request or response. The next wait is at least
    `retry_after_s`, the server's Retry-After."""

    def __init__(self, message: str, status: int | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.status, self.retry_after_s = status, retry_after_s


# 429/500/502/503/504 and timeouts: the request may succeed if sent again. 4xx never are.
TRANSIENT = (
    TransientHTTPError,
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,
    gexc.DeadlineExceeded,
    requests.ConnectionError,
    requests.Timeout,
)


# S3/R2 through botocore: these codes and statuses may succeed if sent again (429/5xx, S3's SlowDown).
BOTOCORE_TRANSIENT_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling"}
BOTOCORE_TRANSIENT_STATUS = {429, 500, 502, 503, 504}


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT) or _botocore_transient(exc)


def _botocore_transient(exc: BaseException) -> bool:
    # botocore is imported by whoever made the error: a process that never loaded it has none to judge.
    if "botocore" not in sys.modules:
        return False
    from botocore import exceptions as bexc

    if isinstance(exc, (bexc.ConnectionError, bexc.ReadTimeoutError, bexc.ConnectionClosedError)):
        return True  # EndpointConnectionError and ConnectTimeoutError are ConnectionErrors
    if isinstance(exc, bexc.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return error.get("Code") in BOTOCORE_TRANSIENT_CODES or status in BOTOCORE_TRANSIENT_STATUS
    return False


# What an API exception keeps of its call: google's `response` is the requests.Response (or a
# failed LRO's Operation, whose metadata is the resource), and `response.request.body` is the
# request's JSON, plaintext env values included; requests' own errors keep `request` as well.
_CALL_ATTRS = ("_response", "response", "request", "_request")


def scrub(exc: BaseException) -> BaseException:
    """Drop every request and response an exception holds, in place, and return it.

    A failed Prefect run persists its exception (pickled) under PREFECT_HOME/storage; whatever
    the exception references goes with it. Type, HTTP code, message (Google's, naming the method
    and URL), errors and details stay, so `except gexc.NotFound` still works. A google or requests
    exception also loses its chain; any other exception keeps its chain, scrubbed link by link.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, (gexc.GoogleAPIError, requests.RequestException)):
            for attr in _CALL_ATTRS:
                if attr in vars(e):
                    setattr(e, attr, None)
            todo.append(getattr(e, "_cause", None))  # RetryError: the last error it retried
            e.__cause__ = e.__context__ = None
            e.__suppress_context__ = True
        else:
            todo += [e.__cause__, e.__context__]
    return exc


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter; `attempts` counts the first try."""

    attempts: int = 5
    initial_s: float = 0.5
    maximum_s: float = 16.0

    @classmethod
    def from_env(cls) -> "Backoff":
        # Tests and the demo shorten the wait; production keeps the defaults.
        initial = float(os.environ.get("GPUOPS_RETRY_INITIAL_S", cls.initial_s))
        attempts = int(os.environ.get("GPUOPS_RETRY_ATTEMPTS", cls.attempts))
        return cls(attempts=attempts, initial_s=initial)

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.maximum_s, self.initial_s * 2**attempt))


def call(
    what: str,
    fn: Callable[[], T],
    *,
    backoff: Backoff | None = None,
    read_back: Callable[[], T | None] | None = None,
) -> T:
    """Run `fn`, retrying transient errors only.

    `read_back` guards a write that is not idempotent: after a transient failure the answer
    may have been lost while the write took effect, so before sending it again we ask the
    server; a non-None answer is the write's result and ends the loop.

    Whatever leaves is scrubbed first (see `scrub`): no exception from here holds a request body.
    """
    try:
        return _attempts(what, fn, backoff or Backoff.from_env(), read_back)
    except BaseException as exc:
        scrub(exc)
        raise  # the same object: nothing new is chained to it


# A Retry-After is honoured, capped at the Hugging Face Hub's rate-limit window (5 minutes).
MAX_RETRY_AFTER_S = 300.0


def _retry_after(exc: BaseException) -> float:
    return min(float(getattr(exc, "retry_after_s", None) or 0.0), MAX_RETRY_AFTER_S)


def _attempts(what: str, fn: Callable[[], T], backoff: Backoff, read_back: Callable[[], T | None] | None) -> T:
    for attempt in range(backoff.attempts):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc) or attempt == backoff.attempts - 1:
                raise
            wait = max(backoff.delay(attempt), _retry_after(exc))
            log.warning("%s: transient %s, retrying in %.2fs", what, type(exc).__name__, wait)
            time.sleep(wait)
            if read_back is not None:
                # The read-back is a read: retried on its own, never skipped.
                done = call(f"{what} (read-back)", read_back, backoff=backoff)
                if done is not None:
                    log.warning("%s: read-back shows the write took effect; not sending it again", what)
                    return done
    raise AssertionError("unreachable")
