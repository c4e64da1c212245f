"""Shared pieces of the Cloud Run emulator: errors, strict proto parsing, names, conditions."""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from google.cloud import run_v2
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

# HTTP code -> google.rpc status name, as Google's REST front end spells it.
HTTP_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

# google.rpc.Code numbers, used inside Operation.error.
RPC_CODES = {"FAILED_PRECONDITION": 9, "CANCELLED": 1, "UNKNOWN": 2}

# Query parameters the REST front end consumes itself (system parameters), never request fields.
SYSTEM_QUERY_PARAMS = {"$alt", "alt", "$prettyPrint", "prettyPrint", "$fields", "fields", "key"}

# Google rejects these label/annotation namespaces in v2 (see the Service.labels docstring).
RESERVED_NAMESPACES = (
    "run.googleapis.com",
    "cloud.googleapis.com",
    "serving.knative.dev",
    "autoscaling.knative.dev",
)

LOCATION_PREFIX = r"projects/(?P<project>[^/:]+)/locations/(?P<location>[^/:]+)"
SERVICE_ID_RE = re.compile(r"^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$")
JOB_ID_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
TAG_RE = re.compile(r"^[a-z]([-a-z0-9]{0,44}[a-z0-9])?$")

Cond = run_v2.Condition
SUCCEEDED = Cond.State.CONDITION_SUCCEEDED
FAILED = Cond.State.CONDITION_FAILED
RECONCILING = Cond.State.CONDITION_RECONCILING


class ApiError(Exception):
    """A Google-shaped API error: HTTP code, status name and message."""

    def __init__(self, code: int, message: str, status: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or HTTP_STATUS_NAMES.get(code, "UNKNOWN")

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "status": self.status}}


def invalid(message: str) -> ApiError:
    return ApiError(400, message, "INVALID_ARGUMENT")


def not_found(name: str) -> ApiError:
    return ApiError(404, f"Resource '{name}' was not found", "NOT_FOUND")


def already_exists(name: str) -> ApiError:
    return ApiError(409, f"Resource '{name}' already exists.", "ALREADY_EXISTS")


def failed_precondition(message: str) -> ApiError:
    return ApiError(400, message, "FAILED_PRECONDITION")


def aborted_etag(name: str) -> ApiError:
    return ApiError(409, f"The etag provided for '{name}' does not match the current one.", "ABORTED")


# ---------------------------------------------------------------- JSON values of control requests

_JSON_TYPES = {str: "string", dict: "object", list: "array", bool: "boolean"}


