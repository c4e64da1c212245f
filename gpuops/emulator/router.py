"""The emulator's front end for service URLs: picks a revision by the traffic split and proxies to it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from .cloudrun_state import EMULATOR_LABEL, CloudRunState
from .cloudrun_common import Name
from .monitoring_api import Served
from .serving import EXITED, FAILED_TO_START, NOT_STARTED, READY, STARTING

REVISION_HEADER = "X-Gpuops-Revision"
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade",
}
# Recomputed by httpx on the way in and by the server on the way out; httpx hands back the body
# decoded, so its content-encoding no longer applies.
DROP_REQUEST = HOP_BY_HOP | {"host", "content-length"}
DROP_RESPONSE = HOP_BY_HOP | {"content-length", "content-encoding", "date", "server"}


class RouteError(Exception):
    def __init__(self, status: int, message: str, revision: str = ""):
        super().__init__(message)
        self.status, self.message, self.revision = status, message, revision


@dataclass
class Target:
    revision: str  # short name
    port: int
    timeout_s: float


class WeightedRoundRobin:
    """Smooth weighted round robin (nginx's): exact shares over any window of sum(weights) picks."""

    def __init__(self) -> None:
        self._state: dict[str, tuple[tuple, list[int]]] = {}
        self._lock = threading.Lock()

    def pick(self, key: str, weights: list[tuple[str, int]]) -> str:
        split = tuple(weights)
        with self._lock:
            known, current = self._state.get(key, ((), []))
            if known != split:
                current = [0] * len(split)  # a new split starts a fresh cycle
            total = sum(w for _, w in split)
            for i, (_, weight) in enumerate(split):
                current[i] += weight
            best = max(range(len(split)), key=lambda i: current[i])
            current[best] -= total
            self._state[key] = (split, current)
            return split[best][0]


class Router:
    """Maps /emulated/{project}/{location}/[{tag}---]{service}/... to a running revision process."""

    def __init__(self, state: CloudRunState):
        self.state = state
        self.rr = WeightedRoundRobin()

    def resolve(self, project: str, location: str, host: str) -> Target:
        tag, _, service_id = host.partition("---") if "---" in host else ("", "", host)
        revision = self._pick(f"projects/{project}/locations/{location}/services/{service_id}", tag)
        serving = self.state.serving
        if serving is None:
            raise RouteError(503, f"{EMULATOR_LABEL}: started without run_workloads=True, so revision "
                                  f"'{revision}' has no local process", revision)
        full = f"projects/{project}/locations/{location}/services/{service_id}/revisions/{revision}"
        # A revision still starting is waited for, as Cloud Run holds requests during a cold start.
        instance = serving.instance(full, wait_s=serving.startup_timeout_s)
        if instance is None:
            raise RouteError(503, f"revision '{revision}' has no local process (it serves no traffic)",
                             revision)
        if instance.state == READY:
            return Target(revision, instance.port, instance.request_timeout_s)
        why = {
            NOT_STARTED: instance.reason,
            FAILED_TO_START: f"revision '{revision}' failed to start: {instance.reason}",
            EXITED: f"revision '{revision}': {instance.reason}",
            STARTING: f"revision '{revision}' is still starting",
        }[instance.state]
        raise RouteError(503, why, revision)

    def record(self, project: str, location: str, host: str, revision: str, status: int,
               started: float) -> None:
        """Note a served request, as Cloud Run reports it to Cloud Monitoring (request count, latency)."""
        service_id = host.partition("---")[2] if "---" in host else host
        latency_ms = (time.perf_counter() - started) * 1000
        self.state.served.add(Served(time.time(), project, location, service_id, revision, status, latency_ms))

    def _pick(self, service: str, tag: str) -> str:
        with self.state.lock:
            svc = self.state.services.services.get(service)
            if svc is None:
                raise RouteError(404, f"{EMULATOR_LABEL}: no service '{service}'")
            latest = Name.parse(svc.latest_ready_revision).id if svc.latest_ready_revision else ""
            if tag:
                target = next((t for t in svc.traffic_statuses if t.tag == tag), None)
                if target is None:
                    raise RouteError(404, f"{EMULATOR_LABEL}: service '{service}' has no tag '{tag}'")
                return target.revision or latest
            weights: dict[str, int] = {}
            for target in svc.traffic_statuses:
                if target.percent > 0:
                    name = target.revision or latest
                    weights[name] = weights.get(name, 0) + target.percent
        if not weights:
            raise RouteError(503, f"service '{service}' sends no traffic to any revision")
        return self.rr.pick(service, sorted(weights.items()))


def _forward_headers(request: Request) -> list[tuple[str, str]]:
    return [(k, v) for k, v in request.headers.items() if k.lower() not in DROP_REQUEST]


async def proxy(router: Router, request: Request) -> Response:
    """The /emulated/... endpoint: forward, then record what the revision answered (for Monitoring)."""
    started = time.perf_counter()
    # The raw path, so an encoded character in the remainder (%2F) reaches the app unchanged.
    path = request.scope.get("raw_path", b"").decode("latin-1") or request.url.path
    parts = path.split("/", 5)  # "", "emulated", project, location, host, rest
    if len(parts) < 5 or not all(parts[2:5]):
        return _error(404, f"{EMULATOR_LABEL}: expected /emulated/PROJECT/LOCATION/SERVICE/...")
    response = await _forward(router, request, parts)
    revision = (response.headers.getlist(REVISION_HEADER) or [""])[-1]  # ours comes last
    if revision:  # a request no revision took (no such service or tag) reaches no revision's metrics
        router.record(parts[2], parts[3], parts[4], revision, response.status_code, started)
    return response


async def _forward(router: Router, request: Request, parts: list[str]) -> Response:
    """Resolve in a worker thread (it may wait for a cold start), then forward with httpx."""
    try:
        target = await run_in_threadpool(router.resolve, parts[2], parts[3], parts[4])
    except RouteError as exc:
        return _error(exc.status, exc.message, exc.revision)
    url = f"http://127.0.0.1:{target.port}/{parts[5] if len(parts) > 5 else ''}"
    if request.url.query:
        url += f"?{request.url.query}"
    body = await request.body()
    try:
        # Plain HTTP to loopback: no TLS context to build (slow) and no proxy settings from the env.
        async with httpx.AsyncClient(timeout=target.timeout_s, verify=False, trust_env=False) as client:
            answer = await client.request(request.method, url, content=body,
                                          headers=_forward_headers(request))
    except httpx.TimeoutException:
        return _error(504, f"revision '{target.revision}' did not answer within {target.timeout_s:g} s",
                      target.revision)
    except httpx.TransportError as exc:
        return _error(503, f"revision '{target.revision}' is not answering on port {target.port}: {exc!r}",
                      target.revision)
    response = Response(content=answer.content, status_code=answer.status_code)
    response.raw_headers.extend(
        (k.encode("latin-1"), v.encode("latin-1"))
        for k, v in answer.headers.multi_items() if k.lower() not in DROP_RESPONSE
    )
    response.raw_headers.append((REVISION_HEADER.lower().encode(), target.revision.encode()))
    return response


def _error(status: int, message: str, revision: str = "") -> Response:
    headers = {"X-Gpuops-Emulator": "cloud-run"}
    if revision:
        headers[REVISION_HEADER] = revision
    return PlainTextResponse(message + "\n", status_code=status, headers=headers)
