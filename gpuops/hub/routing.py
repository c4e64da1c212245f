"""The hub's request logic, pure: what a request asks for, where it goes, and why it is refused.

Nothing here does I/O, so the intake app answers 400 (CONTRACTS.md §5) before it writes anything.
Every refusal is a `BadRequest` naming the field (a body key, a dotted path inside the body, or a
header) and the fix. Messages never repeat an input URI: a signed URL carries its credential in
the query string.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import PurePosixPath
from typing import Any, NamedTuple, Optional
from urllib.parse import urlsplit

from gpuops.errors import BadInput

GPU, CPU = "gpu", "cpu"
CLOUD_RUN, GKE = "cloud-run", "gke"
DESTINATIONS = (CLOUD_RUN, GKE)
GPU_EXTENSIONS = frozenset({".mp4", ".mov", ".wav"})  # the runbook's GPU file types (step 3-1)
URI_SCHEMES = ("gs", "s3", "https", "http")
TASK_FIELDS = ("input_uri", "params")
MAX_URI_CHARS = 2048
MAX_PARAMS_BYTES = 16 * 1024  # as JSON: params travel as a Prefect flow run's parameters
MAX_PARAMS_DEPTH = 8  # the params object itself is depth 1
URI_EXAMPLE = "gs://bucket/path/file.mp4"
# Bucket names as GCS and S3 allow them (S3's subset: 3-63 characters); checked so a typo fails here, not in a flow.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
BUCKET_RULE = "3+ lowercase letters, digits, dots, hyphens or underscores"

PING, PUSH, IGNORED = "ping", "push", "ignored"
BRANCH_PREFIX = "refs/heads/"
_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")  # SHA-1, or SHA-256 repositories
DELETED_SHA = re.compile(r"^0+$")  # GitHub's `after` when a push deletes the branch

OBJECT_FINALIZE = "OBJECT_FINALIZE"
PAYLOAD_NONE = "NONE"  # a notification configured with payload_format NONE sends no data
MAX_MESSAGE_ID_CHARS = 256


class BadRequest(BadInput):
    """A request the hub refuses with 400: `field` names what is wrong, `message` says why and the fix."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


# --- POST /v1/tasks ---------------------------------------------------------------------------


def check_task_body(body: Any) -> dict:
    """`{"input_uri", "params"}` checked and normalized (params defaults to {}), or BadRequest."""
    if not isinstance(body, dict):
        raise BadRequest("body", f'must be a JSON object: send {{"input_uri": "{URI_EXAMPLE}", "params": {{}}}}')
    unknown = sorted(str(key) for key in body if key not in TASK_FIELDS)
    if unknown:
        raise BadRequest(unknown[0][:64], "is not a field of a task: send only " + " and ".join(TASK_FIELDS))
    if "input_uri" not in body:
        raise BadRequest("input_uri", f"is required: send the file to process, e.g. {URI_EXAMPLE}")
    return {"input_uri": check_uri("input_uri", body["input_uri"]), "params": check_params(body.get("params"))}


def check_uri(field: str, uri: Any) -> str:
    """A gs://, s3://, https:// or http:// URI naming an object (a non-empty path after the bucket or host)."""
    fix = f"send e.g. {URI_EXAMPLE}"
    if not isinstance(uri, str) or not uri:
        raise BadRequest(field, f"must be a non-empty string: {fix}")
    if len(uri) > MAX_URI_CHARS:
        raise BadRequest(field, f"is {len(uri)} characters, over the {MAX_URI_CHARS} allowed: {fix}")
    if uri != uri.strip() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in uri):
        raise BadRequest(field, f"holds control characters or surrounding spaces: {fix}")
    parts = urlsplit(uri)
    if parts.scheme not in URI_SCHEMES or not uri.lower().startswith(parts.scheme + "://"):
        raise BadRequest(field, "must start with " + ", ".join(f"{s}://" for s in URI_SCHEMES) + f": {fix}")
    if "@" in parts.netloc:
        raise BadRequest(field, "holds a user name or password before the host (not shown): send the URI "
                                "without credentials")
    if not parts.netloc:
        raise BadRequest(field, f"names no bucket or host: {fix}")
    if parts.scheme in ("gs", "s3") and not _BUCKET.match(parts.netloc):
        raise BadRequest(field, f"names a bucket that is not a valid bucket name ({BUCKET_RULE}): {fix}")
    if not parts.path.strip("/"):
        raise BadRequest(field, f"names a bucket or host but no object: {fix}")
    return uri


