"""HTTP layer of the Cloud Run emulator: v2 REST routes (and Logging's entries:list), faults, request log, limits."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable

from google.cloud import run_v2
from google.longrunning import operations_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .cloudrun_state import EMULATOR_LABEL, CloudRunState, Fault, LoggedRequest
from .cloudrun_common import (
    LOCATION_PREFIX,
    RPC_CODES,
    ApiError,
    invalid,
    parse_body,
    parse_query,
    to_json_dict,
)
from . import logging_api, monitoring_api, secret_manager_api
from .cloudrun_control import handle_control
from .cloudrun_ops import Probe, frozen
from .router import Router, proxy

log = logging.getLogger(__name__)

HEADER = {"X-Gpuops-Emulator": "cloud-run"}
ALL_METHODS = ["GET", "POST", "PATCH", "PUT", "DELETE"]
ID = r"[^/:]+"
# A create/update waits this long for new revision processes: under run_v2's 15 s call timeout.
# A slower start leaves the operation pending until the revision is ready or failed.
SYNC_WAIT_S = 10.0
# Google's API front end refuses bodies over 10 MiB with 400 "Request payload size exceeds the
# limit: 10485760 bytes." (the figure its error names, e.g. googleworkspace/dotnet-samples#23;
# Google does not document it per API). The emulator reads at most this much of any body.
MAX_BODY_BYTES = 10 * 1024 * 1024
# Past the limit the rest of a body is read and dropped (not kept) up to this much, so that the
# client gets our answer rather than a reset connection; a body declared larger is not read at all.
DRAIN_BYTES = 64 * 1024 * 1024
WRITE_METHODS = ("POST", "PATCH", "PUT")


@dataclass
class Call:
    """One v2 API request, reduced to what handlers need."""

    method: str
    name: str  # the resource path after /v2/, without a trailing :verb
    query: list[tuple[str, str]]
    body: str
    int_enums: bool
    content_type: str = "application/json"

    @property
    def parent(self) -> str:
        """For collection paths (create/list): the path without the collection segment."""
        return self.name.rsplit("/", 1)[0]

    @property
    def location(self) -> str:
        return "/".join(self.name.split("/")[:4])


Handler = Callable[[CloudRunState, Call], "Message | dict"]


# ---------------------------------------------------------------- services and revisions


def create_service(state: CloudRunState, call: Call) -> Message:
    req = parse_query(call.query, run_v2.CreateServiceRequest)
    body = parse_body(call.body, run_v2.Service)
    svc = state.services.create(call.parent, req.service_id, body, req.validate_only)
    return _service_operation(state, call, svc, req.validate_only)


def list_services(state: CloudRunState, call: Call) -> Message:
    req = parse_query(call.query, run_v2.ListServicesRequest)
    items, token = state.services.list(call.parent, req.page_size, req.page_token)
    return run_v2.ListServicesResponse.pb()(services=items, next_page_token=token)


def get_service(state: CloudRunState, call: Call) -> Message:
    parse_query(call.query, run_v2.GetServiceRequest)
    return state.services.get(call.name)


def update_service(state: CloudRunState, call: Call) -> Message:
    req = parse_query(call.query, run_v2.UpdateServiceRequest)
    body = parse_body(call.body, run_v2.Service)
    body.name = call.name  # the path names the service, whatever the body says
    mask = req.update_mask if req.HasField("update_mask") else None
    svc = state.services.update(body, req.allow_missing, req.validate_only, mask=mask)
    return _service_operation(state, call, svc, req.validate_only)


def delete_service(state: CloudRunState, call: Call) -> Message:
    req = parse_query(call.query, run_v2.DeleteServiceRequest)
    svc = state.services.delete(call.name, req.etag, req.validate_only)
    state.sync_services()  # stops the service's processes
    return state.ops.start(call.location, frozen(svc))


def list_revisions(state: CloudRunState, call: Call) -> Message:
    req = parse_query(call.query, run_v2.ListRevisionsRequest)
    items, token = state.services.list_revisions(call.parent, req.page_size, req.page_token)
    return run_v2.ListRevisionsResponse.pb()(revisions=items, next_page_token=token)


def get_revision(state: CloudRunState, call: Call) -> Message:
    parse_query(call.query, run_v2.GetRevisionRequest)
    return state.services.get_revision(call.name)


def delete_revision(state: CloudRunState, call: Call) -> Message:
    req = parse_query(call.query, run_v2.DeleteRevisionRequest)
    rev = state.services.delete_revision(call.name, req.etag, req.validate_only)
    state.sync_services()
    return state.ops.start(call.location, frozen(rev))


def _service_operation(state: CloudRunState, call: Call, svc: Message, validate_only: bool) -> Message:
    """With local workloads, the operation ends when the serving revisions are up (or failed)."""
    if state.serving is None or validate_only:
        return state.ops.start(call.location, frozen(svc))
    state.sync_services(svc.name, min(SYNC_WAIT_S, state.workload_options.startup_timeout_s))
    return state.ops.start(call.location, _service_probe(state, svc))


def _service_probe(state: CloudRunState, snapshot: Message) -> Probe:
    def probe():
        try:
            svc = state.services.get(snapshot.name)
        except ApiError:
            return snapshot, True, None  # deleted meanwhile: nothing left to wait for
        if not state.serving.settled(svc.name):
            return svc, False, None
        failure = state.serving.failure(svc.latest_created_revision)
        error = None
        if failure:
            short = svc.latest_created_revision.rsplit("/", 1)[-1]
            message = f"Revision '{short}' is not ready and cannot serve traffic. {failure}"
            error = status_pb2.Status(code=RPC_CODES["FAILED_PRECONDITION"], message=message)
        return svc, True, error

    return probe


# ---------------------------------------------------------------- jobs, executions, tasks


def create_job(state: CloudRunState, call: Call) -> Message:
    req = parse_query(call.query, run_v2.CreateJobRequest)
    body = parse_body(call.body, run_v2.Job)
    job = state.jobs.create(call.parent, req.job_id, body, req.validate_only)
    return state.ops.start(call.location, frozen(job))


def list_jobs(state: CloudRunState, call: Call) -> Message:
    req = parse_query(call.query, run_v2.ListJobsRequest)
    items, token = state.jobs.list(call.parent, req.page_size, req.page_token)
    return run_v2.ListJobsResponse.pb()(jobs=items, next_page_token=token)


def get_job(state: CloudRunState, call: Call) -> Message:
    parse_query(call.query, run_v2.GetJobRequest)
    return state.jobs.get(call.name)


def update_job(state: CloudRunState, call: Call) -> Message:
    req = parse_query(call.query, run_v2.UpdateJobRequest)
    body = parse_body(call.body, run_v2.Job)
    body.name = call.name
    job = state.jobs.update(body, req.allow_missing, req.validate_only)
    return state.ops.start(call.location, frozen(job))


def delete_job(state: CloudRunState, call: Call) -> Message:
    req = parse_query(call.query, run_v2.DeleteJobRequest)
    job = state.jobs.delete(call.name, req.etag, req.validate_only)
    return state.ops.start(call.location, frozen(job))


def run_job(state: CloudRunState, call: Call) -> Message:
    parse_query(call.query, run_v2.RunJobRequest)
    req = parse_body(call.body, run_v2.RunJobRequest, allow_empty=True)
    if req.overrides.task_count < 0:
        raise invalid("overrides.task_count must not be negative")
    execution, committed = state.jobs.run(call.name, req)
    probe = state.jobs.execution_probe(execution.name, execution) if committed else frozen(execution)
    return state.ops.start(call.location, probe)


def list_executions(state: CloudRunState, call: Call) -> Message:
    req = parse_query(call.query, run_v2.ListExecutionsRequest)
    items, token = state.jobs.list_executions(call.parent, req.page_size, req.page_token)
    return run_v2.ListExecutionsResponse.pb()(executions=items, next_page_token=token)


def get_execution(state: CloudRunState, call: Call) -> Message:
    parse_query(call.query, run_v2.GetExecutionRequest)
    return state.jobs.get_execution(call.name)


def delete_execution(state: CloudRunState, call: Call) -> Message:
    req = parse_query(call.query, run_v2.DeleteExecutionRequest)
    execution = state.jobs.delete_execution(call.name, req.etag, req.validate_only)
    return state.ops.start(call.location, frozen(execution))


def cancel_execution(state: CloudRunState, call: Call) -> Message:
    parse_query(call.query, run_v2.CancelExecutionRequest)
    req = parse_body(call.body, run_v2.CancelExecutionRequest, allow_empty=True)
    execution = state.jobs.cancel_execution(call.name, req.etag, req.validate_only)
    return state.ops.start(call.location, state.jobs.execution_probe(execution.name, execution))


def list_tasks(state: CloudRunState, call: Call) -> Message:
    req = parse_query(call.query, run_v2.ListTasksRequest)
    items, token = state.jobs.list_tasks(call.parent, req.page_size, req.page_token)
    return run_v2.ListTasksResponse.pb()(tasks=items, next_page_token=token)


def get_task(state: CloudRunState, call: Call) -> Message:
    parse_query(call.query, run_v2.GetTaskRequest)
    return state.jobs.get_task(call.name)


# ---------------------------------------------------------------- operations


def get_operation(state: CloudRunState, call: Call) -> Message:
    parse_query(call.query, operations_pb2.GetOperationRequest)
    return state.ops.get(call.name)


def list_operations(state: CloudRunState, call: Call) -> Message:
    req = parse_query(call.query, operations_pb2.ListOperationsRequest)
    items, token = state.ops.list(call.parent, req.page_size, req.page_token)
    return operations_pb2.ListOperationsResponse(operations=items, next_page_token=token)


def delete_operation(state: CloudRunState, call: Call) -> dict:
    parse_query(call.query, operations_pb2.DeleteOperationRequest)
    state.ops.delete(call.name)
    return {}


def wait_operation(state: CloudRunState, call: Call) -> Message:
    req = parse_body(call.body, operations_pb2.WaitOperationRequest, allow_empty=True)
    timeout = req.timeout.ToTimedelta().total_seconds() if req.HasField("timeout") else 10.0
    return state.ops.wait(call.name, timeout)


def _routes() -> list[tuple[str, re.Pattern, Handler]]:
    svc, job = rf"{LOCATION_PREFIX}/services", rf"{LOCATION_PREFIX}/jobs"
    execs = rf"{job}/{ID}/executions"
    ops = rf"{LOCATION_PREFIX}/operations"
    table = [
        ("POST", svc, create_service), ("GET", svc, list_services),
        ("GET", rf"{svc}/{ID}", get_service), ("PATCH", rf"{svc}/{ID}", update_service),
        ("DELETE", rf"{svc}/{ID}", delete_service),
        ("GET", rf"{svc}/{ID}/revisions", list_revisions),
        ("GET", rf"{svc}/{ID}/revisions/{ID}", get_revision),
        ("DELETE", rf"{svc}/{ID}/revisions/{ID}", delete_revision),
        ("POST", job, create_job), ("GET", job, list_jobs),
        ("GET", rf"{job}/{ID}", get_job), ("PATCH", rf"{job}/{ID}", update_job),
        ("DELETE", rf"{job}/{ID}", delete_job), ("POST", rf"{job}/{ID}:run", run_job),
        ("GET", execs, list_executions), ("GET", rf"{execs}/{ID}", get_execution),
        ("DELETE", rf"{execs}/{ID}", delete_execution),
        ("POST", rf"{execs}/{ID}:cancel", cancel_execution),
        ("GET", rf"{execs}/{ID}/tasks", list_tasks), ("GET", rf"{execs}/{ID}/tasks/{ID}", get_task),
        ("GET", ops, list_operations), ("GET", rf"{ops}/{ID}", get_operation),
        ("DELETE", rf"{ops}/{ID}", delete_operation), ("POST", rf"{ops}/{ID}:wait", wait_operation),
        # Cloud Logging v2 shares the /v2 prefix: its entries:list reads the workloads' output.
        ("POST", r"entries:list", logging_api.list_entries),
    ]
    return [(method, re.compile(pattern), handler) for method, pattern, handler in table]


ROUTES = _routes()


def dispatch_v2(state: CloudRunState, call: Call, path: str) -> tuple[int, dict]:
    """Run one v2 request; any ApiError becomes Google's error body."""
    tail = path[len("/v2/"):]
    try:
        check_content_type(call)
        for method, pattern, handler in ROUTES:
            if method == call.method and pattern.fullmatch(tail):
                result = handler(state, call)
                return 200, result if isinstance(result, dict) else to_json_dict(result, call.int_enums)
        raise ApiError(404, f"Method not found: {call.method} {path}", "NOT_FOUND")
    except ApiError as exc:
        return exc.code, exc.body()


