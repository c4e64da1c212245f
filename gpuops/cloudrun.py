"""Cloud Run Admin API v2 adapter: one function per remote call, REST JSON dicts in and out."""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.protobuf import json_format

from gpuops import retry
from gpuops.dicts import is_subset
from gpuops.errors import CouldNotRun

if TYPE_CHECKING:
    from google.cloud import run_v2  # imported where a client is built or a body parsed (0.4 s)


def __getattr__(name: str):
    # `cloudrun.run_v2` for callers, imported on first use like the functions here do.
    if name == "run_v2":
        from google.cloud import run_v2

        return run_v2
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

log = logging.getLogger("gpuops.cloudrun")

ENDPOINT_ENV = "GPUOPS_CLOUD_RUN_API"
CALL_TIMEOUT_S = 60.0


class BodyError(ValueError):
    """A request body that the Cloud Run API would reject; raised before any call."""


@dataclass
class CloudRun:
    """The clients of one endpoint, and the bounds every call here keeps."""

    endpoint: str | None
    services: run_v2.ServicesClient
    revisions: run_v2.RevisionsClient
    jobs: run_v2.JobsClient
    executions: run_v2.ExecutionsClient
    lro_timeout_s: float = 600.0
    backoff: retry.Backoff = field(default_factory=retry.Backoff.from_env)

    @property
    def is_emulator(self) -> bool:
        return bool(self.endpoint and self.endpoint.startswith("http://"))


def connect(endpoint: str | None = None, credentials: Credentials | None = None) -> CloudRun:
    """Clients for `GPUOPS_CLOUD_RUN_API` (wins), else `endpoint`, else Google with ADC."""
    from google.cloud import run_v2

    from gpuops import google_logs

    # A service or job body holds env values: Google's DEBUG logging must not write them out.
    google_logs.guard(*(f"google.cloud.run_v2.services.{kind}.transports.rest"
                        for kind in ("services", "revisions", "jobs", "executions")))
    endpoint = os.environ.get(ENDPOINT_ENV) or endpoint or None
    if endpoint and endpoint.startswith("http://"):
        credentials = AnonymousCredentials()  # a local emulator: no Google credentials
    opts = ClientOptions(api_endpoint=endpoint) if endpoint else None
    kw: dict[str, Any] = dict(transport="rest", client_options=opts, credentials=credentials)
    return CloudRun(
        endpoint=endpoint,
        services=run_v2.ServicesClient(**kw),
        revisions=run_v2.RevisionsClient(**kw),
        jobs=run_v2.JobsClient(**kw),
        executions=run_v2.ExecutionsClient(**kw),
    )


# --- names and conversions -------------------------------------------------------------


def location(project: str, region: str) -> str:
    return f"projects/{project}/locations/{region}"


def service_name(project: str, region: str, service: str) -> str:
    return f"{location(project, region)}/services/{service}"


def job_name(project: str, region: str, job: str) -> str:
    return f"{location(project, region)}/jobs/{job}"


def short(name: str) -> str:
    """`projects/p/locations/r/services/s` -> `s`."""
    return name.rsplit("/", 1)[-1]


def _split(name: str) -> tuple[str, str]:
    parent, _, rid = name.rpartition("/")
    return parent.rsplit("/", 1)[0], rid


def to_dict(message: Any) -> dict:
    """A proto-plus message as the REST JSON Google sends (camelCase, defaults left out)."""
    return json_format.MessageToDict(type(message).pb(message))


