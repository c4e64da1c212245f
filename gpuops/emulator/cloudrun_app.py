"""HTTP layer of the Cloud Run emulator: v2 REST routes, control routes, faults and request log."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable

from google.cloud import run_v2
from google.longrunning import operations_pb2
from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .cloudrun import EMULATOR_LABEL, CloudRunState, LoggedRequest
from .cloudrun_common import LOCATION_PREFIX, ApiError, invalid, parse_body, parse_query, to_json_dict
from .cloudrun_ops import frozen

log = logging.getLogger(__name__)

HEADER = {"X-Gpuops-Emulator": "cloud-run"}
ALL_METHODS = ["GET", "POST", "PATCH", "PUT", "DELETE"]
ID = r"[^/:]+"


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
    return state.ops.start(call.location, frozen(svc))


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
    svc = state.services.update(body, mask, req.allow_missing, req.validate_only)
    return state.ops.start(call.location, frozen(svc))


def delete_service(state: CloudRunState, call: Call) -> Message:
    req = parse_query(call.query, run_v2.DeleteServiceRequest)
    svc = state.services.delete(call.name, req.etag, req.validate_only)
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
    return state.ops.start(call.location, frozen(rev))


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
    fault = state.faults.take(method, path)
    if fault is not None and fault.mode == "before":
        status, payload = fault.error().code, fault.error().body()
    else:
        status, payload = dispatch_v2(state, call, path)
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

    return Starlette(routes=[Route("/{path:path}", endpoint, methods=ALL_METHODS)])


def _route(state: CloudRunState, method: str, path: str, query: list, body: str, info) -> tuple[int, dict]:
    if path.startswith("/v2/"):
        return handle_v2(state, method, path, query, body)
    if path == "/" or path.startswith("/emulator/v1"):
        return handle_control(state, method, path if path != "/" else "/emulator/v1", body, info())
    return 404, ApiError(404, f"{EMULATOR_LABEL}: nothing is served at {path}", "NOT_FOUND").body()
