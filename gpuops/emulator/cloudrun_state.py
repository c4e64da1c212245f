"""State of the local Cloud Run Admin API v2 emulator: stores, operations, faults, request log, seeds."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

from google.cloud import run_v2

from .cloudrun_common import Name, check_json_type, invalid, parse_body, to_json_dict
# Fault, FaultBook, LoggedRequest and FAULT_MODES lived here first; importers still find them here.
from .cloudrun_faults import (FAULT_MODES, Fault, FaultBook, LoggedRequest, make_fault, race_target,
                              raced_document)
from .cloudrun_jobs import ExecutionRunner, InstantSuccessRunner, JobStore
from .cloudrun_ops import OperationStore
from .monitoring_api import ServedRequests
from .secret_manager_api import SecretStore
from .cloudrun_services import ServiceStore
from .cloudrun_store import Context, UriFn
from .serving import RevisionProcesses
from .workloads import ProcessRunner, ProcessTable, WorkloadEnv

EMULATOR_LABEL = "gpuops local Cloud Run Admin API v2 emulator \u2014 not Google"

SeedSource = Union[dict, str, Path, None]

__all__ = ["EMULATOR_LABEL", "FAULT_MODES", "CloudRunState", "Fault", "FaultBook", "LoggedRequest",
           "SeedSource", "WorkloadOptions", "emulated_uri", "load_seed"]


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
        self.faults = FaultBook(make_fault)
        self.served = ServedRequests()  # what the router answered: the Monitoring emulation's data
        self.processes = ProcessTable()
        self.secrets = SecretStore()  # the Secret Manager emulation; workloads read secretKeyRefs from it
        self.workload_options = options = workloads or WorkloadOptions()
        env = WorkloadEnv(list(options.extra_path), dict(options.extra_env), self.secrets.resolve)
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
            self.secrets.reset()
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
        """Load a seed given as a dict or, for in-process and CLI use (`--seed FILE`), a JSON file path."""
        return self.seed_document(load_seed(data))

    def seed_document(self, doc: Any) -> dict[str, list[str]]:
        """Load {"services": [...], "jobs": [...]} (v2 JSON with full names) as if created.

        Takes a JSON object only, never a path: this is what the HTTP /seed route calls.
        A later entry with the name of an existing resource updates it, so a seed can build a
        service with several revisions and a traffic split.
        """
        check_json_type("seed", doc, dict)
        unknown = set(doc) - {"services", "jobs"}
        if unknown:
            raise invalid(f"seed: unknown keys {sorted(unknown)}; expected 'services' and 'jobs'")
        for key in ("services", "jobs"):
            check_json_type(f"seed.{key}", doc.get(key, []), list)
            for index, entry in enumerate(doc.get(key, [])):
                check_json_type(f"seed.{key}[{index}]", entry, dict)
        made: dict[str, list[str]] = {"services": [], "jobs": []}
        with self.lock:
            for entry in doc.get("services", []):
                made["services"].append(self._seed_one(entry, run_v2.Service, self.services))
            for entry in doc.get("jobs", []):
                made["jobs"].append(self._seed_one(entry, run_v2.Job, self.jobs))
        for service in made["services"]:
            self.sync_services(service, self.workload_options.startup_timeout_s)
        return made

    def race(self, fault: Fault, path: str, query: list[tuple[str, str]]) -> None:
        """A race fault's other writer: rewrite the service or job the request names (see Fault)."""
        kind, name = race_target(path, query)
        services = kind == "services"
        store, message_cls = (self.services, run_v2.Service) if services else (self.jobs, run_v2.Job)
        with self.lock:
            current = to_json_dict(store.get(name)) if store.exists(name) else {}
            doc = {**raced_document(current, fault.race, kind), "name": name}
            store.update(parse_body(json.dumps(doc), message_cls), allow_missing=True)
        if services:
            self.sync_services()  # the other writer does not wait for its revision to start

    @staticmethod
    def _seed_one(entry: dict, message_cls: type, store) -> str:
        body = parse_body(json.dumps(entry), message_cls)
        if not body.name:
            raise invalid("seed: every resource needs its full name (projects/P/locations/L/...)")
        parsed = Name.parse(body.name)
        if len(parsed.parts) != 1 or parsed.parts[0][0] != store.COLLECTION:
            raise invalid(f"seed: '{body.name}' is not a name of the form "
                          f"projects/P/locations/L/{store.COLLECTION}/ID")
        if store.exists(body.name):
            store.update(body)
        else:
            store.create(parsed.parent, parsed.id, body)
        return body.name


def load_seed(data: SeedSource) -> dict[str, Any]:
    """A seed from a dict or a JSON file path: for Python callers and the CLI, never for HTTP bodies."""
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
