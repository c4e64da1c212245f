"""The hub's HTTP side (CONTRACTS §5): validate, write to the outbox, answer 202; the dispatcher does the rest.

An answer never waits for Prefect: a request is accepted once it is durable in the outbox. A repeat
of an idempotency key (Idempotency-Key, X-GitHub-Delivery, the Pub/Sub message id) gets the first
answer and never a second task. Bodies are read up to a limit and refused beyond it before they are
read whole. Nothing of a request body or a secret is logged.
"""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field

# Module level (not inside create_app): FastAPI resolves the handlers' annotations in this module's globals.
# Only `gpuops hub` imports this module, so the CLI's other commands do not pay for FastAPI.
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from gpuops.errors import BadInput
from gpuops.hub import hub_auth, routing

MAX_BODY_BYTES = 1 << 20  # 1 MiB: a task is a URI and a few parameters, not a file
_KEY_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")


@dataclass
class IntakeSettings:
    """What the hub's HTTP side needs: its credentials (hub_auth.HubSettings: env, else Secret blocks) and routing."""

    secrets: hub_auth.HubSettings = field(default_factory=hub_auth.HubSettings)
    github_default_branch: str | None = None  # None: the repository's own default branch
    enable_gke_route: bool = False
    gke_backlog_threshold: int = 20
    max_body_bytes: int = MAX_BODY_BYTES
    deployments: dict = field(default_factory=lambda: {
        "gpu:cloud-run": "process-file/gpu-work", "gpu:gke": "process-file/gpu-work-gke",
        "cpu": "process-file/cpu-work", "github-push": "build-run-publish/build-run-publish"})

    @classmethod
    def from_env(cls, blocks: dict | None = None, **overrides) -> "IntakeSettings":
        settings = cls(secrets=hub_auth.settings_from_env(blocks=blocks),
                       enable_gke_route=os.environ.get("ENABLE_GKE_ROUTE", "").lower() in ("1", "true", "yes"))
        for name, value in overrides.items():
            if value is not None:
                setattr(settings, name, value)
        return settings


