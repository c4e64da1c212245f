"""gpuops' local registry stand-in: Registry HTTP API v2 manifests behind a bearer-token challenge, and Docker
Hub's repository API, on 127.0.0.1."""
from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from gpuops.emulator.fault_book import FaultBook, FaultSpec
from gpuops.emulator.loopback_server import LoopbackServer
from gpuops.registry import DOCKER_MANIFEST, INDEX_TYPES, OCI_INDEX, OCI_MANIFEST

REGISTRY_EMULATOR_LABEL = "gpuops local registry emulator \u2014 not Docker Hub nor any real registry"
SERVICE = "gpuops-registry-emulator"
GB, MB = 1000**3, 1000**2
LAYER_TYPES = {OCI_MANIFEST: "application/vnd.oci.image.layer.v1.tar+gzip",
               DOCKER_MANIFEST: "application/vnd.docker.image.rootfs.diff.tar.gzip"}
CONFIG_TYPES = {OCI_MANIFEST: "application/vnd.oci.image.config.v1+json",
                DOCKER_MANIFEST: "application/vnd.docker.container.image.v1+json"}


@dataclass
class SeedImage:
    """One tag: per platform ('linux/amd64') its layer sizes in bytes; with more than one platform, or
    `index`, the tag names an OCI index. Docker Hub's figures describe its repository."""

    repository: str
    tag: str
    layers: dict[str, list[int]]
    config_size: int = 7_340
    index: bool = True
    media_type: str = OCI_MANIFEST
    pulls: int = 0
    stars: int = 0
    last_updated: str = "2026-10-01T00:00:00.000000Z"
    private: bool = False


# Stand-in data shaped like the runbook's images (sizes as compressed config + layers, decimal GB).
DEFAULT_IMAGES = (
    SeedImage("library/ubuntu", "22.04", {"linux/amd64": [29_533_950], "linux/arm64": [27_360_712]},
              config_size=2_297, pulls=1_000_000_000, stars=17_000, last_updated="2026-11-10T08:12:40.000000Z"),
    SeedImage("nvidia/cuda", "12.4.1-runtime-ubuntu22.04",
              {"linux/amd64": [29_533_950, 4_620_112, 56_080_431, 185, 6_883, 1_408_117_420, 2_540_903_118],
               "linux/arm64": [27_360_712, 4_401_210, 51_222_004, 185, 6_883, 1_302_551_902, 2_401_133_772]},
              pulls=100_000_000, stars=3_100, last_updated="2026-09-18T16:02:11.000000Z"),
    SeedImage("nvidia/cuda", "12.4.1-cudnn-devel-ubuntu22.04",
              {"linux/amd64": [29_533_950, 4_620_112, 56_080_431, 185, 6_883, 1_408_117_420, 2_540_903_118,
                               6_870_224_017, 9_102_556_318, 5_310_882_101]},
              pulls=100_000_000, stars=3_100, last_updated="2026-09-18T16:02:11.000000Z"),
    # The runbook's image: 173 GB, one platform, a Docker v2 manifest (no index); 404 pulls, no star.
    SeedImage("valyriantech/ace-step-1.5", "latest",
              {"linux/amd64": [29_533_950, 4_620_112, 56_080_431, 2_540_903_118] + [17_036_900_000] * 10},
              config_size=11_208, index=False, media_type=DOCKER_MANIFEST, pulls=404, stars=0,
              last_updated="2025-11-02T03:44:09.000000Z"),
)


