"""Registry adapter: an image's size from its OCI/Docker manifest and a repository's popularity on Docker Hub.

Endpoints (an environment variable wins; unset, the real services):

- `GPUOPS_REGISTRY_URL`: base URL of the Registry HTTP API v2 asked for every image's manifests (e.g. the
  stand-in, `http://127.0.0.1:PORT`). Unset: the image's own registry, `https://registry-1.docker.io` for
  Docker Hub images.
- `GPUOPS_DOCKER_HUB_API`: base URL of Docker Hub's API for `/v2/repositories/<ns>/<name>/`. Unset:
  `https://hub.docker.com`.

Reads only, anonymous: a registry that answers 401 with a `WWW-Authenticate: Bearer realm=...` challenge is
asked for a pull token at its realm (as `docker pull` does for public images) and the request is sent again.
The token is kept in the client for the scope and never logged. 429/5xx and lost connections are retried with
gpuops.retry; a 4xx is not.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, TypeVar

from gpuops.container_build import DOCKER_HUB, registry_of
from gpuops.errors import BadInput, CouldNotRun
from gpuops import host_rules
from gpuops.host_rules import Popularity, Verdict

T = TypeVar("T")
REGISTRY_ENV, HUB_ENV = "GPUOPS_REGISTRY_URL", "GPUOPS_DOCKER_HUB_API"
DOCKER_HUB_REGISTRY, DOCKER_HUB_API = "https://registry-1.docker.io", "https://hub.docker.com"
TIMEOUT_S = 30.0
TRANSIENT_STATUS = {429, 500, 502, 503, 504}
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
# Every kind gpuops reads, as a registry's content negotiation expects them (an index first: a multi-arch image).
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class ImageRef:
    """`registry`: a host (docker.io for Docker Hub); `repository`: with `library/` for official Hub images;
    `reference`: a tag, or a digest (sha256:...)."""

    registry: str
    repository: str
    reference: str

    @property
    def tag(self) -> str:
        return "" if self.reference.startswith("sha256:") else self.reference

    def __str__(self) -> str:
        sep = "@" if self.reference.startswith("sha256:") else ":"
        return f"{self.registry}/{self.repository}{sep}{self.reference}"


def parse_image_ref(image: str) -> ImageRef:
    """Docker's rules: `ubuntu` is docker.io/library/ubuntu:latest; a first part with '.' or ':' is a host."""
    text = image.strip() if isinstance(image, str) else ""
    name, digest = text.split("@", 1) if "@" in text else (text, "")
    name, tag = (name.rsplit(":", 1) if ":" in name.rsplit("/", 1)[-1] else (name, ""))
    registry = registry_of(name) if name else ""
    path = name[len(registry) + 1:] if name.startswith(registry + "/") else name
    if registry in DOCKER_HUB and path and "/" not in path:
        path = f"library/{path}"
    if not path or not re.fullmatch(r"[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*", path) \
            or (digest and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest)):
        raise BadInput(f"image {image!r} is not an image reference: give it like "
                       "nvidia/cuda:12.4.1-runtime-ubuntu22.04 or ghcr.io/owner/name@sha256:<64 hex> "
                       "(lowercase repository).")
    return ImageRef("docker.io" if registry in DOCKER_HUB else registry, path, digest or tag or "latest")


@dataclass(frozen=True)
class ImageSize:
    """What a pull downloads for one platform: config + layers, compressed, in bytes."""

    image: str
    digest: str | None
    platform: str
    media_type: str
    config_bytes: int
    layer_bytes: int
    layers: int
    from_index: bool

    @property
    def total_bytes(self) -> int:
        return self.config_bytes + self.layer_bytes

    def as_dict(self) -> dict:
        return {**self.__dict__, "total_bytes": self.total_bytes}


# ---------------------------------------------------------------- HTTP with the registry's token dance