def check_params(params: Any) -> dict:
    """An optional JSON object of at most MAX_PARAMS_DEPTH levels and MAX_PARAMS_BYTES as JSON."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise BadRequest("params", 'must be a JSON object, e.g. {"language": "ja"}, or left out')
    _check_json_tree(params)
    try:
        size = len(json.dumps(params, allow_nan=False, separators=(",", ":")).encode())
    except ValueError:
        raise BadRequest("params", "holds NaN or Infinity, which JSON does not allow: send finite numbers") from None
    if size > MAX_PARAMS_BYTES:
        raise BadRequest("params", f"is {size} bytes as JSON, over the {MAX_PARAMS_BYTES} allowed: put large "
                                   "inputs in a file and send its URI")
    return params


def _check_json_tree(params: dict) -> None:
    # Iterative, so a deep tree stops at the limit instead of exhausting Python's recursion limit.
    stack: list[tuple[Any, int]] = [(params, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)) and depth > MAX_PARAMS_DEPTH:
            raise BadRequest("params", f"nests deeper than {MAX_PARAMS_DEPTH} levels: flatten it")
        if isinstance(value, dict):
            if not all(isinstance(key, str) for key in value):
                raise BadRequest("params", "has a key that is not a string: use JSON object keys")
            stack += [(child, depth + 1) for child in value.values()]
        elif isinstance(value, list):
            stack += [(child, depth + 1) for child in value]
        elif not (value is None or isinstance(value, (str, int, float, bool))):
            raise BadRequest("params", f"holds a {type(value).__name__}, which is not JSON: send JSON values")


# --- routing ----------------------------------------------------------------------------------


def route_of(input_uri: str) -> str:
    """GPU for .mp4 .mov .wav (any case) at the end of the URI's path, the query and fragment ignored; else CPU."""
    return GPU if PurePosixPath(urlsplit(input_uri).path).suffix.lower() in GPU_EXTENSIONS else CPU


def destination_of(x_destination: Optional[str], route: str, enable_gke: bool,
                   cloud_run_backlog: Optional[int], threshold: int) -> Optional[str]:
    """The GPU work pool a task goes to: "cloud-run", "gke", or None on the CPU route.

    A header value other than cloud-run or gke is refused on every route (CONTRACTS: any other
    value is 400); a valid one is ignored on the CPU route, so a client may send it on every
    request. The header is the client's explicit choice and wins over overflow, and `gke` is
    honoured with ENABLE_GKE_ROUTE off: that flag turns on the automatic overflow only. Without
    the header, GPU work overflows to GKE when ENABLE_GKE_ROUTE is on and the Cloud Run pool's
    backlog is known and above `threshold`.
    """
    if x_destination is not None and x_destination not in DESTINATIONS:
        raise BadRequest("X-Destination", "must be " + " or ".join(DESTINATIONS) + " (or left out: Cloud Run, "
                                          "overflowing to GKE when the GKE route is on)")
    if route != GPU:
        return None
    if x_destination is not None:
        return x_destination
    overflow = enable_gke and cloud_run_backlog is not None and cloud_run_backlog > threshold
    return GKE if overflow else CLOUD_RUN


# --- POST /v1/webhooks/github -----------------------------------------------------------------


class GitHubOutcome(NamedTuple):
    """What a delivery asks for: kind "ping", "push" (with `push`: repo, ref, sha) or "ignored" (with `reason`)."""

    kind: str
    push: Optional[dict] = None
    reason: Optional[str] = None


def github_push(event: Optional[str], payload: Any, default_branch: Optional[str] = None) -> GitHubOutcome:
    """A push to the default branch (configured, else the payload's repository.default_branch) starts a build.

    Other events, tags, other branches and deleted branches are ignored with a reason; a push
    payload missing what a build needs is a BadRequest.
    """
    if not event:
        raise BadRequest("X-GitHub-Event", "is missing: GitHub sends it with every delivery (push or ping)")
    if not isinstance(payload, dict):
        raise BadRequest("body", "must be a JSON object: set the webhook's content type to application/json")
    if event == PING:
        return GitHubOutcome(PING)
    if event != PUSH:
        return _ignored(f"event {event[:64]!r} is not a push: only pushes to the default branch start a build")
    ref = _text(payload, "ref", "the pushed ref, e.g. refs/heads/main")
    if not ref.startswith(BRANCH_PREFIX):
        return _ignored(f"{ref[:255]} is not a branch: only pushes to the default branch start a build")
    branch, repository = ref[len(BRANCH_PREFIX):], payload.get("repository")
    if not isinstance(repository, dict):
        raise BadRequest("repository", "is missing or not an object: a push payload names its repository")
    default = default_branch or _text(repository, "default_branch", "the repository's default branch",
                                      prefix="repository.")
    if branch != default:
        return _ignored(f"branch {branch[:255]} is not the default branch {default}")
    sha = _text(payload, "after", "the pushed commit's SHA")
    if payload.get("deleted") is True or DELETED_SHA.match(sha):
        return _ignored(f"the push deleted branch {branch}")
    if not _SHA.match(sha):
        raise BadRequest("after", "is not a commit SHA (40 or 64 lowercase hex digits)")
    repo = _text(repository, "clone_url", "the URL to clone, e.g. https://github.com/owner/app.git",
                 prefix="repository.")
    return GitHubOutcome(PUSH, push={"repo": repo, "ref": branch, "sha": sha})