class RegistryError(Exception):
    """An answer in the registry's error shape: {"errors": [{"code", "message", "detail"}]}."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


@dataclass
class RegistryRequest:
    """One logged request: the Accept header and whether a token came, never the token."""

    method: str
    path: str
    accept: str
    authorized: bool
    status: int
    fault: int | None = None


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class RegistryStore:
    """Manifests by (repository, tag or digest) as the exact bytes served; tokens by the scopes they allow."""

    manifests: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)
    repos: dict[str, SeedImage] = field(default_factory=dict)
    tokens: dict[str, set[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, image: SeedImage) -> str:
        """Store an image's manifests (and its index); returns the tag's digest."""
        with self.lock:
            self.repos[image.repository] = image
            children = [self._put(image.repository, self._manifest(image, sizes), image.media_type)
                        + (platform,) for platform, sizes in image.layers.items()]
            if image.index or len(children) > 1:
                index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
                    {"mediaType": image.media_type, "digest": digest, "size": size,
                     "platform": {"os": platform.split("/")[0], "architecture": platform.split("/")[1]}}
                    for digest, size, platform in children]}
                digest, _ = self._put(image.repository, index, OCI_INDEX)
            else:
                digest = children[0][0]
            self.manifests[(image.repository, image.tag)] = self.manifests[(image.repository, digest)]
            return digest

    def _put(self, repository: str, body: dict, media_type: str) -> tuple[str, int]:
        data = json.dumps(body, indent=3).encode()
        digest = _digest(data)
        self.manifests[(repository, digest)] = (media_type, data)
        return digest, len(data)

    def clear(self) -> None:
        with self.lock:
            self.manifests.clear()
            self.repos.clear()
            self.tokens.clear()

    @staticmethod
    def _manifest(image: SeedImage, sizes: list[int]) -> dict:
        layer_type = LAYER_TYPES[image.media_type]
        return {"schemaVersion": 2, "mediaType": image.media_type,
                "config": {"mediaType": CONFIG_TYPES[image.media_type], "size": image.config_size,
                           "digest": _digest(f"{image.repository}:{image.tag}:config".encode())},
                "layers": [{"mediaType": layer_type, "size": size,
                            "digest": _digest(f"{image.repository}:{image.tag}:{i}:{size}".encode())}
                           for i, size in enumerate(sizes)]}

    def manifest(self, repository: str, reference: str, accept: str) -> tuple[str, bytes]:
        with self.lock:
            if repository not in self.repos:
                raise RegistryError(404, "NAME_UNKNOWN", f"repository name not known to registry: {repository}")
            found = self.manifests.get((repository, reference))
            if found is None:
                raise RegistryError(404, "MANIFEST_UNKNOWN", f"manifest unknown: {repository}:{reference}")
        media_type, data = found
        if media_type in INDEX_TYPES and not any(t in accept for t in INDEX_TYPES):
            # A client that does not take an index gets the linux/amd64 manifest, as registries fall back.
            amd64 = next(m["digest"] for m in json.loads(data)["manifests"]
                         if m["platform"] == {"os": "linux", "architecture": "amd64"})
            return self.manifest(repository, amd64, accept)
        return found

    def issue_token(self, scope: str) -> str:
        repository = scope.split(":")[1] if scope.count(":") >= 2 else ""
        image = self.repos.get(repository)
        allowed = {scope} if image is not None and not image.private else set()
        token = secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[token] = allowed
        return token

    def allows(self, token: str, repository: str) -> bool:
        with self.lock:
            return f"repository:{repository}:pull" in self.tokens.get(token, set())


class RegistryFault(FaultSpec):
    """Answer `status` to matching requests (mode "before" only: reads change nothing)."""

    MODES = ("before",)


# ---------------------------------------------------------------- the HTTP app


def _error_response(err: RegistryError):
    from starlette.responses import JSONResponse

    return JSONResponse({"errors": [{"code": err.code, "message": err.message, "detail": None}]},
                        status_code=err.status, headers=err.headers)


class RegistryRoutes:
    """The endpoints; each gets the request and the bearer token it carried ('' if none)."""

    def __init__(self, emulator: "RegistryEmulator"):
        self.emulator = emulator

    def handler(self, fn):
        """Injected faults first, errors in the registry's shape, every request logged (never its token)."""
        async def endpoint(request):
            faults = self.emulator.faults
            fault = faults.take(request.method, request.url.path)
            auth = request.headers.get("authorization", "")
            try:
                if fault is not None:
                    raise RegistryError(fault.status, "UNAVAILABLE", fault.message or f"injected fault: {fault.status}")
                response = fn(request, auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else "")
            except RegistryError as err:
                response = _error_response(err)
            response.headers["X-Gpuops-Emulator"] = "registry"
            faults.record(RegistryRequest(request.method, request.url.path, request.headers.get("accept", ""),
                                          bool(auth), response.status_code, fault.id if fault else None))
            return response
        return endpoint

    def challenge(self, repository: str | None = None) -> dict:
        scope = f',scope="repository:{repository}:pull"' if repository else ""
        return {"WWW-Authenticate": f'Bearer realm="{self.emulator.url}/token",service="{SERVICE}"{scope}'}

    def info(self, request, token):
        from starlette.responses import JSONResponse

        return JSONResponse(self.emulator.info())

    def base(self, request, token):
        from starlette.responses import JSONResponse

        if not token:
            raise RegistryError(401, "UNAUTHORIZED", "authentication required", self.challenge())
        return JSONResponse({})

    def token(self, request, token):
        from starlette.responses import JSONResponse

        if request.query_params.get("service") != SERVICE:
            raise RegistryError(400, "DENIED", f"unknown service {request.query_params.get('service')!r}")
        issued = self.emulator.store.issue_token(request.query_params.get("scope", ""))
        return JSONResponse({"token": issued, "access_token": issued, "expires_in": 300,
                             "issued_at": "2026-11-22T00:00:00Z"})

    def manifest(self, request, token):
        from starlette.responses import Response

        store = self.emulator.store
        repository, reference = request.path_params["name"], request.path_params["reference"]
        if not token:
            raise RegistryError(401, "UNAUTHORIZED", "authentication required", self.challenge(repository))
        if not store.allows(token, repository):
            # As Docker Hub: a repository that does not exist is answered like a private one.
            raise RegistryError(401, "UNAUTHORIZED", "authentication required: insufficient_scope",
                                self.challenge(repository))
        media_type, data = store.manifest(repository, reference, request.headers.get("accept", ""))
        return Response(data, media_type=media_type, headers={"Docker-Content-Digest": _digest(data)})

    def hub_repository(self, request, token):
        from starlette.responses import JSONResponse

        ns, name = request.path_params["ns"], request.path_params["name"]
        image = self.emulator.store.repos.get(f"{ns}/{name}")
        if image is None or image.private:
            return JSONResponse({"message": "httperror 404: object not found"}, status_code=404)
        return JSONResponse({"user": ns, "name": name, "namespace": ns, "repository_type": "image", "status": 1,
                             "is_private": False, "star_count": image.stars, "pull_count": image.pulls,
                             "last_updated": image.last_updated, "description": REGISTRY_EMULATOR_LABEL})


