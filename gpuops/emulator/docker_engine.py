"""gpuops' local Docker Engine stand-in: the HTTP API the docker SDK builds and pushes with, on 127.0.0.1."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
import tarfile
import threading
from dataclasses import dataclass, field
from typing import Any

from .fault_book import FaultBook, FaultSpec
from .loopback_server import LoopbackServer

DOCKER_EMULATOR_LABEL = "gpuops local Docker Engine stand-in \u2014 not a Docker engine: nothing is built or pushed"
API_VERSION, MIN_API_VERSION = "1.45", "1.24"
ENGINE_HEADERS = {"Api-Version": API_VERSION, "Docker-Experimental": "false", "Ostype": "linux",
                  "X-Gpuops-Emulator": "docker-engine"}
VERSION_PREFIX = re.compile(r"^/v\d+\.\d+(?=/)")  # the SDK puts /v1.45 before every path but /version
FAILING_RUN = re.compile(r"^RUN\s+false\s*$", re.I)


# ---------------------------------------------------------------- faults and what the engine received


@dataclass
class EngineFault(FaultSpec):
    """Answer `status` to requests matching `method` and the path regex (the /v1.xx prefix removed), `times`
    times once `skip` matching requests went through. mode "http": the engine answers `status` with
    {"message"}; "stream": a push streams its first lines, then the registry's error naming `status`, in the
    stream, as dockerd relays a registry's 5xx or 429."""

    MODES = ("http", "stream")

    status: int = 500

    def text(self) -> str:
        return self.message or f"injected fault: HTTP {self.status}"


@dataclass
class EngineRequest:
    """One logged request: never its headers or body (the registry auth and the context stay out)."""

    method: str
    path: str
    query: str
    status: int
    fault: int | None = None


@dataclass
class BuildRecord:
    tag: str
    files: list[str]
    image_id: str | None  # None: the build failed


@dataclass
class PushRecord:
    """A push as the engine received it: the decoded X-Registry-Auth's username and serveraddress. The
    password is kept only as a hash (`password_sha256`) so that a test can check it arrived."""

    name: str
    tag: str
    username: str | None
    serveraddress: str | None
    digest: str | None
    password_sha256: str | None = field(default=None, repr=False)


# ---------------------------------------------------------------- pure parts: context, auth, streams


def context_files(body: bytes) -> list[str]:
    """The file names of a build context (a tar, plain or gzip, as the SDK sends it)."""
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
        return sorted(m.name.removeprefix("./") for m in tar.getmembers() if m.isfile())


def read_member(body: bytes, name: str) -> str | None:
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
        try:
            member = tar.extractfile(name)
        except KeyError:
            return None
        return member.read().decode("utf-8", "replace") if member else None


def _with_tag(ref: str) -> str:
    """A reference without a tag means :latest, as for dockerd."""
    return ref if ":" in ref.rsplit("/", 1)[-1] else f"{ref}:latest"


def decode_registry_auth(header: str) -> dict:
    """X-Registry-Auth: base64url JSON {username, password, serveraddress} (padding optional, as dockerd reads it)."""
    try:
        auth = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (binascii.Error, ValueError):
        raise ValueError("invalid X-Registry-Auth header: not base64url JSON") from None
    if not isinstance(auth, dict):
        raise ValueError("invalid X-Registry-Auth header: not a JSON object")
    return auth


