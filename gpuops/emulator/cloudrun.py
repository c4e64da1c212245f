"""State of the local Cloud Run Admin API v2 emulator: stores, operations, faults, request log, seeds."""

from __future__ import annotations

import itertools
import json
import re
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

from google.cloud import run_v2

from .cloudrun_common import HTTP_STATUS_NAMES, ApiError, Name, invalid, parse_body
from .cloudrun_jobs import ExecutionRunner, InstantSuccessRunner, JobStore
from .cloudrun_ops import OperationStore
from .monitoring import ServedRequests
from .cloudrun_services import ServiceStore
from .cloudrun_store import Context, UriFn
from .serving import RevisionProcesses
from .workloads import ProcessRunner, ProcessTable, WorkloadEnv

EMULATOR_LABEL = "gpuops local Cloud Run Admin API v2 emulator \u2014 not Google"
FAULT_MODES = ("before", "after")

SeedSource = Union[dict, str, Path, None]


@dataclass
class Fault:
    """An injected error: matches a method and a path regex, fires `times` times.

    mode "before" answers the error without touching state; mode "after" applies the request
    first and then answers the error, like a response lost on the way back to the client.
    """

    method: str = "*"
    path: str = ".*"
    status: int = 503
    times: int = 1
    mode: str = "before"
    message: str = ""
    id: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        if self.mode not in FAULT_MODES:
            raise invalid(f"fault mode must be one of {FAULT_MODES}, got '{self.mode}'")
        if self.times < 1:
            raise invalid("fault times must be at least 1")
        self.method = self.method.upper()
        self._regex = re.compile(self.path)

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method.upper()) and self._regex.search(path) is not None

    def error(self) -> ApiError:
        status_name = HTTP_STATUS_NAMES.get(self.status, "UNKNOWN")
        message = self.message or f"Injected fault ({self.mode}): {status_name}"
        return ApiError(self.status, message, status_name)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


@dataclass
class LoggedRequest:
    method: str
    path: str
    query: str
    status: int
    fault: str | None = None


