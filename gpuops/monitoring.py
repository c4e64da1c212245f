"""Adapter: a canary window's figures from Cloud Monitoring (Cloud Run request_count and request_latencies)."""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from google.api_core import exceptions as gexc

from gpuops import retry
from gpuops.traffic import Gates, Window

log = logging.getLogger("gpuops.monitoring")

ENDPOINT_ENV = "GPUOPS_MONITORING_API"
GOOGLE_ENDPOINT = "https://monitoring.googleapis.com"
MONITORING_SCOPE = "https://www.googleapis.com/auth/monitoring.read"
REQUEST_COUNT = "run.googleapis.com/request_count"
REQUEST_LATENCIES = "run.googleapis.com/request_latencies"
# Cloud Run samples these metrics every 60 s and a sample becomes visible up to 180 s later: on Google
# the query waits that long after the window, or it would miss the window's last minutes.
INGESTION_DELAY_S = 180.0
MIN_ALIGNMENT_S = 60  # Monitoring refuses a shorter alignment period
CALL_TIMEOUT_S = 60.0
MAX_PAGES = 10

Traffic = Callable[[str, float], Any]  # (tag URL, window seconds): sends traffic for the window


def resolve_endpoint(endpoint: str | None) -> str:
    """`GPUOPS_MONITORING_API` wins, then `endpoint`, then Google."""
    return (os.environ.get(ENDPOINT_ENV) or endpoint or GOOGLE_ENDPOINT).rstrip("/")


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def revision_filter(metric: str, service: str, revision: str) -> str:
    return (f'metric.type = "{metric}" AND resource.type = "cloud_run_revision" AND '
            f'resource.labels.service_name = "{service}" AND resource.labels.revision_name = "{revision}"')


def count_params(service: str, revision: str, start: float, end: float) -> list[tuple[str, str]]:
    """Requests of the revision in [start, end], summed per response_code_class."""
    return [("filter", revision_filter(REQUEST_COUNT, service, revision)), *_interval(start, end),
            ("aggregation.perSeriesAligner", "ALIGN_DELTA"), ("aggregation.crossSeriesReducer", "REDUCE_SUM"),
            ("aggregation.groupByFields", "metric.labels.response_code_class")]


def latency_params(service: str, revision: str, start: float, end: float) -> list[tuple[str, str]]:
    """The revision's p95 latency in [start, end]; one series per response code, not reduced."""
    return [("filter", revision_filter(REQUEST_LATENCIES, service, revision)), *_interval(start, end),
            ("aggregation.perSeriesAligner", "ALIGN_PERCENTILE_95")]


def _interval(start: float, end: float) -> list[tuple[str, str]]:
    # One alignment period covering the whole window, so each series has one point.
    period = max(MIN_ALIGNMENT_S, math.ceil(end - start))
    return [("interval.startTime", rfc3339(start)), ("interval.endTime", rfc3339(end)),
            ("aggregation.alignmentPeriod", f"{period}s")]


def counts_by_class(body: dict) -> dict[str, int]:
    """{"2xx": 40, "5xx": 2} from a REDUCE_SUM answer grouped by response_code_class."""
    counts: dict[str, int] = {}
    for series in body.get("timeSeries", []):
        code_class = series.get("metric", {}).get("labels", {}).get("response_code_class", "")
        total = sum(int(p["value"].get("int64Value", 0)) for p in series.get("points", []))
        counts[code_class] = counts.get(code_class, 0) + total  # int64 values are strings in JSON
    return counts


def worst_p95(body: dict) -> float | None:
    """The highest p95 of any series and period: never below the p95 of all the requests together."""
    values = [float(p["value"]["doubleValue"]) for s in body.get("timeSeries", []) for p in s.get("points", [])
              if "doubleValue" in p.get("value", {})]
    return max(values) if values else None


@dataclass
class CloudMonitoringRequests:
    """Cloud Monitoring's figures of one Cloud Run revision over a canary window.

    `traffic`, when given, runs during the window (the canary sends probe requests so that the
    candidate has traffic to measure); the window lasts `window_s` either way.
    """

    project: str
    service: str
    endpoint: str | None = None
    credentials: Any = None
    traffic: Traffic | None = None
    ingestion_delay_s: float | None = None  # None: INGESTION_DELAY_S on Google, 0 for the emulation
    backoff: retry.Backoff = field(default_factory=retry.Backoff.from_env)
    _session: Any = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return resolve_endpoint(self.endpoint)

    @property
    def is_emulation(self) -> bool:
        return self.url.startswith("http://")

    def observe(self, url: str, window_s: float, gates: Gates, revision: str | None = None) -> Window:
        if not revision:
            raise ValueError("Cloud Monitoring needs the candidate revision's name to observe it")
        started = time.time()
        if self.traffic is not None:
            self.traffic(url, window_s)
        time.sleep(max(0.0, started + window_s - time.time()))
        ended = time.time()
        delay = self.ingestion_delay_s if self.ingestion_delay_s is not None else (
            0.0 if self.is_emulation else INGESTION_DELAY_S)
        if delay:
            log.info("waiting %.0f s for Cloud Monitoring to ingest the window", delay)
            time.sleep(delay)
        counts = counts_by_class(self.list_time_series(count_params(self.service, revision, started, ended)))
        p95 = worst_p95(self.list_time_series(latency_params(self.service, revision, started, ended)))
        return Window(requests=sum(counts.values()), errors=counts.get("5xx", 0), reported_p95_ms=p95,
                      source=self.describe(revision, ended - started), ended_at=ended)

    def describe(self, revision: str, seconds: float) -> str:
        where = f"gpuops Monitoring emulation at {self.url}, not Google" if self.is_emulation else self.url
        return f"Cloud Monitoring request_count and request_latencies of {revision} over {seconds:.1f} s ({where})"

    def list_time_series(self, params: list[tuple[str, str]]) -> dict:
        """projects.timeSeries.list, every page; 429 and 5xx retried."""
        url = f"{self.url}/v3/projects/{self.project}/timeSeries"
        merged: dict = {}
        token = ""
        for _ in range(MAX_PAGES):
            page_params = params + [("pageToken", token)] if token else params
            page = retry.call("Cloud Monitoring timeSeries.list", lambda: self._get(url, page_params),
                              backoff=self.backoff)
            merged.setdefault("timeSeries", []).extend(page.get("timeSeries", []))
            token = page.get("nextPageToken", "")
            if not token:
                break
        return merged

    def _get(self, url: str, params: list[tuple[str, str]]) -> dict:
        answer = self.session().get(url, params=params, timeout=CALL_TIMEOUT_S)
        if answer.status_code >= 400:
            raise gexc.from_http_response(answer)  # 429/5xx become the transient classes retry knows
        return answer.json()

    def session(self):
        """A requests session: plain for an http:// emulation, else with Google credentials (ADC by default)."""
        if self._session is None:
            self._session = _plain_session() if self.is_emulation else _google_session(self.credentials)
        return self._session


def _plain_session():
    import requests

    session = requests.Session()
    session.trust_env = False  # loopback: no proxy from the environment
    return session


def _google_session(credentials):
    import google.auth
    from google.auth.credentials import with_scopes_if_required
    from google.auth.transport.requests import AuthorizedSession

    if credentials is None:
        credentials, _ = google.auth.default(scopes=[MONITORING_SCOPE])
    return AuthorizedSession(with_scopes_if_required(credentials, [MONITORING_SCOPE]))