def create_app(outbox, dispatcher, settings: IntakeSettings):
    app = FastAPI(title="gpuops hub", docs_url=None, redoc_url=None, openapi_url=None)
    secrets = settings.secrets
    try:
        pubsub_auth, pubsub_unset = secrets.pubsub_auth(), None
    except BadInput as exc:
        pubsub_auth, pubsub_unset = None, str(exc)  # the endpoint then refuses every push, saying what to fix

    def answer(status: int, body: dict) -> JSONResponse:
        return JSONResponse(body, status_code=status)

    def refused(status: int, error: str, message: str, field_name: str | None = None) -> JSONResponse:
        body = {"error": error, "message": message}
        if field_name:
            body["field"] = field_name
        return answer(status, body)

    async def read_body(request: Request) -> bytes | JSONResponse:
        """The raw body, or a 413 as soon as it passes the limit (declared or streamed)."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
            return refused(413, "too-large", f"body of {declared} bytes is over the {settings.max_body_bytes}-byte "
                                             "limit: send a URI to the file, not the file")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.max_body_bytes:
                return refused(413, "too-large", f"body is over the {settings.max_body_bytes}-byte limit: send a "
                                                 "URI to the file, not the file")
            chunks.append(chunk)
        return b"".join(chunks)

    async def accept(new) -> tuple[dict, bool]:
        task, created = await run_in_threadpool(outbox.accept, new)  # durable (fsync) before we answer
        if created:
            dispatcher.nudge()
        return task.answer, created

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        # One JSON shape for every answer; the exception's text may quote the request, so it stays out.
        return refused(500, "internal", f"the hub failed on this request ({type(exc).__name__}); it was not "
                                        "accepted unless an earlier answer said so: send it again")

    @app.get("/healthz")
    def healthz():
        # The overflow's inputs, so an operator (and a probe) sees why GPU work goes where it goes.
        return {"ok": True, "gke_route": {"enabled": settings.enable_gke_route,
                                          "cloud_run_backlog": dispatcher.cloud_run_backlog,
                                          "threshold": settings.gke_backlog_threshold}}

    @app.post("/v1/tasks")
    async def post_task(request: Request):
        if not hub_auth.api_key_ok(request.headers.get("x-api-key"), secrets.api_key):
            return refused(401, "unauthorized", "missing or wrong X-API-Key")
        body = await read_body(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            parsed = _json(body)
            checked = routing.check_task_body(parsed)
            client_key = _idempotency_key(request.headers.get("idempotency-key"))
            route = routing.route_of(checked["input_uri"])
            destination = routing.destination_of(request.headers.get("x-destination"), route,
                                                 settings.enable_gke_route, dispatcher.cloud_run_backlog,
                                                 settings.gke_backlog_threshold)
        except routing.BadRequest as exc:
            return refused(400, "bad-request", exc.message, exc.field)
        new = _new_task(settings, "task", f"task:{client_key}", route, destination, checked, client_key)
        first, _ = await accept(new)
        return answer(202, first)

    @app.get("/v1/tasks/{task_id}")
    async def get_task(task_id: str, request: Request):
        if not hub_auth.api_key_ok(request.headers.get("x-api-key"), secrets.api_key):
            return refused(401, "unauthorized", "missing or wrong X-API-Key")
        task = await run_in_threadpool(outbox.get, task_id)
        if task is None:
            return refused(404, "not-found", f"no task {task_id[:64]!r} in this hub's outbox")
        return answer(200, task_view(task))

    @app.post("/v1/webhooks/github")
    async def github(request: Request):
        body = await read_body(request)
        if isinstance(body, JSONResponse):
            return body
        if not secrets.github_secret or not hub_auth.github_signature_ok(
                secrets.github_secret.encode(), body, request.headers.get("x-hub-signature-256")):
            return refused(401, "unauthorized", "missing or wrong X-Hub-Signature-256 (or no webhook secret set)")
        try:
            push = routing.github_push(request.headers.get("x-github-event"), _json(body),
                                       settings.github_default_branch)
            if push.kind == "ping":
                return answer(200, {"ok": "pong"})
            if push.kind == "ignored":
                return answer(202, {"ignored": push.reason})
            delivery = _idempotency_key(request.headers.get("x-github-delivery"), field_name="X-GitHub-Delivery",
                                        required=True)
        except routing.BadRequest as exc:
            return refused(400, "bad-request", exc.message, exc.field)
        new = _new_task(settings, "github-push", f"github:{delivery}", None, None,
                        {"repo": push.push["repo"], "ref": push.push["ref"], "sha": push.push["sha"]}, delivery)
        first, _ = await accept(new)
        return answer(202, first)

    @app.post("/v1/pubsub/push")
    async def pubsub(request: Request):
        try:
            if pubsub_auth is None:
                raise hub_auth.Unauthorized(f"this hub refuses Pub/Sub pushes: {pubsub_unset}", 403)
            await run_in_threadpool(pubsub_auth.check, request.headers.get("authorization"),
                                    request.query_params.get("token"))  # may fetch Google's certs
        except hub_auth.Unauthorized as exc:
            return refused(exc.status, "unauthorized", exc.reason)
        except hub_auth.AuthUnavailable as exc:
            return refused(503, "auth-unavailable", str(exc))  # Pub/Sub retries
        body = await read_body(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            message = routing.pubsub_envelope(_json(body))
        except routing.BadRequest as exc:
            return refused(400, "bad-request", exc.message, exc.field)
        if message["ignored"]:
            return answer(200, {"ignored": message["ignored"]})
        route = routing.route_of(message["input_uri"])
        destination = routing.destination_of(None, route, settings.enable_gke_route, dispatcher.cloud_run_backlog,
                                             settings.gke_backlog_threshold)
        new = _new_task(settings, "pubsub", f"pubsub:{message['message_id']}", route, destination,
                        {"input_uri": message["input_uri"], "params": {"pubsub_attributes": message["attributes"]}},
                        message["message_id"])
        first, _ = await accept(new)
        return answer(202, first)

    return app


def task_view(task) -> dict:
    """GET /v1/tasks/{id}: where the task is; the request itself is not echoed."""
    return {"id": task.id, "state": task.state, "flow_run_id": task.flow_run_id, "route": task.route,
            "destination": task.destination, "kind": task.kind, "deployment": task.deployment,
            "attempts": task.attempts, "last_error": task.last_error, "idempotency_key": task.idempotency_key,
            "created": _utc(task.created_at), "updated": _utc(task.updated_at)}


def _utc(epoch_s: float | None) -> str | None:
    from datetime import datetime, timezone

    return None if epoch_s is None else datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _new_task(settings: IntakeSettings, kind: str, key: str, route, destination, request: dict, given_key: str):
    """The outbox row and the 202 answer it will give to every repeat of `key` (namespaced by source, so a
    client's key cannot collide with a GitHub delivery or a Pub/Sub message id; `given_key` as received)."""
    from gpuops.hub.outbox import NewTask

    task_id = str(uuid.uuid4())
    deployment = settings.deployments["github-push" if kind == "github-push" else
                                      ("cpu" if route == "cpu" else f"gpu:{destination}")]
    parameters = dict(request) if kind == "github-push" else {"task_id": task_id, **request}
    first = {"id": task_id, "status_url": f"/v1/tasks/{task_id}", "route": route, "destination": destination,
             "idempotency_key": given_key}
    return NewTask(id=task_id, idempotency_key=key, kind=kind, route=route, destination=destination,
                   deployment=deployment, parameters=parameters, answer=first)


def _json(body: bytes):
    try:
        return json.loads(body)
    except ValueError:
        raise routing.BadRequest("body", "is not JSON: send Content-Type application/json with a JSON object") from None


def _idempotency_key(value: str | None, field_name: str = "Idempotency-Key", required: bool = False) -> str:
    """The client's key, checked; absent, a fresh one (then every request is its own task)."""
    if value is None:
        if required:
            raise routing.BadRequest(field_name, "is missing: GitHub sends it with every delivery")
        return f"auto-{uuid.uuid4()}"
    if not 1 <= len(value) <= 200 or not set(value) <= _KEY_CHARS:
        raise routing.BadRequest(field_name, "must be 1-200 characters of letters, digits and - _ . : "
                                             "(e.g. a UUID)")
    return value
