"""gpuops' local Hugging Face Hub emulator: the commit API HfApi uses (create, preupload, commit), on 127.0.0.1."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .hf_hub_store import REPO_TYPES, HubError, HubStore
from .fault_book import FaultBook, FaultSpec
from .loopback_server import LoopbackServer

HF_EMULATOR_LABEL = "gpuops local Hugging Face Hub emulator \u2014 not huggingface.co"
HEADER = {"X-Gpuops-Emulator": "hf-hub"}
MAX_BODY = 256 * 1024 * 1024
KINDS = {f"{t}s": t for t in REPO_TYPES}
WRITE_ROUTES = re.compile(r"^/api/(repos/create|[a-z]+s/[^/]+/[^/]+/(preupload|commit|branch)/)")


# ---------------------------------------------------------------- faults and the request log


@dataclass
class HubFault(FaultSpec):
    """Answer `status` (with `headers`, e.g. {"Retry-After": "1"}) to requests matching `method` and the
    path regex, `times` times once `skip` matching requests went through. mode "before": nothing changes;
    "after": the request is applied, then its answer is replaced by the error (a lost answer)."""

    MODES = ("before", "after")

    headers: dict[str, str] = field(default_factory=dict)

    def error(self) -> HubError:
        return HubError(self.status, self.message or f"Injected fault ({self.mode}): HTTP {self.status}")


@dataclass
class HubRequest:
    """One logged request: never its headers or body (the token and the content stay out)."""

    method: str
    path: str
    query: str
    status: int
    authorized: bool
    fault: int | None = None


# ---------------------------------------------------------------- the HTTP app


def error_response(err: HubError):
    from starlette.responses import JSONResponse

    return JSONResponse({**err.extra, "error": err.message}, status_code=err.status, headers={**HEADER, **err.headers()})


def _repo(request) -> tuple[str, str]:
    kind = request.path_params["kind"]
    if kind not in KINDS:
        raise HubError(404, f"{HF_EMULATOR_LABEL}: nothing is served at {request.url.path}")
    return KINDS[kind], f"{request.path_params['ns']}/{request.path_params['name']}"


async def _json(request) -> Any:
    try:
        return json.loads(await request.body() or b"{}")
    except ValueError:
        raise HubError(400, "Invalid JSON body") from None


def parse_commit_body(raw: bytes, content_type: str) -> tuple[dict, list[dict]]:
    """The NDJSON commit payload: a header line, then one line per operation."""
    if not content_type.startswith("application/x-ndjson"):
        raise HubError(400, f"Invalid Content-Type {content_type!r}: expected application/x-ndjson")
    try:
        lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
    except ValueError:
        raise HubError(400, "Invalid commit payload: every line must be a JSON object") from None
    if not lines or not isinstance(lines[0], dict) or lines[0].get("key") != "header":
        raise HubError(400, "Invalid commit payload: the first line must be the header")
    header = lines[0].get("value")
    if not isinstance(header, dict) or not isinstance(header.get("summary"), str) or not header["summary"].strip():
        raise HubError(400, "Invalid commit payload: the header needs a non-empty 'summary'")
    if not all(isinstance(line, dict) for line in lines[1:]):
        raise HubError(400, "Invalid commit payload: every line must be a JSON object")
    return header, lines[1:]


def build_app(store: HubStore, info: Any):
    """The Starlette app: every answer is JSON; errors in the Hub's shape."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def handler(fn):
        async def endpoint(request):
            try:
                return JSONResponse(await fn(request), headers=HEADER)
            except HubError as err:
                return error_response(err)
        return endpoint

    async def create_repo(request):
        body = await _json(request)
        if not isinstance(body, dict):
            raise HubError(400, "Invalid JSON body")
        return store.create_repo(body)

    async def validate_yaml(request):
        return _validate_card(await _json(request))

    async def repo_info(request):
        return store.info(*_repo(request), request.path_params.get("revision", "main"))

    async def preupload(request):
        body = await _json(request)
        files = body.get("files") if isinstance(body, dict) else None
        return {"files": store.preupload(*_repo(request), request.path_params["revision"], files),
                "commitOid": store.resolve(*_repo(request), request.path_params["revision"])}

    async def commit(request):
        if request.query_params.get("create_pr"):
            raise HubError(400, "Pull requests are not emulated: commit to a branch")
        header, ops = parse_commit_body(await request.body(), request.headers.get("content-type", ""))
        return store.commit(*_repo(request), request.path_params["revision"], header, ops)

    async def create_branch(request):
        body = await _json(request)
        start = body.get("startingPoint") if isinstance(body, dict) else None
        store.create_branch(*_repo(request), request.path_params["branch"], start)
        return {}

    async def commits(request):
        history = store.history(*_repo(request), request.path_params["revision"])
        return [{"id": c["oid"], "title": c["title"], "message": c["message"], "date": c["date"],
                 "authors": [{"user": "emulator-user"}]} for c in history]

    async def refs(request):
        branches = store.refs(*_repo(request))
        return {"branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid} for b, oid in branches.items()],
                "converts": [], "tags": []}

    async def emulator_info(request):
        return info()

    repo = "/api/{kind}/{ns}/{name}"
    routes = [
        Route("/emulator/v1/info", handler(emulator_info)),
        Route("/api/repos/create", handler(create_repo), methods=["POST"]),
        Route("/api/validate-yaml", handler(validate_yaml), methods=["POST"]),
        Route(repo, handler(repo_info)),
        Route(repo + "/revision/{revision:path}", handler(repo_info)),
        Route(repo + "/preupload/{revision:path}", handler(preupload), methods=["POST"]),
        Route(repo + "/commit/{revision:path}", handler(commit), methods=["POST"]),
        Route(repo + "/branch/{branch:path}", handler(create_branch), methods=["POST"]),
        Route(repo + "/commits/{revision:path}", handler(commits)),
        Route(repo + "/refs", handler(refs)),
    ]

    async def not_found(request, exc):
        return error_response(HubError(getattr(exc, "status_code", 404),
                                       f"{HF_EMULATOR_LABEL}: nothing is served at {request.method} {request.url.path}"))

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


