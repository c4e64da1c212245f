"""A canary metrics source that works anywhere: probe requests the flow itself sends to a tag URL."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from gpuops.probe_auth import ProbeAuth, explain_refusal
from gpuops.traffic import Gates, Window


class MetricsSource(Protocol):
    """Where a canary window's figures come from (probe traffic here; Cloud Monitoring on Google)."""

    def observe(self, url: str, window_s: float, gates: Gates, revision: str | None = None) -> Window:
        """The candidate's figures over one window; `url` is its tag URL, `revision` its name."""
        ...


@dataclass
class ProbeTraffic:
    """Send `requests` requests spread over the window; anything but a 2xx/3xx answer is an error."""

    requests: int = 30
    path: str = "/generate"
    method: str = "POST"
    body: dict | None = field(default_factory=lambda: {"prompt": "canary probe", "steps": 200})
    timeout_s: float = 30.0
    stop_early: bool = True  # end the window once its errors already break the limit
    # Credentials for a protected service (ID token, API key header); None sends none, as before.
    auth: ProbeAuth | None = field(default=None, repr=False)

    def observe(self, url: str, window_s: float, gates: Gates, revision: str | None = None) -> Window:
        # `revision` is not needed: the tag URL reaches the candidate alone.
        return self._windows([url], window_s, gates)[0]

    def observe_pair(self, candidate_url: str, stable_url: str, window_s: float,
                     gates: Gates) -> tuple[Window, Window]:
        """The same requests to the candidate and to stable, interleaved (who goes first alternates),
        so that both samples share the window's conditions and differ only by the release."""
        candidate, stable = self._windows([candidate_url, stable_url], window_s, gates)
        return candidate, stable

    def _windows(self, urls: list[str], window_s: float, gates: Gates) -> list[Window]:
        seen = [_Sample() for _ in urls]
        interval = window_s / self.requests if self.requests else 0
        # Past this many candidate errors the window can only fail: stop and say so at once.
        doomed_at = int(gates.max_error_rate * self.requests) + 1
        started = time.monotonic()
        with httpx.Client(timeout=self.timeout_s) as client:
            for i in range(self.requests):
                order = range(len(urls)) if i % 2 == 0 else reversed(range(len(urls)))
                for k in order:
                    seen[k].add(*self._one(client, urls[k]))
                if self.stop_early and seen[0].errors >= doomed_at:
                    break
                wait = started + (i + 1) * interval - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
        return [sample.window(self._source(url, sample)) for url, sample in zip(urls, seen)]

    def _source(self, url: str, sample: "_Sample") -> str:
        source = f"{sample.sent} probe requests {self.method} {url}{self.path}"
        if self.auth is not None:
            source += f" with {self.auth.describe()}"
        if sample.refused:
            source += f"; refused: {sample.refused}"
        return source

    def _one(self, client: httpx.Client, url: str) -> tuple[bool, float, str | None]:
        """One timed request: whether it answered below 400, its latency, and which credential a
        401/403 asked for (None when it was not refused)."""
        # Read per request: a cached ID token is refreshed when a long window outlives it.
        headers = self.auth.headers_for(url) if self.auth is not None else None
        start = time.perf_counter()
        try:
            response = client.request(self.method, url.rstrip("/") + self.path, headers=headers,
                                      json=self.body if self.method != "GET" else None)
            # Our own known-good request: a 4xx (auth refused, route gone) is no more a pass than a 5xx.
            ok = response.status_code < 400
        except httpx.HTTPError:
            return False, (time.perf_counter() - start) * 1000, None
        ms = (time.perf_counter() - start) * 1000
        refused = None if ok else explain_refusal(self.auth, url, response.status_code,
                                                  response.headers.get("www-authenticate", ""), response.text[:500])
        return ok, ms, refused


@dataclass
class _Sample:
    """What one side of a window saw, request by request."""

    sent: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    first_error_at: float | None = None
    refused: str | None = None  # the first refusal's explanation: which credential was asked for

    def add(self, ok: bool, ms: float, refused: str | None = None) -> None:
        self.refused = self.refused or refused
        self.sent += 1
        self.latencies.append(ms)
        if not ok:
            self.errors += 1
            if self.first_error_at is None:
                self.first_error_at = time.time()

    def window(self, source: str) -> Window:
        return Window(requests=self.sent, errors=self.errors, latencies_ms=tuple(self.latencies), source=source,
                      first_error_at=self.first_error_at, ended_at=time.time(), refused=self.refused)