def build_stream(dockerfile: str, tag: str, image_id: str) -> tuple[list[dict], bool]:
    """The classic builder's stream for a Dockerfile: a step per instruction; `RUN false` fails its step."""
    steps = [line.strip() for line in dockerfile.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    items: list[dict] = [{"stream": f"[{DOCKER_EMULATOR_LABEL}]\n"}]
    for n, step in enumerate(steps, 1):
        items.append({"stream": f"Step {n}/{len(steps)} : {step}\n"})
        if FAILING_RUN.match(step):
            said = "The command '/bin/sh -c false' returned a non-zero code: 1"
            return items + [{"stream": " ---> Running in 0e1f2a3b4c5d\n"},
                            {"errorDetail": {"code": 1, "message": said}, "error": said}], False
        items.append({"stream": f" ---> {hashlib.sha256(f'{image_id}{n}'.encode()).hexdigest()[:12]}\n"})
    return items + [{"aux": {"ID": image_id}}, {"stream": f"Successfully built {image_id[7:19]}\n"},
                    {"stream": f"Successfully tagged {tag}\n"}], True


def push_stream(name: str, tag: str, digest: str, fault: EngineFault | None) -> list[dict]:
    """dockerd's push stream; a "stream" fault cuts it with the registry's error, as dockerd relays one."""
    layer = digest[7:19]
    items = [{"status": f"The push refers to repository [{name}]"},
             {"status": "Preparing", "progressDetail": {}, "id": layer},
             {"status": "Pushing", "progressDetail": {"current": 512, "total": 1024}, "progress": "[=====>  ]", "id": layer}]
    if fault is not None:
        said = fault.message or f"received unexpected HTTP status: {fault.status} {_REASONS.get(fault.status, '')}".strip()
        return items + [{"errorDetail": {"message": said}, "error": said}]
    return items + [{"status": "Pushed", "progressDetail": {}, "id": layer},
                    {"status": f"{tag}: digest: {digest} size: 528"},
                    {"progressDetail": {}, "aux": {"Tag": tag, "Digest": digest, "Size": 528}}]


_REASONS = {429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}


# ---------------------------------------------------------------- the engine's state and HTTP app


class EngineState:
    """Images by reference, and every build and push received, behind one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.images: dict[str, str] = {}
        self.builds: list[BuildRecord] = []
        self.pushes: list[PushRecord] = []

    def built(self, record: BuildRecord) -> None:
        with self._lock:
            self.builds.append(record)
            if record.image_id:
                self.images[record.tag] = record.image_id

    def pushed(self, record: PushRecord) -> None:
        with self._lock:
            self.pushes.append(record)

    def image(self, ref: str) -> str | None:
        with self._lock:
            return self.images.get(_with_tag(ref))

    def inspect(self, ref: str) -> dict | None:
        """GET /images/{name}/json's answer: the image's id, every tag on it, the digests its pushes got."""
        with self._lock:
            image_id = self.images.get(_with_tag(ref))
            if image_id is None:
                return None
            tags = sorted(r for r, i in self.images.items() if i == image_id)
            digests = [f"{p.name}@{p.digest}" for p in self.pushes if p.digest and f"{p.name}:{p.tag}" in tags]
        return {"Id": image_id, "RepoTags": tags, "RepoDigests": digests, "Os": "linux", "Architecture": "amd64",
                "Size": 528}

    def reset(self) -> None:
        with self._lock:
            self.images.clear()
            self.builds.clear()
            self.pushes.clear()


def build_app(state: EngineState, info: Any):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    def streamed(items: list[dict]) -> StreamingResponse:
        # No Content-Length: chunked, which is what the SDK's stream reader requires.
        return StreamingResponse((json.dumps(i) + "\r\n" for i in items), headers=ENGINE_HEADERS,
                                 media_type="application/json")

    def refused(status: int, message: str) -> JSONResponse:
        return JSONResponse({"message": message}, status_code=status, headers=ENGINE_HEADERS)

    async def ping(request):
        return PlainTextResponse("OK", headers=ENGINE_HEADERS)

    async def version(request):
        return JSONResponse({"Platform": {"Name": DOCKER_EMULATOR_LABEL}, "Version": "0.0.0-gpuops-emulator",
                             "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION, "Os": "linux",
                             "Arch": "amd64", "Components": []}, headers=ENGINE_HEADERS)

    async def build(request):
        body, tag = await request.body(), request.query_params.get("t", "")
        name = request.query_params.get("dockerfile") or "Dockerfile"
        try:
            files, dockerfile = context_files(body), read_member(body, name)
        except tarfile.TarError:
            return refused(400, "the build context is not a tar archive")
        if dockerfile is None:
            return refused(500, f"Cannot locate specified Dockerfile: {name}")  # dockerd's words and status
        image_id = "sha256:" + hashlib.sha256(body).hexdigest()
        items, ok = build_stream(dockerfile, tag, image_id)
        state.built(BuildRecord(tag, files, image_id if ok else None))
        return streamed(items)

    async def push(request):
        name, tag = request.path_params["name"], request.query_params.get("tag") or "latest"
        image_id = state.image(f"{name}:{tag}")
        if image_id is None:
            return refused(404, f"An image does not exist locally with the tag: {name}")
        header = request.headers.get("x-registry-auth")
        try:
            auth = decode_registry_auth(header) if header else {}
        except ValueError as exc:
            return refused(400, str(exc))
        fault = request.scope.get("gpuops.fault")
        digest = "sha256:" + hashlib.sha256(f"{image_id}{name}".encode()).hexdigest()
        password = auth.get("password")
        state.pushed(PushRecord(name, tag, auth.get("username"), auth.get("serveraddress"),
                                None if fault else digest,
                                hashlib.sha256(password.encode()).hexdigest() if isinstance(password, str) else None))
        return streamed(push_stream(name, tag, digest, fault))

    async def inspect(request):
        found = state.inspect(request.path_params["name"])
        if found is None:
            return refused(404, f"No such image: {request.path_params['name']}")
        return JSONResponse(found, headers=ENGINE_HEADERS)

    async def emulator_info(request):
        return JSONResponse(info())

    async def not_found(request, exc):
        return refused(getattr(exc, "status_code", 404), f"{DOCKER_EMULATOR_LABEL}: {request.method} "
                                                        f"{request.url.path} is not served")

    routes = [Route("/emulator/v1/info", emulator_info), Route("/_ping", ping, methods=["GET", "HEAD"]),
              Route("/version", version), Route("/build", build, methods=["POST"]),
              Route("/images/{name:path}/push", push, methods=["POST"]),
              Route("/images/{name:path}/json", inspect)]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


class Guard:
    """ASGI wrapper: strips the /v1.xx prefix, applies injected faults, logs each request (no headers, no body)."""

    def __init__(self, app: Any, faults: FaultBook):
        self.app, self.faults = app, faults

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = VERSION_PREFIX.sub("", scope["path"])
        scope = {**scope, "path": path, "raw_path": path.encode()}
        fault = self.faults.take(scope["method"], path) if path != "/emulator/v1/info" else None
        status: list[int] = []

        async def send_logged(message):
            if message["type"] == "http.response.start" and not status:
                status.append(message["status"])
                self.faults.record(EngineRequest(scope["method"], path, scope.get("query_string", b"").decode(),
                                                 message["status"], fault.id if fault else None))
            await send(message)

        if fault is not None and fault.mode == "http":
            from starlette.responses import JSONResponse

            response = JSONResponse({"message": fault.text()}, status_code=fault.status, headers=ENGINE_HEADERS)
            return await response(scope, receive, send_logged)
        await self.app({**scope, "gpuops.fault": fault}, receive, send_logged)


# ---------------------------------------------------------------- the server


class DockerEngineEmulator(LoopbackServer):
    """The Docker Engine API subset the docker SDK builds and pushes with, for `APIClient(base_url=emu.docker_host)`.

    `with DockerEngineEmulator() as emu:`; then `emu.builds`, `emu.pushes`, `emu.requests("POST", "/push$")`,
    `emu.add_fault("POST", "/push$", 500)` (the engine answers 500) or `mode="stream"` (the registry's 503 in
    the push stream). Nothing is built or pushed: a build records its context and tags an image id.
    """

    name = "Docker Engine stand-in"

    def __init__(self, port: int = 0):
        super().__init__(port)
        self.state = EngineState()
        self.faults = FaultBook(EngineFault)

    @property
    def docker_host(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def _app(self):
        return Guard(build_app(self.state, self.info), self.faults)

    def info(self) -> dict[str, Any]:
        return {"name": DOCKER_EMULATOR_LABEL, "emulator": "docker-engine", "api_version": API_VERSION,
                "docker_host": self.docker_host if self.port else None,
                "api": "_ping, version, build (classic builder stream), images/{name}/push, images/{name}/json"}

    @property
    def builds(self) -> list[BuildRecord]:
        return list(self.state.builds)

    @property
    def pushes(self) -> list[PushRecord]:
        return list(self.state.pushes)

    def add_fault(self, method: str = "*", path: str = ".*", status: int = 500, times: int = 1,
                  mode: str = "http", skip: int = 0, message: str = "") -> EngineFault:
        return self.faults.add(method=method, path=path, status=status, times=times, mode=mode, skip=skip,
                               message=message)

    def requests(self, method: str | None = None, path: str | None = None) -> list[EngineRequest]:
        return self.faults.requests(method, path)

    def reset(self) -> None:
        """No images, builds, pushes, faults or logged requests."""
        self.faults.clear_faults()
        self.faults.clear_requests()
        self.state.reset()


__all__ = ["DOCKER_EMULATOR_LABEL", "DockerEngineEmulator", "EngineFault", "EngineRequest", "BuildRecord",
           "PushRecord"]