@dataclass
class FaultBook:
    """Injected faults and the log of API requests; both have their own lock."""

    faults: list[Fault] = field(default_factory=list)
    log: list[LoggedRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def add(self, **spec: Any) -> Fault:
        fault = Fault(**{k: v for k, v in spec.items() if k not in ("id", "fired")})
        with self._lock:
            fault.id = next(self._ids)
            self.faults.append(fault)
        return fault

    def take(self, method: str, path: str) -> Fault | None:
        """The first live fault matching the request, consumed by one firing."""
        with self._lock:
            for fault in self.faults:
                if fault.fired < fault.times and fault.matches(method, path):
                    fault.fired += 1
                    return fault
        return None

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def record(self, entry: LoggedRequest) -> None:
        with self._lock:
            self.log.append(entry)

    def requests(self, method: str | None = None, path: str | None = None) -> list[LoggedRequest]:
        with self._lock:
            entries = list(self.log)
        return [
            e for e in entries
            if (method is None or e.method == method.upper()) and (path is None or re.search(path, e.path))
        ]

    def clear_requests(self) -> None:
        with self._lock:
            self.log.clear()


@dataclass
class WorkloadOptions:
    """run_workloads=True: job tasks and serving revisions run their command locally."""

    run_workloads: bool = False
    extra_path: list[str] = field(default_factory=list)  # prepended to every workload's PATH
    extra_env: dict[str, str] = field(default_factory=dict)  # under the container's own env
    startup_timeout_s: float = 30.0  # a revision not listening on $PORT by then is Ready=FAILED


class CloudRunState:
    """Everything the emulator holds, behind one re-entrant lock (handlers run in a thread pool)."""

    def __init__(self, uri_for: UriFn, operation_polls_before_done: int = 0,
                 runner: ExecutionRunner | None = None, seed: SeedSource = None,
                 workloads: WorkloadOptions | None = None):
        self.lock = threading.RLock()
        self.ctx = Context(lock=self.lock, uri_for=uri_for)
        self.services = ServiceStore(self.ctx)
        self.ops = OperationStore(self.lock, operation_polls_before_done)
        self.faults = FaultBook()
        self.served = ServedRequests()  # what the router answered: the Monitoring emulation's data
        self.processes = ProcessTable()
        self.workload_options = options = workloads or WorkloadOptions()
        env = WorkloadEnv(list(options.extra_path), dict(options.extra_env))
        # Without run_workloads nothing is ever started: revisions stay records, jobs succeed at once.
        self.process_runner = ProcessRunner(env, self.processes) if options.run_workloads else None
        self.serving = RevisionProcesses(env, self.processes, self.services.mark_revision,
                                         options.startup_timeout_s) if options.run_workloads else None
        self.jobs = JobStore(self.ctx, runner or self.default_runner())
        self._initial_polls = operation_polls_before_done
        self._initial_seed = load_seed(seed)

    def default_runner(self) -> ExecutionRunner:
        return self.process_runner or InstantSuccessRunner()

    @property
    def runner(self) -> ExecutionRunner:
        return self.jobs.runner

    @runner.setter
    def runner(self, runner: ExecutionRunner | None) -> None:
        self.jobs.runner = runner or self.default_runner()

    def reset(self, reseed: bool = True) -> None:
        """Forget every resource, operation, fault, logged and served request; then re-apply the seed."""
        with self.lock:
            self.services.reset()
            self.jobs.reset()
            self.ops.reset()
            self.ops.polls_before_done = self._initial_polls
        self.stop_workloads()
        self.faults.clear_faults()
        self.faults.clear_requests()
        self.served.clear()
        if reseed:
            self.apply_initial_seed()

    # ------------------------------------------------------------ local workloads

    def sync_services(self, service: str | None = None, wait_s: float = 0.0) -> None:
        """Start processes of revisions that now serve, stop the others; optionally wait for one service."""
        if self.serving is None:
            return
        self.serving.reconcile(self.services.serving_revisions)
        if service is not None and wait_s > 0:
            self.serving.wait_settled(service, wait_s)

    def stop_workloads(self) -> None:
        """Stop every local process (revisions and job tasks) and forget their logs."""
        if self.serving is not None:
            self.serving.stop_all()
        if self.process_runner is not None:
            self.process_runner.reset()
        self.processes.forget_finished()

    def logs(self, name: str) -> str | None:
        """Output of an execution (its tasks in order) or of a revision's process; None if none."""
        for source in (self.process_runner, self.serving):
            text = source.logs(name) if source is not None else None
            if text is not None:
                return text
        return None

    def apply_initial_seed(self) -> None:
        if self._initial_seed:
            self.seed(self._initial_seed)

    def seed(self, data: SeedSource) -> dict[str, list[str]]:
        """Load {"services": [...], "jobs": [...]} (v2 JSON with full names) as if created.

        A later entry with the name of an existing resource updates it, so a seed can build a
        service with several revisions and a traffic split.
        """
        doc = load_seed(data)
        unknown = set(doc) - {"services", "jobs"}
        if unknown:
            raise invalid(f"seed: unknown keys {sorted(unknown)}; expected 'services' and 'jobs'")
        made: dict[str, list[str]] = {"services": [], "jobs": []}
        with self.lock:
            for entry in doc.get("services", []):
                made["services"].append(self._seed_one(entry, run_v2.Service, self.services))
            for entry in doc.get("jobs", []):
                made["jobs"].append(self._seed_one(entry, run_v2.Job, self.jobs))
        for service in made["services"]:
            self.sync_services(service, self.workload_options.startup_timeout_s)
        return made

    @staticmethod
    def _seed_one(entry: dict, message_cls: type, store) -> str:
        body = parse_body(json.dumps(entry), message_cls)
        if not body.name:
            raise invalid("seed: every resource needs its full name (projects/P/locations/L/...)")
        parsed = Name.parse(body.name)
        if store.exists(body.name):
            store.update(body)
        else:
            store.create(parsed.parent, parsed.id, body)
        return body.name


def load_seed(data: SeedSource) -> dict[str, Any]:
    if data is None:
        return {}
    if isinstance(data, (str, Path)):
        data = json.loads(Path(data).read_text())
    if not isinstance(data, dict):
        raise invalid("seed must be a JSON object with 'services' and/or 'jobs'")
    return data


def emulated_uri(base_url: Callable[[], str]) -> UriFn:
    """URLs on the emulator itself; a later router can serve local processes there."""

    def uri_for(name: Name, tag: str | None) -> str:
        service = f"{tag}---{name.id}" if tag else name.id
        return f"{base_url()}/emulated/{name.project}/{name.location}/{service}"

    return uri_for