class RegistryClient:
    """One httpx client for a run; pull tokens cached per (realm, scope)."""

    def __init__(self, registry_url: str | None = None, hub_url: str | None = None, timeout_s: float = TIMEOUT_S):
        import httpx

        self.registry_url = (registry_url or os.environ.get(REGISTRY_ENV) or "").rstrip("/") or None
        self.hub_url = (hub_url or os.environ.get(HUB_ENV) or DOCKER_HUB_API).rstrip("/")
        self._http = httpx.Client(timeout=timeout_s, follow_redirects=True)
        self._tokens: dict[tuple[str, str], str] = {}  # (realm, scope) -> pull token
        self._token_for: dict[str, str] = {}  # repository URL -> the token its last challenge was answered with

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def base_for(self, ref: ImageRef) -> str:
        if self.registry_url:
            return self.registry_url
        return DOCKER_HUB_REGISTRY if ref.registry == "docker.io" else f"https://{ref.registry}"

    def get_json(self, what: str, url: str, accept: str = "application/json",
                 token_key: str | None = None) -> tuple[dict, Any]:
        """GET a JSON document: (body, headers). Retried when transient; a 401 challenge answered once. Requests
        sharing a `token_key` (one repository) send the token the first challenge got, without asking again."""
        from gpuops import retry

        def attempt():
            response = self._send(what, url, accept, self._token_for.get(token_key or ""))
            if response.status_code == 401 and "bearer" in response.headers.get("www-authenticate", "").lower():
                token = self._token(what, response.headers["www-authenticate"])
                response = self._send(what, url, accept, token)
                if token_key:
                    self._token_for[token_key] = token
            return self._checked(what, response)

        try:
            return retry.call(what, attempt)
        except retry.TransientHTTPError as exc:
            raise CouldNotRun(f"{exc} (still failing after retries; nothing was changed).") from None

    def _send(self, what: str, url: str, accept: str, token: str | None = None):
        import httpx
        from gpuops import retry

        headers = {"Accept": accept, **({"Authorization": f"Bearer {token}"} if token else {})}
        try:
            return self._http.get(url, headers=headers)
        except httpx.TransportError as exc:
            err = retry.TransientHTTPError(f"{what}: {type(exc).__name__} reaching {url}")
        raise err  # outside the except block: no chain to the request (its Authorization header)

    def _token(self, what: str, challenge: str) -> str:
        """The realm's anonymous pull token for the challenge's service and scope (Docker's token protocol)."""
        params = dict(_CHALLENGE.findall(challenge))
        realm = params.pop("realm", None)
        if not realm:
            raise CouldNotRun(f"{what}: the registry asked for a token without naming where to get one.")
        key = (realm, params.get("scope", ""))
        if key not in self._tokens:
            asked = f"{what} (pull token)"
            body, _ = self._checked(asked, self._send(asked, _with_query(realm, params), "application/json"))
            token = body.get("token") or body.get("access_token")
            if not token:
                raise CouldNotRun(f"{what}: the token endpoint {realm} answered without a token.")
            self._tokens[key] = token
        return self._tokens[key]

    @staticmethod
    def _checked(what: str, response) -> tuple[dict, Any]:
        from gpuops import retry
        from gpuops.hub_publish import retry_after_s

        status = response.status_code
        if status in TRANSIENT_STATUS:
            raise retry.TransientHTTPError(f"{what}: HTTP {status}", status,
                                           retry_after_s(response.headers.get("retry-after")))
        if status == 404:
            raise BadInput(f"{what}: not found (HTTP 404{_registry_error(response)}); check the name and the tag.")
        if status in (401, 403):
            # Docker Hub answers a repository that does not exist as it answers a private one.
            raise BadInput(f"{what}: HTTP {status}{_registry_error(response)}: no such repository, or a private one "
                           "(gpuops reads public images only, without credentials); check the name, or check a "
                           "private image by hand.")
        if status >= 400:
            raise CouldNotRun(f"{what}: HTTP {status}{_registry_error(response)}; nothing was changed.")
        try:
            return response.json(), response.headers
        except ValueError:
            raise CouldNotRun(f"{what}: the answer is not JSON (HTTP {status}).") from None


def _with_query(url: str, params: dict[str, str]) -> str:
    from urllib.parse import urlencode

    return url + ("&" if "?" in url else "?") + urlencode(params) if params else url


def _registry_error(response) -> str:
    """The registry's own error code and message ({"errors": [{"code", "message"}]}), if any."""
    try:
        errors = response.json().get("errors") or []
    except (ValueError, AttributeError):
        return ""
    return "".join(f", {e.get('code')}: {e.get('message')}" for e in errors[:2] if isinstance(e, dict))