def build_app(emulator: "RegistryEmulator"):
    from starlette.applications import Starlette
    from starlette.routing import Route

    r = RegistryRoutes(emulator)
    routes = [
        Route("/emulator/v1/info", r.handler(r.info)),
        Route("/v2/", r.handler(r.base)),
        Route("/token", r.handler(r.token)),
        Route("/v2/repositories/{ns}/{name}/", r.handler(r.hub_repository)),
        Route("/v2/{name:path}/manifests/{reference}", r.handler(r.manifest)),
    ]

    async def not_found(request, exc):
        return _error_response(RegistryError(getattr(exc, "status_code", 404), "NOT_FOUND",
                                             f"{REGISTRY_EMULATOR_LABEL}: nothing is served at {request.method} "
                                             f"{request.url.path}"))

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


# ---------------------------------------------------------------- the server


class RegistryEmulator(LoopbackServer):
    """`with RegistryEmulator() as reg:` then GPUOPS_REGISTRY_URL=reg.url and GPUOPS_DOCKER_HUB_API=reg.url.

    Holds DEFAULT_IMAGES (a 4 GB runtime image, a 25 GB devel image, the runbook's 173 GB image, ubuntu);
    `add_image(SeedImage(...))`, `add_fault("GET", "/manifests/", 503)`, `requests()` for the log.
    """

    name = "registry emulator"

    def __init__(self, port: int = 0, images: tuple[SeedImage, ...] = DEFAULT_IMAGES):
        super().__init__(port)
        self.store = RegistryStore()
        self.faults: FaultBook[RegistryFault] = FaultBook(RegistryFault)
        self._seed = images
        for image in images:
            self.store.add(image)

    def _app(self):
        return build_app(self)

    def info(self) -> dict[str, Any]:
        return {"name": REGISTRY_EMULATOR_LABEL, "emulator": "registry", "url": self.url if self.port else None,
                "images": sorted(f"{r}:{t}" for r, t in self.store.manifests if not t.startswith("sha256:")),
                "api": "GET /v2/, /token, /v2/<name>/manifests/<ref> (bearer challenge), "
                       "/v2/repositories/<ns>/<name>/ (Docker Hub)"}

    def add_image(self, image: SeedImage) -> str:
        return self.store.add(image)

    def add_fault(self, method: str = "*", path: str = ".*", status: int = 503, times: int = 1,
                  skip: int = 0) -> RegistryFault:
        return self.faults.add(method=method, path=path, status=status, times=times, skip=skip)

    def requests(self, method: str | None = None, path: str | None = None) -> list[RegistryRequest]:
        return self.faults.requests(method, path)

    def reset(self) -> None:
        """Only the seed images; no faults, tokens or logged requests."""
        self.faults.clear_faults()
        self.faults.clear_requests()
        self.store.clear()
        for image in self._seed:
            self.store.add(image)


def serve(port: int = 8791) -> None:
    """Run the stand-in in the foreground until interrupted (for `gpuops emulate registry`)."""
    emulator = RegistryEmulator(port=port)
    emulator.serve_forever(lambda: f"{REGISTRY_EMULATOR_LABEL}\nlistening on {emulator.url}  "
                                   f"(GPUOPS_REGISTRY_URL={emulator.url} GPUOPS_DOCKER_HUB_API={emulator.url})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpuops emulate registry", description=REGISTRY_EMULATOR_LABEL)
    parser.add_argument("--port", type=int, default=8791, help="port on 127.0.0.1 (0 picks a free one)")
    serve(parser.parse_args(argv).port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