def show(value: Any) -> str:
    """A JSON value, cut short, for an error message."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_json_type(where: str, value: Any, kind: type) -> None:
    if not isinstance(value, kind):
        raise invalid(f"{where} must be a JSON {_JSON_TYPES[kind]}, got {show(value)}")


def check_json_int(where: str, value: Any, low: int, high: int | None = None) -> None:
    # bool is an int in Python, never in JSON; 1.0 and 1e999 are not integers either.
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{where} must be an integer, got {show(value)}")
    if value < low or (high is not None and value > high):
        span = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise invalid(f"{where} must be {span}, got {value}")


# ---------------------------------------------------------------- strict parsing


def parse_body(text: str, message_cls: type, *, allow_empty: bool = False) -> Message:
    """Parse a JSON body into a raw protobuf, rejecting what Google's front end rejects."""
    msg = _pb_class(message_cls)()
    if not text.strip():
        if allow_empty:
            return msg
        raise invalid("Invalid JSON payload received. Request body is empty.")
    try:
        json_format.Parse(text, msg, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise invalid(f"Invalid JSON payload received. {exc}") from exc
    check_enums(msg)
    return msg


def parse_query(params: Sequence[tuple[str, str]], message_cls: type, skip: Iterable[str] = ()) -> Message:
    """Bind query parameters to request fields; an unknown parameter is a 400 as on Google."""
    msg = _pb_class(message_cls)()
    descriptor = msg.DESCRIPTOR
    values: dict[str, Any] = {}
    for key, raw in params:
        if key in SYSTEM_QUERY_PARAMS or key in skip:
            continue
        field = _field_by_json_or_name(descriptor, key)
        if field is None or (
            field.type == FieldDescriptor.TYPE_MESSAGE
            and field.message_type.full_name != "google.protobuf.FieldMask"
        ):
            raise invalid(
                f'Invalid JSON payload received. Unknown name "{key}": Cannot bind query parameter.'
            )
        value = _query_scalar(field, key, raw)
        if field.is_repeated:
            values.setdefault(field.json_name, []).append(value)
        else:
            values[field.json_name] = value
    try:
        json_format.ParseDict(values, msg, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise invalid(f"Invalid query parameter: {exc}") from exc
    return msg


def _query_scalar(field: FieldDescriptor, key: str, raw: str) -> Any:
    # json_format only takes real booleans, while query strings carry "true"/"false".
    if field.type != FieldDescriptor.TYPE_BOOL:
        return raw
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise invalid(f'Invalid value at \'{key}\' (TYPE_BOOL), "{raw}"')


def _field_by_json_or_name(descriptor, key: str) -> FieldDescriptor | None:
    for field in descriptor.fields:
        if key in (field.json_name, field.name):
            return field
    return None


def check_enums(msg: Message, path: str = "") -> None:
    """json_format accepts unknown enum numbers (open enums); Google's validation does not."""
    for field, value in msg.ListFields():
        where = f"{path}{field.json_name}"
        if field.type == FieldDescriptor.TYPE_ENUM:
            for number in value if field.is_repeated else [value]:
                if field.enum_type.values_by_number.get(number) is None:
                    raise invalid(f"Invalid value at '{where}' ({field.enum_type.full_name}), {number}")
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for child in _child_messages(field, value):
                check_enums(child, where + ".")


def _child_messages(field: FieldDescriptor, value: Any) -> list[Message]:
    if field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        return list(value.values()) if value_field.type == FieldDescriptor.TYPE_MESSAGE else []
    return list(value) if field.is_repeated else [value]


def _pb_class(message_cls: type) -> type:
    # Accept proto-plus classes (run_v2.Service) and raw protobuf classes alike.
    return message_cls.pb() if hasattr(message_cls, "pb") else message_cls


def to_json_dict(msg: Message, int_enums: bool = False) -> dict[str, Any]:
    return json_format.MessageToDict(msg, use_integers_for_enums=int_enums)


def copy_into(source: Message, target_cls: type, drop: Iterable[str] = ()) -> Message:
    """Copy same-named fields from one message type into another (template -> resource)."""
    data = json_format.MessageToDict(source, preserving_proto_field_name=True)
    for key in drop:
        data.pop(key, None)
    target = _pb_class(target_cls)()
    json_format.ParseDict(data, target)
    return target


def clone(msg: Message) -> Message:
    copy = type(msg)()
    copy.CopyFrom(msg)
    return copy


# ---------------------------------------------------------------- names and values


@dataclass(frozen=True)
class Name:
    """A parsed resource name: project, location, and the collection/id pairs below them."""

    project: str
    location: str
    parts: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, name: str) -> "Name":
        segs = name.split("/")
        # A resource name: a location and at least one collection/id pair below it.
        if len(segs) < 6 or segs[0] != "projects" or segs[2] != "locations" or len(segs) % 2 or "" in segs:
            raise invalid(f"Invalid resource name '{name}'")
        pairs = tuple((segs[i], segs[i + 1]) for i in range(4, len(segs), 2))
        return cls(segs[1], segs[3], pairs)

    @property
    def id(self) -> str:
        return self.parts[-1][1]

    @property
    def parent(self) -> str:
        tail = "".join(f"/{kind}/{ident}" for kind, ident in self.parts[:-1])
        return f"projects/{self.project}/locations/{self.location}{tail}"


def parent_matches(pattern: str, parent: str) -> bool:
    """Google accepts '-' as a wildcard segment in list parents (e.g. locations/-)."""
    want, have = pattern.split("/"), parent.split("/")
    return len(want) == len(have) and all(w in ("-", h) for w, h in zip(want, have))


def check_id(ident: str, pattern: re.Pattern, what: str) -> None:
    if not ident:
        raise invalid(f"{what} is required")
    if not pattern.match(ident):
        raise invalid(
            f"Invalid {what} '{ident}': it must begin with a letter, contain only lowercase letters, "
            "digits and hyphens, not end with a hyphen, and respect the length limit."
        )


def check_namespaces(where: str, mapping) -> None:
    for key in mapping:
        prefix = key.split("/", 1)[0] if "/" in key else ""
        if prefix and any(prefix == ns or prefix.endswith("." + ns) for ns in RESERVED_NAMESPACES):
            raise invalid(f"{where}: key '{key}' uses a system namespace that Cloud Run API v2 rejects")


def now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def new_uid() -> str:
    return str(uuid.uuid4())


def make_etag(uid: str, generation: int, extra: str = "") -> str:
    return hashlib.sha1(f"{uid}:{generation}:{extra}".encode()).hexdigest()[:20]


def random_suffix(length: int, alphabet: str = string.ascii_lowercase) -> str:
    return "".join(random.choice(alphabet) for _ in range(length))


def condition(type_: str, state=SUCCEEDED, message: str = "", **extra) -> run_v2.Condition:
    cond = run_v2.Condition.pb()(type_=type_, state=state, message=message, **extra)
    cond.last_transition_time.CopyFrom(now())
    return cond


def paginate(items: list, page_size: int, page_token: str) -> tuple[list, str]:
    """Offset pagination; the token is opaque to clients, which only echo it back."""
    try:
        start = int(page_token) if page_token else 0
    except ValueError as exc:
        raise invalid(f"Invalid page token '{page_token}'") from exc
    size = page_size if page_size > 0 else 100
    end = start + size
    return items[start:end], (str(end) if end < len(items) else "")
