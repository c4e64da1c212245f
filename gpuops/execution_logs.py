"""Adapter: a Cloud Run job execution's output, from the emulator's log endpoint or Cloud Logging."""
from __future__ import annotations

import json
import logging

import httpx
from google.api_core import exceptions as gexc

from gpuops import retry
from gpuops.cloudrun import CloudRun, short

log = logging.getLogger("gpuops.execution_logs")

LOGGING_LIST_URL = "https://logging.googleapis.com/v2/entries:list"
LOGGING_SCOPE = "https://www.googleapis.com/auth/logging.read"
CALL_TIMEOUT_S = 60.0
PAGE_SIZE = 1000
MAX_PAGES = 20  # a probe prints one line; a job that logs more than 20k lines is not read whole


def read_execution_output(cr: CloudRun, execution: dict, credentials=None) -> str:
    """The execution's output lines in order ("" when there are none yet)."""
    what = f"read logs of {short(execution['name'])}"
    if cr.is_emulator:
        return retry.call(what, lambda: _emulator_logs(cr.endpoint, execution["name"]), backoff=cr.backoff)
    return _cloud_logging(execution, credentials, what, cr.backoff)


def _emulator_logs(endpoint: str, name: str) -> str:
    try:
        answer = httpx.get(f"{endpoint}/emulator/v1/logs/{name}", timeout=CALL_TIMEOUT_S, trust_env=False)
    except httpx.TransportError as exc:  # retry.call knows google's transient errors, not httpx's
        raise gexc.ServiceUnavailable(f"emulator log endpoint unreachable: {exc!r}") from exc
    if answer.status_code == 404:
        log.warning("no output recorded for %s: %s", name, answer.text.strip())
        return ""
    if answer.status_code >= 400:
        raise gexc.from_http_status(answer.status_code, answer.text.strip())
    return answer.text


# --- Google Cloud Logging --------------------------------------------------------------
# Not exercised by the tests: there is no Cloud Logging stand-in here and no network. It follows
# the documented entries.list REST API; check it once against a real project before relying on it.


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


def _cloud_logging(execution: dict, credentials, what: str, backoff: retry.Backoff) -> str:
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    if credentials is None:
        credentials, _ = google.auth.default(scopes=[LOGGING_SCOPE])
    session = AuthorizedSession(credentials)
    body = {"resourceNames": ["/".join(execution["name"].split("/")[:2])],  # projects/P
            "filter": log_filter(execution), "orderBy": "timestamp asc", "pageSize": PAGE_SIZE}
    lines: list[str] = []
    for _ in range(MAX_PAGES):
        page = retry.call(what, lambda: _list_page(session, body), backoff=backoff)
        lines += [entry_text(e) for e in page.get("entries", [])]
        if not page.get("nextPageToken"):
            break
        body = {**body, "pageToken": page["nextPageToken"]}
    return "\n".join(lines) + ("\n" if lines else "")


def _list_page(session, body: dict) -> dict:
    answer = session.post(LOGGING_LIST_URL, json=body, timeout=CALL_TIMEOUT_S)
    if answer.status_code >= 400:
        raise gexc.from_http_response(answer)  # 429/5xx become the transient classes retry knows
    return answer.json()