# ---------------------------------------------------------------- the two reads


def image_size(image: str, client: RegistryClient | None = None, platform: str = "linux/amd64") -> ImageSize:
    """The pull size of `image` for `platform`: GET /v2/<name>/manifests/<ref>; an index leads to the platform's
    manifest, fetched by digest; size = config + layers as the manifest lists them."""
    ref = parse_image_ref(image)
    return _with_client(client, lambda c: _image_size(c, ref, platform))


def _image_size(client: RegistryClient, ref: ImageRef, platform: str) -> ImageSize:
    base = f"{client.base_for(ref)}/v2/{ref.repository}/manifests/"
    what = f"manifest of {ref}"
    body, headers = client.get_json(what, base + ref.reference, ACCEPT, token_key=base)
    media_type = body.get("mediaType") or headers.get("content-type", "").split(";")[0]
    from_index = media_type in INDEX_TYPES
    digest = headers.get("docker-content-digest")
    if from_index:
        digest = _platform_digest(what, body, platform)
        body, headers = client.get_json(f"{what} ({platform})", base + digest, ACCEPT, token_key=base)
        media_type = body.get("mediaType") or headers.get("content-type", "").split(";")[0]
    try:
        config = int(body["config"]["size"])
        layers = [int(layer["size"]) for layer in body["layers"]]
    except (KeyError, TypeError, ValueError):
        raise CouldNotRun(f"{what}: a {media_type or 'manifest'} without config and layer sizes "
                          "(an old schema 1 manifest?); check the size by hand.") from None
    return ImageSize(str(ref), digest, platform, media_type, config, sum(layers), len(layers), from_index)


def _platform_digest(what: str, index: dict, platform: str) -> str:
    os_name, _, arch = platform.partition("/")
    for entry in index.get("manifests") or []:
        found = entry.get("platform") or {}
        if found.get("os") == os_name and found.get("architecture") == arch and entry.get("digest"):
            return entry["digest"]
    listed = sorted(f"{(e.get('platform') or {}).get('os')}/{(e.get('platform') or {}).get('architecture')}"
                    for e in index.get("manifests") or [])
    raise BadInput(f"{what}: no {platform} image in its index (it has {', '.join(listed) or 'none'}); a vast.ai "
                   f"host pulls {platform}: choose an image built for it.")


def repo_popularity(image: str, client: RegistryClient | None = None) -> Popularity | None:
    """Docker Hub's pulls, stars and last update of the image's repository; None for images elsewhere
    (no such figures). A `library/` repository is a Docker Official Image: official."""
    ref = parse_image_ref(image)
    if ref.registry != "docker.io":
        return None
    return _with_client(client, lambda c: _popularity(c, ref))


def _popularity(client: RegistryClient, ref: ImageRef) -> Popularity:
    url = f"{client.hub_url}/v2/repositories/{ref.repository}/"
    body, _ = client.get_json(f"Docker Hub repository {ref.repository}", url)
    return Popularity("docker-hub", ref.repository, pulls=_count(body.get("pull_count")),
                      stars=_count(body.get("star_count")), last_updated=_date(body.get("last_updated")),
                      official=ref.repository.startswith("library/"))


@dataclass(frozen=True)
class ImageCheck:
    """An image's size, its source's figures and the guardrails' verdicts on them."""

    image: str
    size: ImageSize
    source: Popularity | None
    verdicts: list[Verdict]


def check_image(image: str, inference: bool = True, client: RegistryClient | None = None) -> ImageCheck:
    """Size band, devel tag and trust of `image` (host_rules.image_verdicts) from the registry and Docker Hub."""
    ref = parse_image_ref(image)

    def read(c: RegistryClient) -> ImageCheck:
        size, source = _image_size(c, ref, "linux/amd64"), _popularity(c, ref) if ref.registry == "docker.io" else None
        return ImageCheck(str(ref), size, source,
                          host_rules.image_verdicts(str(ref), ref.tag, size.total_bytes, source, inference))

    return _with_client(client, read)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _date(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _with_client(client: RegistryClient | None, fn: Callable[[RegistryClient], T]) -> T:
    if client is not None:
        return fn(client)
    with RegistryClient() as own:
        return fn(own)