def from_dict(cls: Any, body: dict) -> Any:
    """Parse a REST JSON body with the proto type, so a body Google would reject fails here."""
    try:
        return cls.from_json(json.dumps(body), ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise BodyError(f"{cls.__name__} body is invalid: {exc}") from exc


def normalized(cls: Any, body: dict) -> dict:
    """The body as the server would echo it: parsed, then printed without defaults."""
    return to_dict(from_dict(cls, body))


def _call(cr: CloudRun, what: str, fn, read_back=None):
    return retry.call(what, fn, backoff=cr.backoff, read_back=read_back)


def _get(cr: CloudRun, what: str, method, name: str) -> dict | None:
    """A read; None for a resource that does not exist."""
    def read():
        try:
            return to_dict(method(name=name, retry=None, timeout=CALL_TIMEOUT_S))
        except gexc.NotFound:
            return None

    return _call(cr, f"get {what} {short(name)}", read)


def _list(cr: CloudRun, what: str, method, parent: str) -> list[dict]:
    def read():
        return [to_dict(item) for item in method(parent=parent, retry=None, timeout=CALL_TIMEOUT_S)]

    return _call(cr, f"list {what} in {parent}", read)


def _delete(cr: CloudRun, what: str, method, name: str) -> bool:
    """Delete; False when it was already gone (so a retry after a lost answer is not an error)."""
    def send():
        try:
            method(name=name, retry=None, timeout=CALL_TIMEOUT_S).result(timeout=cr.lro_timeout_s)
            return True
        except gexc.NotFound:
            return False

    return _call(cr, f"delete {what} {short(name)}", send)


def _write(cr: CloudRun, what: str, cls: Any, name: str, body: dict, start, getter) -> dict:
    """A create or update awaited to its end; after a lost answer, a read-back decides if it took."""
    def send():
        return to_dict(start().result(timeout=cr.lro_timeout_s))

    def guard():
        current = getter(cr, name)
        return current if current and is_subset(normalized(cls, body), current) else None

    return _call(cr, f"{what} {short(name)}", send, read_back=guard)


# --- services and revisions ------------------------------------------------------------


def get_service(cr: CloudRun, name: str) -> dict | None:
    return _get(cr, "service", cr.services.get_service, name)


def list_services(cr: CloudRun, location: str) -> list[dict]:
    return _list(cr, "services", cr.services.list_services, location)


def get_revision(cr: CloudRun, name: str) -> dict | None:
    return _get(cr, "revision", cr.revisions.get_revision, name)


def list_revisions(cr: CloudRun, service: str) -> list[dict]:
    return _list(cr, "revisions", cr.revisions.list_revisions, service)


def delete_revision(cr: CloudRun, name: str) -> bool:
    """Google refuses (FailedPrecondition) to delete a revision that traffic references."""
    return _delete(cr, "revision", cr.revisions.delete_revision, name)


def create_service(cr: CloudRun, name: str, body: dict) -> dict:
    from google.cloud import run_v2
    parent, sid = _split(name)
    msg = from_dict(run_v2.Service, body)
    start = lambda: cr.services.create_service(parent=parent, service=msg, service_id=sid, retry=None,
                                               timeout=CALL_TIMEOUT_S)
    return _write(cr, "create service", run_v2.Service, name, body, start, get_service)


def update_service(cr: CloudRun, name: str, body: dict, etag: str | None = None) -> dict:
    """Replace the service; with `etag` (the one read), Google refuses it (409) if another write came between.

    A lost answer after a template change must not be sent again blindly: read back first. A resend
    keeps the etag: if the write did not take, nothing changed it, so the etag is still current.
    """
    from google.cloud import run_v2
    msg = from_dict(run_v2.Service, {**body, "name": name, **({"etag": etag} if etag else {})})
    start = lambda: cr.services.update_service(service=msg, retry=None, timeout=CALL_TIMEOUT_S)
    return _write(cr, "update service", run_v2.Service, name, body, start, get_service)


# UpdateService replaces the whole service: send back what the caller may set, nothing the
# server owns. The etag travels beside the spec (update_service's `etag`).
WRITABLE = ("description", "labels", "annotations", "client", "clientVersion", "ingress", "launchStage",
            "binaryAuthorization", "template", "traffic", "scaling", "invokerIamDisabled",
            "defaultUriDisabled", "customAudiences")


def service_spec(service: dict) -> dict:
    return {k: v for k, v in service.items() if k in WRITABLE}


class ConcurrentChange(CouldNotRun):
    """Another writer kept changing a resource between gpuops' read and its write."""


@dataclass(frozen=True)
class TrafficChange:
    """What a traffic write sets: the split, annotations merged in, and optionally the template."""

    traffic: list[dict]
    annotations: dict = field(default_factory=dict)
    template: dict | None = None


def update_traffic(cr: CloudRun, name: str, decide, attempts: int = 3) -> dict:
    """Read the service, let `decide(service)` say what to write, and write it with the etag read.

    `decide` returns a TrafficChange, or None when nothing needs writing; it raises to refuse. When
    another writer gets in between (409), the service is read again and `decide` asked again:
    gpuops never overwrites a change it has not seen.
    """
    for attempt in range(1, attempts + 1):
        current = get_service(cr, name)
        if current is None:
            raise gexc.NotFound(f"service {name} does not exist")
        change = decide(current)
        if change is None:
            return current
        spec = service_spec(current)
        spec["traffic"] = change.traffic
        if change.annotations:
            spec["annotations"] = {**spec.get("annotations", {}), **change.annotations}
        if change.template is not None:
            spec["template"] = change.template
        try:
            return update_service(cr, name, spec, etag=current.get("etag"))
        except gexc.Conflict:
            log.warning("service %s changed while gpuops wrote its traffic (try %d of %d): reading it again",
                        short(name), attempt, attempts)
    raise ConcurrentChange(f"service {short(name)} kept changing while gpuops tried to set its traffic "
                           f"({attempts} tries); nothing of gpuops' was written over it. Run the command again.")


def delete_service(cr: CloudRun, name: str) -> bool:
    return _delete(cr, "service", cr.services.delete_service, name)


# --- jobs and executions ---------------------------------------------------------------


def get_job(cr: CloudRun, name: str) -> dict | None:
    return _get(cr, "job", cr.jobs.get_job, name)


def list_jobs(cr: CloudRun, location: str) -> list[dict]:
    return _list(cr, "jobs", cr.jobs.list_jobs, location)


def create_job(cr: CloudRun, name: str, body: dict) -> dict:
    from google.cloud import run_v2
    parent, jid = _split(name)
    msg = from_dict(run_v2.Job, body)
    start = lambda: cr.jobs.create_job(parent=parent, job=msg, job_id=jid, retry=None, timeout=CALL_TIMEOUT_S)
    return _write(cr, "create job", run_v2.Job, name, body, start, get_job)


def update_job(cr: CloudRun, name: str, body: dict, etag: str | None = None) -> dict:
    from google.cloud import run_v2
    msg = from_dict(run_v2.Job, {**body, "name": name, **({"etag": etag} if etag else {})})
    start = lambda: cr.jobs.update_job(job=msg, retry=None, timeout=CALL_TIMEOUT_S)
    return _write(cr, "update job", run_v2.Job, name, body, start, get_job)


def delete_job(cr: CloudRun, name: str) -> bool:
    return _delete(cr, "job", cr.jobs.delete_job, name)


def _latest_execution(cr: CloudRun, job: str) -> str | None:
    current = get_job(cr, job)
    if current is None:
        raise gexc.NotFound(f"job {job} does not exist")
    return (current.get("latestCreatedExecution") or {}).get("name")


def run_job(cr: CloudRun, name: str, overrides: dict | None = None) -> dict:
    """Start one execution and return it at once (not waiting for it to finish).

    Running a job is not idempotent: a retry after a lost answer would start a second
    execution. The guard compares the job's latest execution with the one before the call.
    """
    from google.cloud import run_v2
    request = from_dict(run_v2.RunJobRequest, {"name": name, "overrides": overrides or {}})
    before = _latest_execution(cr, name)

    def send():
        op = cr.jobs.run_job(request=request, retry=None, timeout=CALL_TIMEOUT_S)
        if op.metadata:  # Google puts the new Execution in the operation's metadata
            return to_dict(op.metadata)
        return get_execution(cr, _latest_execution(cr, name))

    def guard():
        latest = _latest_execution(cr, name)
        return get_execution(cr, latest) if latest and latest != before else None

    return _call(cr, f"run job {short(name)}", send, read_back=guard)


def get_execution(cr: CloudRun, name: str) -> dict | None:
    return _get(cr, "execution", cr.executions.get_execution, name)


def list_executions(cr: CloudRun, job: str) -> list[dict]:
    return _list(cr, "executions", cr.executions.list_executions, job)


def cancel_execution(cr: CloudRun, name: str) -> dict:
    """Cancel (idempotent on Google: cancelling a finished execution changes nothing)."""
    def send():
        op = cr.executions.cancel_execution(name=name, retry=None, timeout=CALL_TIMEOUT_S)
        return to_dict(op.result(timeout=cr.lro_timeout_s))

    return _call(cr, f"cancel {short(name)}", send)


def execution_finished(execution: dict) -> bool:
    return bool(execution.get("completionTime")) or any(
        c.get("type") == "Completed" and c.get("state") in ("CONDITION_SUCCEEDED", "CONDITION_FAILED")
        for c in execution.get("conditions", [])
    )


def wait_execution(cr: CloudRun, name: str, timeout_s: float, poll_s: float = 2.0) -> dict:
    """Poll until the execution finishes; TimeoutError past the bound (it keeps running)."""
    deadline = time.monotonic() + timeout_s
    while True:
        execution = get_execution(cr, name)
        if execution is None:
            raise gexc.NotFound(f"execution {name} disappeared")
        if execution_finished(execution):
            return execution
        if time.monotonic() >= deadline:
            raise TimeoutError(f"execution {short(name)} still running after {timeout_s:.0f}s")
        time.sleep(poll_s)