def check_content_type(call: Call) -> None:
    """A write with a body must say it is JSON, as run_v2's REST transport always does.

    Google's front end answers other types with 400 "Unsupported content with type: ...".
    """
    if call.method in WRITE_METHODS and call.body.strip():
        media_type = call.content_type.split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            raise invalid(f"Unsupported content with type: {call.content_type or '(none)'}")


def handle_v2(state: CloudRunState, method: str, path: str, query: list, body: str,
              content_type: str = "application/json") -> tuple[int, dict]:
    """Apply fault injection around the dispatch and log the request."""
    alt = dict(query).get("$alt", "")
    name = path[len("/v2/"):].split(":", 1)[0]
    call = Call(method, name, query, body, "enum-encoding=int" in alt, content_type)
    return _faulted(state, method, path, query, lambda: dispatch_v2(state, call, path))


def _faulted(state: CloudRunState, method: str, path: str, query: list,
             run: Callable[[], tuple[int, dict]]) -> tuple[int, dict]:
    """Run one API request under fault injection (modes: see Fault), and log it."""
    fault = state.faults.take(method, path)
    mode = fault.mode if fault is not None else None
    error = fault.error() if mode == "before" else None
    if mode == "race":
        error = _race(state, fault, path, query)  # the other writer lands first
    if error is not None:
        status, payload = error.code, error.body()
    else:
        status, payload = run()
        if mode == "after":
            # The write above happened; only its answer is lost.
            status, payload = fault.error().code, fault.error().body()
    query_text = "&".join(f"{k}={v}" for k, v in query)
    state.faults.record(LoggedRequest(method, path, query_text, status, mode))
    return status, payload


