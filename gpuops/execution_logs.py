"""Adapter: a Cloud Run job execution's output, read through Cloud Logging v2 `entries:list`.

One code path for Google and the emulator (which serves `POST /v2/entries:list` on its own base URL);
only the endpoint and the credentials differ.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Callable, TypeVar

from google.api_core import exceptions as gexc

from gpuops import retry
from gpuops.cloudrun import CloudRun, short

T = TypeVar("T")
log = logging.getLogger("gpuops.execution_logs")

LOGGING_ENV = "GPUOPS_LOGGING_API"
GOOGLE_LOGGING = "https://logging.googleapis.com"
LOGGING_SCOPE = "https://www.googleapis.com/auth/logging.read"
CALL_TIMEOUT_S = 60.0
PAGE_SIZE = 1000  # entries.list's maximum
MAX_PAGES = 20  # a probe prints one line; a job that logs more than 20k lines is not read whole


def logging_endpoint(cr: CloudRun) -> str:
    """`GPUOPS_LOGGING_API` wins; else the emulator's own base URL; else Google's Logging API."""
    return (os.environ.get(LOGGING_ENV) or (cr.endpoint if cr.is_emulator else None) or GOOGLE_LOGGING).rstrip("/")


def log_filter(execution: dict) -> str:
    parts = ['resource.type="cloud_run_job"',
             f'labels."run.googleapis.com/execution_name"="{short(execution["name"])}"']
    if execution.get("createTime"):  # bounds the scan: an execution logs nothing before it exists
        parts.append(f'timestamp>="{execution["createTime"]}"')
    return " AND ".join(parts)


def entry_text(entry: dict) -> str:
    # Cloud Run turns a JSON stdout line into jsonPayload: print it back as the one line it was.
    if "jsonPayload" in entry:
        return json.dumps(entry["jsonPayload"], sort_keys=True)
    return str(entry.get("textPayload", "")).rstrip("\n")


# Cloud Logging ingests a few seconds behind a job: on Google, read again while nothing is there yet.
LOG_READS_ON_GOOGLE, LOG_READ_PAUSE_S = 6, 10.0


def read_once_ingested(cr: CloudRun, read: Callable[[], T], found: Callable[[T], bool]) -> T:
    """`read()` until `found` says it holds what was looked for, or the reads run out (the emulator's
    log is complete when the execution ends: one read there)."""
    import time

    reads = 1 if cr.is_emulator else LOG_READS_ON_GOOGLE
    for attempt in range(reads):
        value = read()
        if found(value) or attempt == reads - 1:
            return value
        time.sleep(LOG_READ_PAUSE_S)
    return value


def read_execution_output(cr: CloudRun, execution: dict, credentials=None) -> str:
    """The execution's output lines in order ("" when there are none yet)."""
    reader = _Reader(cr, execution, credentials)
    lines: list[str] = []
    page: dict = {"nextPageToken": None}
    for _ in range(MAX_PAGES):
        page = reader.page("timestamp asc", PAGE_SIZE, page.get("nextPageToken"))
        lines += [entry_text(e) for e in page.get("entries", [])]
        if not page.get("nextPageToken"):
            break
    else:
        log.warning("output of %s is longer than %d entries: read the first ones only",
                    short(execution["name"]), MAX_PAGES * PAGE_SIZE)
    return "\n".join(lines) + ("\n" if lines else "")


def read_log_tail(cr: CloudRun, execution: dict, lines: int = 20, credentials=None) -> list[str]:
    """The execution's last `lines` output lines, oldest first: read newest first, then reversed."""
    reader = _Reader(cr, execution, credentials)
    newest: list[str] = []
    token = None
    while len(newest) < lines:
        page = reader.page("timestamp desc", min(lines - len(newest), PAGE_SIZE), token)
        newest += [entry_text(e) for e in page.get("entries", [])]
        token = page.get("nextPageToken")
        if not token:
            break
    return newest[::-1]


class _Reader:
    """entries:list pages of one execution's entries."""

    def __init__(self, cr: CloudRun, execution: dict, credentials) -> None:
        self.endpoint = logging_endpoint(cr)
        self.session = _session(self.endpoint, credentials)
        self.backoff = cr.backoff
        self.what = f"read logs of {short(execution['name'])}"
        project = execution["name"].split("/")[1]  # projects/P/locations/...
        self.body = {"resourceNames": [f"projects/{project}"], "filter": log_filter(execution)}

    def page(self, order: str, size: int, token: str | None) -> dict:
        body = {**self.body, "orderBy": order, "pageSize": size, **({"pageToken": token} if token else {})}
        return retry.call(self.what, lambda: self._post(body), backoff=self.backoff)

    def _post(self, body: dict) -> dict:
        answer = self.session.post(f"{self.endpoint}/v2/entries:list", json=body, timeout=CALL_TIMEOUT_S)
        if answer.status_code >= 400:
            raise gexc.from_http_response(answer)  # 429/5xx become the transient classes retry knows
        return answer.json()


def _session(endpoint: str, credentials):
    """Anonymous on an http:// endpoint (the emulator, never proxied); Google's credentials elsewhere."""
    import google.auth
    from google.auth.credentials import AnonymousCredentials
    from google.auth.transport.requests import AuthorizedSession

    local = endpoint.startswith("http://")
    if local:
        credentials = AnonymousCredentials()
    elif credentials is None:
        credentials, _ = google.auth.default(scopes=[LOGGING_SCOPE])
    session = AuthorizedSession(credentials)
    session.trust_env = not local
    return session
