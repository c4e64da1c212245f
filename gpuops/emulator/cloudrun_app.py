"""HTTP layer of the Cloud Run emulator: v2 REST routes, Monitoring v3 emulation, control routes, faults, log."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable

from google.cloud import run_v2
from google.longrunning import operations_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from .cloudrun import EMULATOR_LABEL, CloudRunState, LoggedRequest
from .cloudrun_common import (
    LOCATION_PREFIX,
    RPC_CODES,
    ApiError,
    invalid,
    parse_body,
    parse_query,
    to_json_dict,
)
from . import monitoring
from .cloudrun_ops import Probe, frozen
from .router import Router, proxy

log = logging.getLogger(__name__)

HEADER = {"X-Gpuops-Emulator": "cloud-run"}
ALL_METHODS = ["GET", "POST", "PATCH", "PUT", "DELETE"]
ID = r"[^/:]+"
# A create/update waits this long for new revision processes: under run_v2's 15 s call timeout.
# A slower start leaves the operation pending until the revision is ready or failed.
SYNC_WAIT_S = 10.0


@dataclass
class Call:
    """One v2 API request, reduced to what handlers need."""

    method: str
    name: str  # the resource path after /v2/, without a trailing :verb
    query: list[tuple[str, str]]
    body: str
    int_enums: bool

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
    ]
    return [(method, re.compile(pattern), handler) for method, pattern, handler in table]


ROUTES = _routes()


def dispatch_v2(state: CloudRunState, call: Call, path: str) -> tuple[int, dict]:
    """Run one v2 request; any ApiError becomes Google's error body."""
    tail = path[len("/v2/"):]
    try:
        for method, pattern, handler in ROUTES:
            if method == call.method and pattern.fullmatch(tail):
                result = handler(state, call)
                return 200, result if isinstance(result, dict) else to_json_dict(result, call.int_enums)
        raise ApiError(404, f"Method not found: {call.method} {path}", "NOT_FOUND")
    except ApiError as exc:
        return exc.code, exc.body()


def handle_v2(state: CloudRunState, method: str, path: str, query: list, body: str) -> tuple[int, dict]:
    """Apply fault injection around the dispatch and log the request."""
    alt = dict(query).get("$alt", "")
    call = Call(method, path[len("/v2/"):].split(":", 1)[0], query, body, "enum-encoding=int" in alt)
    return _faulted(state, method, path, query, lambda: dispatch_v2(state, call, path))


def _faulted(state: CloudRunState, method: str, path: str, query: list,
             run: Callable[[], tuple[int, dict]]) -> tuple[int, dict]:
    """Run one API request under fault injection, and log it."""
    fault = state.faults.take(method, path)
    if fault is not None and fault.mode == "before":
        status, payload = fault.error().code, fault.error().body()
    else:
        status, payload = run()
        if fault is not None:
            # The write above happened; only its answer is lost.
            status, payload = fault.error().code, fault.error().body()
    query_text = "&".join(f"{k}={v}" for k, v in query)
    state.faults.record(LoggedRequest(method, path, query_text, status, fault.mode if fault else None))
    return status, payload


# ---------------------------------------------------------------- control routes


def handle_control(state: CloudRunState, method: str, path: str, body: str, info: dict) -> tuple[int, dict]:
    """The emulator's own API under /emulator/v1 (never subject to faults, never logged)."""
    try:
        data = json.loads(body) if body.strip() else {}
    except json.JSONDecodeError as exc:
        return 400, invalid(f"control body is not JSON: {exc}").body()
    try:
        return 200, _control(state, method, path.rstrip("/"), data, info)
    except (ApiError, TypeError, re.error) as exc:
        err = exc if isinstance(exc, ApiError) else invalid(str(exc))
        return err.code, err.body()


def _control(state: CloudRunState, method: str, path: str, data: Any, info: dict) -> dict:
    key = (method, path.removeprefix("/emulator/v1"))
    if key in (("GET", ""), ("GET", "/info")):
        return info
    if key == ("POST", "/faults"):
        return {"fault": state.faults.add(**data).to_dict()}
    if key == ("GET", "/faults"):
        return {"faults": [f.to_dict() for f in state.faults.faults]}
    if key == ("DELETE", "/faults"):
        state.faults.clear_faults()
        return {"faults": []}
    if key == ("GET", "/requests"):
        return {"requests": [asdict(r) for r in state.faults.requests()]}
    if key == ("DELETE", "/requests"):
        state.faults.clear_requests()
        return {"requests": []}
    if key == ("POST", "/seed"):
        return {"seeded": state.seed(data)}
    if key == ("POST", "/reset"):
        state.reset(reseed=bool(data.get("reseed", True)))
        return {"reset": True}
    if key == ("GET", "/processes"):
        return {"processes": state.processes.snapshot()}
    if key in (("GET", "/config"), ("POST", "/config")):
        return _config(state, data if method == "POST" else {})
    raise ApiError(404, f"No emulator control route {method} {path}", "NOT_FOUND")


def _config(state: CloudRunState, data: dict) -> dict:
    unknown = set(data) - {"operation_polls_before_done"}
    if unknown:
        raise invalid(f"unknown config keys {sorted(unknown)}")
    if "operation_polls_before_done" in data:
        state.ops.polls_before_done = int(data["operation_polls_before_done"])
    return {"operation_polls_before_done": state.ops.polls_before_done}


# ---------------------------------------------------------------- the ASGI app


def build_app(state: CloudRunState, info: Callable[[], dict]) -> Starlette:
    """One catch-all route; dispatch is ours so that any path gets a Google-shaped answer."""

    async def endpoint(request: Request) -> JSONResponse:
        path, method = request.url.path, request.method
        body = (await request.body()).decode("utf-8", errors="replace")
        query = list(request.query_params.multi_items())
        try:
            status, payload = await run_in_threadpool(_route, state, method, path, query, body, info)
        except Exception as exc:  # a bug in the emulator must still answer in Google's shape
            log.exception("cloud run emulator failed on %s %s", method, path)
            status, payload = 500, ApiError(500, f"emulator error: {exc!r}", "INTERNAL").body()
        return JSONResponse(payload, status_code=status, headers=HEADER)

    async def logs(request: Request) -> PlainTextResponse:
        # Cloud Logging's stand-in: the plain output of an execution or a revision's process.
        name = request.path_params["name"]
        text = await run_in_threadpool(state.logs, name)
        if text is None:
            message = f"no local workload output for '{name}'\n"
            return PlainTextResponse(message, status_code=404, headers=HEADER)
        return PlainTextResponse(text, headers=HEADER)

    router = Router(state)

    async def emulated(request: Request):
        return await proxy(router, request)

    return Starlette(routes=[
        Route("/emulator/v1/logs/{name:path}", logs, methods=["GET"]),
        Route("/emulated/{path:path}", emulated, methods=ALL_METHODS + ["HEAD", "OPTIONS"]),
        Route("/{path:path}", endpoint, methods=ALL_METHODS),
    ])


def _route(state: CloudRunState, method: str, path: str, query: list, body: str, info) -> tuple[int, dict]:
    if path.startswith("/v2/"):
        return handle_v2(state, method, path, query, body)
    if path.startswith("/v3/"):  # the Cloud Monitoring emulation, on the same base URL
        return _faulted(state, method, path, query, lambda: monitoring.handle(state.served, method, path, query))
    if path == "/" or path.startswith("/emulator/v1"):
        return handle_control(state, method, path if path != "/" else "/emulator/v1", body, info())
    return 404, ApiError(404, f"{EMULATOR_LABEL}: nothing is served at {path}", "NOT_FOUND").body()