def _validate_card(body: Any) -> dict:
    """/api/validate-yaml: the README's front matter must be a YAML mapping (the Hub checks more)."""
    import yaml

    content = body.get("content") if isinstance(body, dict) else None
    if not isinstance(content, str):
        raise HubError(400, "Invalid body: 'content' must be a string")
    match = re.match(r"^---\r?\n(.*?)\r?\n---", content, re.S)
    if match:
        try:
            meta = yaml.safe_load(match.group(1))
        except yaml.YAMLError as exc:
            raise HubError(400, f"Invalid YAML metadata in README.md: {exc}") from None
        if meta is not None and not isinstance(meta, dict):
            raise HubError(400, "Invalid YAML metadata in README.md: it must be a mapping")
    return {"errors": [], "warnings": []}


class Guard:
    """ASGI wrapper: the emulator header, optional token check on writes, injected faults, the request log."""

    def __init__(self, app: Any, faults: FaultBook, token: str | None):
        self.app, self.faults, self.token = app, faults, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        method, path = scope["method"], scope["path"]
        auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        fault = self.faults.take(method, path) if path.startswith("/api/") else None
        logged: list[int] = []

        def record(status: int) -> None:
            if path.startswith("/api/") and not logged:
                logged.append(status)
                self.faults.record(HubRequest(method, path, scope.get("query_string", b"").decode("latin-1"), status,
                                              auth.startswith("Bearer ") and len(auth) > 7, fault.id if fault else None))

        async def send_logged(message):
            if message["type"] == "http.response.start":
                record(message["status"])  # before the client can read the answer (and the log)
            await send(message)

        try:
            await self._answer(scope, receive, send_logged, fault, auth)
        finally:
            record(500)

    async def _answer(self, scope, receive, send, fault, auth):
        if self.token and WRITE_ROUTES.match(scope["path"]) and auth != f"Bearer {self.token}":
            return await self._error(scope, receive, send, HubError(401, "Invalid credentials in Authorization header"))
        if fault is not None and fault.mode == "before":
            return await self._error(scope, receive, send, fault.error(), fault.headers)
        if fault is not None:  # "after": the request lands, its answer is lost
            async def swallow(message):
                pass
            await self.app(scope, receive, swallow)
            return await self._error(scope, receive, send, fault.error(), fault.headers)
        await self.app(scope, receive, send)

    @staticmethod
    async def _error(scope, receive, send, err: HubError, headers: dict | None = None):
        response = error_response(err)
        response.headers.update(headers or {})
        await response(scope, receive, send)


