"""The pipeline's `container` runtime: the repository at the job's commit, built from its Dockerfile by a Docker
engine and pushed to a registry (GHCR by default), every build and push line streamed as it comes."""
from __future__ import annotations

import os
import re
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable

from gpuops import retry
from gpuops.errors import BadInput, CheckFailed, CouldNotRun
from gpuops.process_stream import LineSink
from gpuops.source_build import checkout

BUILD_TIMEOUT_S = 1800.0  # per read: a build step may print nothing for long (a compile, a large download)
ENGINE_TIMEOUT_S = 120.0
TAIL_LINES = 10
ENGINE_TRANSIENT_STATUS = {429, 500, 502, 503, 504}
UNREACHABLE_FIX = "start Docker or set DOCKER_HOST (e.g. tcp://127.0.0.1:2375)"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*(?::[0-9]+)?"
IMAGE_REPO = re.compile(rf"^(?:{_HOST}/)?{_COMPONENT}(?:/{_COMPONENT})*$")
# dockerd relays a registry's failure into the push stream as text only; these words mean "try again".
REGISTRY_TRANSIENT = re.compile(r"\b(?:429|50[0234])\b|toomanyrequests|too many requests|service unavailable|"
                                r"bad gateway|gateway time-?out|internal server error", re.I)
DOCKER_HUB = {"docker.io", "index.docker.io", "registry-1.docker.io"}


# ---------------------------------------------------------------- pure helpers


def check_image_repo(image_repo: Any) -> str:
    if not isinstance(image_repo, str) or len(image_repo) > 255 or not IMAGE_REPO.match(image_repo):
        raise BadInput(f"image_repo (--image-repo) {image_repo!r} is not a registry path: pass it lowercase and "
                       "without a tag (the commit becomes the tag), e.g. --image-repo ghcr.io/owner/app.")
    return image_repo


def ghcr_image_repo(repo: str) -> str:
    """The default registry path for a git repository: ghcr.io/<owner>/<name>, from its URL or path, lowercase."""
    parts = [p for p in re.split(r"[/:]", repo.rstrip("/").removesuffix(".git")) if p]
    return check_image_repo("ghcr.io/" + "/".join(parts[-2:]).lower())


def registry_of(image_repo: str) -> str:
    """The registry a push of `image_repo` goes to (Docker's rule: a first part with '.' or ':' is a host)."""
    first, _, rest = image_repo.partition("/")
    return first if rest and ("." in first or ":" in first or first == "localhost") else "docker.io"


def registry_host(url: str) -> str:
    host = re.sub(r"^[a-z]+://", "", url.strip().lower()).split("/", 1)[0]
    return "docker.io" if host in DOCKER_HUB else host


def auth_config(credentials: Any, image_repo: str) -> dict | None:
    """The push's X-Registry-Auth from a DockerRegistryCredentials block, refused when the block is for another
    registry than the image's: the engine would hand the password to that other host."""
    if credentials is None:
        return None
    target, theirs = registry_of(image_repo), registry_host(credentials.registry_url)
    if theirs != target:
        raise BadInput(f"credentials.registry_url {credentials.registry_url!r} is not the registry of image_repo "
                       f"(--image-repo) {image_repo!r} ({target}): pass credentials for {target}, or an image_repo "
                       f"on {theirs}.")
    return {"username": credentials.username, "password": credentials.password.get_secret_value(),
            "serveraddress": credentials.registry_url}


def error_of(item: dict) -> str | None:
    """The failure an engine stream item reports (build or push), else None."""
    if "error" not in item and "errorDetail" not in item:
        return None
    return str((item.get("errorDetail") or {}).get("message") or item.get("error") or "unknown error")


def lines_of(item: dict) -> list[str]:
    """An engine stream item as log lines; none for what a log need not keep (progress bars, aux records)."""
    error = error_of(item)
    if error is not None:
        return [f"ERROR: {error}"]
    if "stream" in item:
        return [line for line in str(item["stream"]).splitlines() if line.strip()]
    if "status" in item and (item.get("progressDetail") or {}).get("current") is None:
        return [f"{item['id']}: {item['status']}" if item.get("id") else str(item["status"])]
    return []


def pushed_digest(items: Iterable[dict]) -> str | None:
    digests = [item["aux"].get("Digest") for item in items if isinstance(item.get("aux"), dict)]
    return next((d for d in reversed(digests) if d), None)


