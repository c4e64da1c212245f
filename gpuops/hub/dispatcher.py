"""From the outbox to Prefect: each accepted task becomes one flow run, at a bounded rate.

Accepting never waits for Prefect (the outbox is the hub's own); this thread claims tasks, starts their
deployment with `run_deployment(timeout=0)` and the task id as idempotency key, so a dispatch retried
after a crash (run created, "dispatched" not yet written) finds the same flow run instead of a second
one. While Prefect is slow or down the task waits and is tried again with a capped backoff: it is
never dead-lettered for that. Only what Prefect refuses for good (no such deployment, parameters it
rejects) is dead-lettered, with the reason.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

from gpuops import retry

log = logging.getLogger("gpuops.hub.dispatcher")
CLOUD_RUN_GPU_POOL = "gpuops-cloud-run-gpu"  # deployments/work_pools/gpuops-cloud-run-gpu.json
CPU_RATE_LIMIT = "gpuops-cpu-route"  # the runbook's Cloud Tasks queue: --max-dispatches-per-second=5


@dataclass
class DispatchSettings:
    rate_per_s: float = 10.0  # all routes together; Prefect on SQLite makes ~11 runs/s (measured)
    cpu_per_s: float = 5.0
    batch: int = 20
    lease_s: float = 120.0
    idle_wait_s: float = 1.0
    backlog_pool: str | None = CLOUD_RUN_GPU_POOL  # whose backlog decides GKE overflow; None: not read
    backlog_every_s: float = 10.0
    # Waits between dispatch attempts while Prefect is down: full jitter, capped at a minute; no attempt cap.
    backoff: retry.Backoff = field(default_factory=lambda: retry.Backoff(initial_s=0.5, maximum_s=60.0))


class Dispatcher:
    """One per hub process; several processes may share one outbox (each task goes to one of them)."""

    def __init__(self, outbox, settings: DispatchSettings | None = None, owner: str | None = None):
        self.outbox, self.settings = outbox, settings or DispatchSettings()
        self.owner = owner or f"hub-{uuid.uuid4().hex[:8]}"
        self.cloud_run_backlog: int | None = None  # unknown until read: no overflow on a guess
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._last_dispatch = 0.0
        self._backlog_read_at = 0.0
        self._cpu_limit_ready = False

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> "Dispatcher":
        self._thread = threading.Thread(target=self._loop, name=f"gpuops-dispatcher-{self.owner}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def nudge(self) -> None:
        """A task was accepted: look now rather than at the next idle tick."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._refresh_backlog()
                done = self.run_once()
            except Exception as exc:  # noqa: BLE001  the loop outlives any one failure; tasks stay queued
                log.warning("dispatch round failed (%s); tasks stay queued", type(exc).__name__)
                done = 0
            if not done:
                self._wake.wait(self.settings.idle_wait_s)
                self._wake.clear()

    # --- one round -----------------------------------------------------------------------------

    def run_once(self) -> int:
        """Claim a batch and dispatch it; the number of tasks handled."""
        tasks = self.outbox.claim(self.owner, self.settings.batch, self.settings.lease_s)
        for task in tasks:
            if self._stop.is_set():
                break  # our leases expire and another hub (or our restart) takes the rest
            self._pace()
            self.dispatch(task)
        return len(tasks)

    def dispatch(self, task) -> str:
        """Start the task's flow run: "dispatched", "retry" or "dead-lettered"."""
        from prefect.exceptions import ObjectNotFound

        try:
            if task.route == "cpu":
                self._take_cpu_slot()
            flow_run_id = self._start_run(task)
        except ObjectNotFound:
            self.outbox.dead_letter(task.id, self.owner, f"deployment {task.deployment} not found in Prefect "
                                    "(Fix: `prefect deploy` it; the request is kept in the dead-letter record)")
            return "dead-lettered"
        except Exception as exc:  # noqa: BLE001  classified below; nothing of the request goes to a log
            if _refused_for_good(exc):
                self.outbox.dead_letter(task.id, self.owner, f"Prefect refused the run: {_summary(exc)}")
                return "dead-lettered"
            delay = self.settings.backoff.delay(task.attempts + 1)
            self.outbox.retry_later(task.id, self.owner, f"Prefect unavailable: {_summary(exc)}", delay)
            return "retry"
        self.outbox.dispatched(task.id, self.owner, flow_run_id)
        return "dispatched"

    def _start_run(self, task) -> str:
        from prefect.deployments import run_deployment

        flow_run = run_deployment(task.deployment, parameters=task.parameters, timeout=0, as_subflow=False,
                                  idempotency_key=task.id, tags=["gpuops-hub", f"route:{task.route or task.kind}"])
        return str(flow_run.id)

    def _pace(self) -> None:
        """At most `rate_per_s` creates: Prefect on SQLite answers 503 to bursts."""
        gap = 1.0 / self.settings.rate_per_s - (time.monotonic() - self._last_dispatch)
        if gap > 0:
            time.sleep(gap)
        self._last_dispatch = time.monotonic()

    def _take_cpu_slot(self) -> None:
        """The CPU route's 5/s, as a Prefect global concurrency limit shared by every hub replica."""
        from prefect.concurrency.sync import rate_limit

        if not self._cpu_limit_ready:
            ensure_rate_limit(CPU_RATE_LIMIT, self.settings.cpu_per_s)
            self._cpu_limit_ready = True
        rate_limit(CPU_RATE_LIMIT, occupy=1, timeout_seconds=30)

    def _refresh_backlog(self) -> None:
        if not self.settings.backlog_pool or time.monotonic() - self._backlog_read_at < self.settings.backlog_every_s:
            return
        self._backlog_read_at = time.monotonic()
        from prefect.client.orchestration import get_client

        from gpuops.work_pool_backlog import pool_backlog

        try:
            with get_client(sync_client=True) as client:
                self.cloud_run_backlog = pool_backlog(client, self.settings.backlog_pool)
        except Exception:  # noqa: BLE001  unknown backlog means no overflow, not a failed hub
            self.cloud_run_backlog = None


def ensure_rate_limit(name: str, per_second: float) -> None:
    """Create the global concurrency limit used as a rate limit (slots decay at `per_second`) when missing."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
                name=name, limit=max(1, int(per_second)), slot_decay_per_second=per_second))
        except ObjectAlreadyExists:
            pass  # another hub replica made it first


def _refused_for_good(exc: BaseException) -> bool:
    """A 4xx other than 408/429 from Prefect (409 is its answer to parameters the deployment rejects):
    sending it again would be refused again."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status is not None and 400 <= status < 500 and status not in (408, 429)


def _summary(exc: BaseException) -> str:
    """The error's kind and status only: Prefect's error bodies can echo the parameters (the request)."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "")