def _race(state: CloudRunState, fault: Fault, path: str, query: list) -> ApiError | None:
    """Apply the other writer's update; None when it landed, else the error to answer with."""
    try:
        state.race(fault, path, query)
    except ApiError as exc:
        # A race that cannot apply is a mistake in the test's fault: say so rather than run on.
        return ApiError(exc.code, f"race fault: {exc.message}", exc.status)
    return None


# ---------------------------------------------------------------- the ASGI app


def build_app(state: CloudRunState, info: Callable[[], dict]) -> Starlette:
    """One catch-all route; dispatch is ours so that any path gets a Google-shaped answer."""

    async def endpoint(request: Request) -> JSONResponse:
        path, method = request.url.path, request.method
        raw = await read_capped(request)
        if raw is None:  # refused by the front end: no handler, fault or request log sees it
            error = invalid(f"Request payload size exceeds the limit: {MAX_BODY_BYTES} bytes.")
            return JSONResponse(error.body(), status_code=error.code, headers=HEADER)
        body = raw.decode("utf-8", errors="replace")
        query = list(request.query_params.multi_items())
        content_type = request.headers.get("content-type", "")
        try:
            status, payload = await run_in_threadpool(_route, state, method, path, query, body, info,
                                                      content_type)
            return JSONResponse(payload, status_code=status, headers=HEADER)
        except Exception as exc:  # a bug in the emulator must still answer in Google's shape
            log.exception("cloud run emulator failed on %s %s", method, path)
            payload = ApiError(500, f"emulator error: {exc!r}", "INTERNAL").body()
            return JSONResponse(payload, status_code=500, headers=HEADER)

    router = Router(state)

    async def emulated(request: Request):
        return await proxy(router, request)

    return Starlette(routes=[
        Route("/emulated/{path:path}", emulated, methods=ALL_METHODS + ["HEAD", "OPTIONS"]),
        Route("/{path:path}", endpoint, methods=ALL_METHODS),
    ])