class _Log:
    """Every line on its way to `on_line`, the password masked (a registry's error may echo what it was sent),
    the last lines kept for a failure's message."""

    def __init__(self, on_line: LineSink, secret: str | None):
        self.on_line, self._secret = on_line, secret
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)

    def mask(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def __call__(self, line: str) -> None:
        line = self.mask(line)
        self.tail.append(line)
        self.on_line(line)


# ---------------------------------------------------------------- I/O: the engine


def build_container(repo: str, sha: str, workdir: Path, image_repo: str, on_line: LineSink, *,
                    credentials: Any = None, docker_host: str | None = None, push: bool = True) -> dict:
    """Check `repo` out at `sha` into `workdir`, build its Dockerfile as `image_repo:sha`, push that tag.

    `credentials`: a prefect-docker DockerRegistryCredentials (None: the engine's own auth). BadInput before
    any work for a bad image_repo or credentials for another registry; CheckFailed with the last lines for a
    failed build or push; CouldNotRun when the engine stays unreachable or failing after retries.
    """
    check_image_repo(image_repo)
    auth = auth_config(credentials, image_repo) if push else None
    log = _Log(on_line, auth["password"] if auth else None)
    commit = checkout(repo, sha, workdir, log)
    if not (workdir / "Dockerfile").is_file():
        raise BadInput(f"repo (--repo) {repo!r} has no Dockerfile at its root at {sha}: add one, "
                       "or build with --runtime source.")
    host = docker_host or os.environ.get("DOCKER_HOST")
    tag = f"{image_repo}:{sha}"
    with _engine(host, log) as client:
        _stream("docker build", host, log, lambda: client.build(
            path=str(workdir), tag=tag, decode=True, rm=True, timeout=BUILD_TIMEOUT_S))
        pushed = _stream("docker push", host, log, lambda: client.push(
            image_repo, tag=sha, stream=True, decode=True, auth_config=auth), registry=True) if push else []
    return {"imageUri": tag, "digest": pushed_digest(pushed), "commit": commit}


def _engine(host: str | None, log: _Log):
    """The docker SDK's low-level client; asking the engine its API version is the reachability check."""
    import docker

    return _retried("connect to the Docker engine", host, log,
                    lambda: docker.APIClient(base_url=host, version="auto", timeout=ENGINE_TIMEOUT_S))


def _stream(what: str, host: str | None, log: _Log, start: Callable[[], Iterable[dict]],
            registry: bool = False) -> list[dict]:
    """Start a streaming engine call and log its items as they come; an error item fails it (retried when it is
    the registry's transient failure relayed by a push)."""
    def attempt() -> list[dict]:
        items = []
        for item in start():
            items.append(item)
            for line in lines_of(item):
                log(line)
            error = error_of(item)
            if error is not None:
                raise _stream_failure(what, log.mask(error), list(log.tail), registry)
        return items

    return _retried(what, host, log, attempt)


def _stream_failure(what: str, error: str, tail: list[str], registry: bool) -> Exception:
    if registry and REGISTRY_TRANSIENT.search(error):
        return retry.TransientHTTPError(f"{what}: the registry answered: {error}")
    return CheckFailed(f"{what} failed: {error}\n" + "\n".join(tail), [{"step": what, "error": error, "tail": tail}])


def _retried(what: str, host: str | None, log: _Log, fn: Callable[[], Any]) -> Any:
    """`fn` through gpuops.retry (transient engine and registry failures sent again); still failing after the
    retries: CouldNotRun, raised with no chain, so nothing of the SDK's requests (the auth header) goes with it."""
    tries: list[int] = []

    def attempt() -> Any:
        if tries:
            log(f"{what}: the last attempt failed transiently; trying again (attempt {len(tries) + 1})")
        tries.append(1)
        try:
            return fn()
        except Exception as exc:
            raise _classified(what, host, exc) from None

    try:
        return retry.call(what, attempt)
    except retry.TransientHTTPError as exc:
        gave_up = f"{exc} (still failing after {len(tries)} attempts)"
    raise CouldNotRun(gave_up)


def _classified(what: str, host: str | None, exc: Exception) -> Exception:
    """A docker SDK or HTTP failure as gpuops tells them apart: transient (retried) or refused (CheckFailed);
    anything else as it is."""
    import docker
    import requests
    import urllib3

    # APIClient(version="auto") wraps what failed while asking the engine's version in a bare DockerException.
    cause = exc.__cause__ if type(exc) is docker.errors.DockerException and exc.__cause__ else exc
    if isinstance(cause, docker.errors.APIError):
        status, said = cause.status_code, log_safe(cause.explanation or str(cause))
        if status in ENGINE_TRANSIENT_STATUS:
            return retry.TransientHTTPError(f"{what}: the Docker engine answered {status}: {said}", status)
        return CheckFailed(f"{what}: the Docker engine refused it ({status}): {said}",
                           [{"step": what, "status": status, "error": said}])
    lost = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.ProtocolError, urllib3.exceptions.TimeoutError, ConnectionError)
    if isinstance(cause, lost):
        where = host or "the default socket (unix:///var/run/docker.sock)"
        return retry.TransientHTTPError(f"{what}: could not reach the Docker engine at {where}: {UNREACHABLE_FIX} "
                                        f"({type(cause).__name__}: {log_safe(str(cause))})")
    return exc


def log_safe(text: str, limit: int = 500) -> str:
    return " ".join(text.split())[:limit]