# ---------------------------------------------------------------- the server


class HfHubEmulator(LoopbackServer):
    """The Hub's commit API on 127.0.0.1 for `HfApi(endpoint=emu.url)`; content under `data_dir`.

    `with HfHubEmulator(data_dir) as emu:`; then `emu.commits("org/name")`, `emu.files("org/name")`,
    `emu.commit_dir("org/name", oid)`, `emu.add_fault("POST", "/commit/", 429, headers={"Retry-After": "1"})`.
    With `token`, writes without `Authorization: Bearer <token>` get 401.
    """

    def __init__(self, data_dir: str | Path | None = None, port: int = 0, token: str | None = None):
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="gpuops-hf-hub-"))
        super().__init__(port)
        self.store = HubStore(self.data_dir, lambda: self.url)
        self.faults = FaultBook(HubFault)
        self._token = token

    name = "Hugging Face Hub emulator"

    def _app(self):
        return Guard(build_app(self.store, self.info), self.faults, self._token)

    def stop(self) -> None:
        super().stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # ------------------------------------------------------------ test helpers

    def info(self) -> dict[str, Any]:
        return {"name": HF_EMULATOR_LABEL, "emulator": "hf-hub", "url": self.url if self.port else None,
                "data_dir": str(self.data_dir), "token_required": bool(self._token),
                "api": "repos/create, validate-yaml, preupload, commit (regular files), branch, commits, refs, "
                       "repo info; no LFS/Xet, no pull requests"}

    def add_fault(self, method: str = "*", path: str = ".*", status: int = 503, times: int = 1,
                  headers: dict[str, str] | None = None, mode: str = "before", skip: int = 0,
                  message: str = "") -> HubFault:
        return self.faults.add(method=method, path=path, status=status, times=times, headers=dict(headers or {}),
                               mode=mode, skip=skip, message=message)

    def clear_faults(self) -> None:
        self.faults.clear_faults()

    def requests(self, method: str | None = None, path: str | None = None) -> list[HubRequest]:
        """Logged /api requests, optionally filtered by method and a path regex."""
        return self.faults.requests(method, path)

    def clear_requests(self) -> None:
        self.faults.clear_requests()

    def reset(self) -> None:
        """No repositories, faults or logged requests."""
        self.faults.clear_faults()
        self.faults.clear_requests()
        self.store.reset()

    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[dict]:
        """The commits of a revision, newest first: oid, parent, branch, title, message, added, deleted."""
        return self.store.history(repo_type, repo_id, revision)

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Every file of a revision, read from its commit's folder on disk."""
        return self.store.files(repo_type, repo_id, self.store.resolve(repo_type, repo_id, revision))

    def commit_dir(self, repo_id: str, oid: str, repo_type: str = "model") -> Path:
        """The folder of one commit: commit.json and tree/."""
        return self.store.tree_dir(repo_type, repo_id, oid).parent


def serve(port: int = 8790, data_dir: str | None = None) -> None:
    """Run the emulator in the foreground until interrupted (for `gpuops emulate hf-hub`)."""
    emulator = HfHubEmulator(data_dir=data_dir, port=port)
    emulator.serve_forever(lambda: f"{HF_EMULATOR_LABEL}\nlistening on {emulator.url}  "
                                   f"(HF_ENDPOINT={emulator.url} HF_HUB_DISABLE_XET=1)\ncontent under {emulator.data_dir}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpuops emulate hf-hub", description=HF_EMULATOR_LABEL)
    parser.add_argument("--port", type=int, default=8790, help="port on 127.0.0.1 (0 picks a free one)")
    parser.add_argument("--data", help="directory keeping the repositories (default: a temporary one)")
    args = parser.parse_args(argv)
    serve(args.port, args.data)
    return 0


__all__ = ["HF_EMULATOR_LABEL", "HfHubEmulator", "HubFault", "HubRequest", "serve", "main"]