async def read_capped(request: Request) -> bytes | None:
    """The request body, or None when it is over MAX_BODY_BYTES; never holds more than that."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > DRAIN_BYTES:
        return None
    chunks: list[bytes] | None = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            chunks = None  # drop what was kept; keep reading only to drain
            if size > DRAIN_BYTES:
                break
        elif chunks is not None:
            chunks.append(chunk)
    return None if chunks is None else b"".join(chunks)


def _route(state: CloudRunState, method: str, path: str, query: list, body: str, info,
           content_type: str) -> tuple[int, dict]:
    if path.startswith("/v2/"):
        return handle_v2(state, method, path, query, body, content_type)
    if path.startswith("/v3/"):  # the Cloud Monitoring emulation, on the same base URL
        return _faulted(state, method, path, query, lambda: monitoring_api.handle(state.served, method, path, query))
    if path.startswith("/v1/"):  # the Secret Manager emulation, on the same base URL
        return _faulted(state, method, path, query,
                        lambda: secret_manager_api.handle(state.secrets, method, path, query, body, content_type))
    if path == "/" or path.startswith("/emulator/v1"):
        return handle_control(state, method, path if path != "/" else "/emulator/v1", body, info())
    return 404, ApiError(404, f"{EMULATOR_LABEL}: nothing is served at {path}", "NOT_FOUND").body()
