"""Checking a machine over HTTP before it gets work: does it answer, how fast, which GPU, does it really work.

Shared by every flow that rents or launches a host (vast.ai, EC2): the runbooks' lesson is that a
health check passing is not a working host, so a check ends with the project's GPU probe and a real
generation whose result is fetched. Hosts are reached directly, or through the HTTP proxy named by
`GPUOPS_HOST_PROXY` (a bastion's proxy; the EC2 stand-in's network).
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass

PROXY_ENV = "GPUOPS_HOST_PROXY"
HEALTH_PATH = "/healthz"
PROBE_PATH = "/gpu-probe"
GENERATE_PATH = "/generate"
LATENCY_SAMPLES = 5  # runbook 002 measured 5
POLL_S = 0.5


@dataclass(frozen=True)
class Latency:
    """Health-endpoint latency as sampled: every sample, and what was computed from them."""

    url: str
    samples_ms: tuple[float, ...]
    statuses: tuple[int, ...]
    warmup: bool = False  # one unmeasured request went first (connection set-up, a cold first answer)

    @property
    def mean_ms(self) -> float:
        return round(statistics.fmean(self.samples_ms), 1)

    @property
    def min_ms(self) -> float:
        return min(self.samples_ms)

    @property
    def max_ms(self) -> float:
        return max(self.samples_ms)

    @property
    def all_ok(self) -> bool:
        return all(200 <= s < 300 for s in self.statuses)

    def how(self) -> str:
        if self.warmup:
            return (f"{len(self.samples_ms)} sequential GET {self.url} after one unmeasured warm-up request, wall "
                    "time per request measured by the flow")
        return (f"{len(self.samples_ms)} sequential GET {self.url}, wall time per request measured by the "
                "flow (connection set-up included)")

    def as_dict(self) -> dict:
        return {"url": self.url, "samples_ms": list(self.samples_ms), "statuses": list(self.statuses),
                "mean_ms": self.mean_ms, "min_ms": self.min_ms, "max_ms": self.max_ms, "how": self.how()}


def judge_latency(latency: Latency, target_ms: float) -> list[str]:
    """Why the samples fail the target (empty: they pass). The mean is judged, as the runbook did."""
    if target_ms <= 0:
        raise ValueError(f"latency target must be above 0 ms, got {target_ms}")
    reasons = []
    if not latency.all_ok:
        reasons.append(f"health answered {list(latency.statuses)} at {latency.url}; every sample must be 2xx. "
                       "Fix: read the app's log on the host; do not switch traffic to it.")
    if latency.mean_ms > target_ms:
        reasons.append(f"health latency mean {latency.mean_ms} ms over {len(latency.samples_ms)} samples is above "
                       f"the {target_ms:g} ms target (min {latency.min_ms}, max {latency.max_ms}). Fix: find what "
                       "slows the app (cold caches, a remote model load) or raise the target deliberately.")
    return reasons


@dataclass(frozen=True)
class Generation:
    """One real request's answer, fetched: the runbook's "health is not enough" check."""

    ok: bool
    status: int
    seconds: float
    output: str = ""
    error: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


class HostClient:
    """HTTP to one host's app; every call bounded by `timeout_s` and measured."""

    def __init__(self, base_url: str, timeout_s: float = 10.0, proxy: str | None = None):
        import httpx  # only the flows that talk to hosts pay for it

        self.base_url = base_url.rstrip("/")
        proxy = proxy if proxy is not None else (os.environ.get(PROXY_ENV) or None)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, proxy=proxy, trust_env=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "HostClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_answering(self, bound_s: float, path: str = HEALTH_PATH) -> float | None:
        """Seconds until the host answered `path` with 2xx, or None when it did not within `bound_s`."""
        import httpx

        started = time.monotonic()
        while True:
            try:
                if self._http.get(path).is_success:
                    return round(time.monotonic() - started, 2)
            except httpx.HTTPError:
                pass  # not up yet: refused, reset or timed out are all "not answering"
            if time.monotonic() - started + POLL_S > bound_s:
                return None
            time.sleep(POLL_S)

    def latency(self, samples: int = LATENCY_SAMPLES, path: str = HEALTH_PATH, warmup: bool = False) -> Latency:
        """`samples` sequential health requests, each timed; a failed request is a 599 sample, not a crash.
        `warmup`: one request first, not measured, so a cold first answer (connection set-up, a lazy
        import in the app) is not judged as the app's latency; its failure still shows in the samples."""
        import httpx

        if samples < 1:
            raise ValueError(f"samples must be at least 1, got {samples}")
        if warmup:
            try:
                self._http.get(path)
            except httpx.HTTPError:
                pass  # the measured requests say whether the host answers
        times, statuses = [], []
        for _ in range(samples):
            started = time.perf_counter()
            try:
                status = self._http.get(path).status_code
            except httpx.HTTPError:
                status = 599
            times.append(round((time.perf_counter() - started) * 1000, 1))
            statuses.append(status)
        return Latency(self.base_url + path, tuple(times), tuple(statuses), warmup)

    def probe(self, need_gib: float | None, min_compute_cap: str = "7.0") -> dict:
        """The project's GPU probe run on the host (gpuops.gpu_probe through the app's `/gpu-probe`)."""
        params = {"min_compute_cap": min_compute_cap}
        if need_gib is not None:
            params["need_gib"] = str(need_gib)
        answer = self._http.get(PROBE_PATH, params=params)
        answer.raise_for_status()
        return answer.json()

    def generate(self, prompt: str, steps: int) -> Generation:
        """A real generation; its output is fetched and returned, so a caller can check it."""
        import httpx

        started = time.perf_counter()
        try:
            answer = self._http.post(GENERATE_PATH, json={"prompt": prompt, "steps": steps})
        except httpx.HTTPError as exc:
            return Generation(False, 599, round(time.perf_counter() - started, 3), error=type(exc).__name__)
        seconds = round(time.perf_counter() - started, 3)
        body = _json_or_empty(answer)
        if not answer.is_success or not body.get("output"):
            error = str(body.get("error") or answer.text[:200] or "no output in the answer")
            return Generation(False, answer.status_code, seconds, error=error)
        return Generation(True, answer.status_code, seconds, output=str(body["output"]))


def _json_or_empty(answer) -> dict:
    try:
        body = answer.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