def _ignored(reason: str) -> GitHubOutcome:
    return GitHubOutcome(IGNORED, reason=reason)


def _text(parent: dict, key: str, what: str, prefix: str = "") -> str:
    value = parent.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(prefix + key, f"is missing or not a string: it should be {what}")
    return value


# --- POST /v1/pubsub/push ---------------------------------------------------------------------


def pubsub_envelope(body: Any) -> dict:
    """A push envelope carrying a Cloud Storage notification, read; BadRequest when malformed.

    Returns {"message_id", "event_type", "attributes", "input_uri", "ignored"}: for OBJECT_FINALIZE,
    input_uri is gs://bucket/object and ignored None; for other events (delete, archive, metadata
    update) input_uri is None and ignored says why. The message id is the idempotency key, so it
    is required. The attributes are authoritative (present whatever the payload format); the data,
    when the notification carries the object's JSON, must decode and agree with them.
    """
    if not isinstance(body, dict) or not isinstance(body.get("message"), dict):
        raise BadRequest("message", 'is missing or not an object: a push envelope is {"message": {"data", '
                                    '"attributes", "messageId", ...}, "subscription": ...}')
    message = body["message"]
    message_id = message.get("messageId") or message.get("message_id")  # push sends both spellings
    if not isinstance(message_id, str) or not message_id or len(message_id) > MAX_MESSAGE_ID_CHARS:
        raise BadRequest("message.messageId", "is missing or not an id: Pub/Sub sets it on every delivery")
    attributes = _attributes(message.get("attributes"))
    event_type = attributes.get("eventType")
    if not event_type:
        raise BadRequest("message.attributes.eventType", "is missing: this endpoint takes Cloud Storage "
                                                         "notifications (gcloud storage buckets notifications create)")
    result = {"message_id": message_id, "event_type": event_type, "attributes": attributes,
              "input_uri": None, "ignored": None}
    if event_type != OBJECT_FINALIZE:
        return {**result, "ignored": f"eventType {event_type[:64]} is not {OBJECT_FINALIZE}: only new objects "
                                     "start work"}
    bucket, name = _finalized_object(attributes, message.get("data"))
    uri = check_uri("message.attributes.objectId", f"gs://{bucket}/{name}")
    return {**result, "input_uri": uri}


def _attributes(attributes: Any) -> dict:
    if not isinstance(attributes, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in attributes.items()):
        raise BadRequest("message.attributes", "is missing or not string keys and values: a Cloud Storage "
                                               "notification carries eventType, bucketId and objectId")
    return attributes


def _finalized_object(attributes: dict, data: Any) -> tuple[str, str]:
    bucket = _text(attributes, "bucketId", "the bucket's name", prefix="message.attributes.")
    if not _BUCKET.match(bucket):
        raise BadRequest("message.attributes.bucketId", f"is not a bucket name ({BUCKET_RULE})")
    name = _text(attributes, "objectId", "the object's name", prefix="message.attributes.")
    resource = _object_resource(data, attributes.get("payloadFormat"))
    if resource and (resource.get("bucket", bucket), resource.get("name", name)) != (bucket, name):
        raise BadRequest("message.data", "names another object than attributes bucketId and objectId: send "
                                         "the notification as Cloud Storage publishes it")
    return bucket, name


def _object_resource(data: Any, payload_format: Optional[str]) -> Optional[dict]:
    """The object's JSON (payload format JSON_API_V1) from base64 `data`; None when there is none."""
    if data is None or data == "":
        return None
    if not isinstance(data, str):
        raise BadRequest("message.data", "is not a string: Pub/Sub sends the data base64-encoded")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("message.data", "is not valid base64: Pub/Sub sends the data base64-encoded") from None
    if payload_format == PAYLOAD_NONE or not raw:
        return None
    try:
        resource = json.loads(raw)
    except ValueError:
        raise BadRequest("message.data", "is not JSON: a JSON_API_V1 notification carries the object's "
                                         "JSON resource") from None
    if not isinstance(resource, dict):
        raise BadRequest("message.data", "is not a JSON object: it should be the object's JSON resource")
    return resource
