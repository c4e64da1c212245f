"""Fault injection of the Cloud Run emulator: faults, their validation, the race patch, the request log."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from google.cloud import run_v2
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from .fault_book import FaultBook, FaultSpec
from .cloudrun_common import HTTP_STATUS_NAMES, ApiError, check_json_int, check_json_type, invalid, show

FAULT_MODES = ("before", "after", "race")
FAULT_METHODS = ("*", "GET", "POST", "PATCH", "PUT", "DELETE")
# The resources a race can rewrite, by the collection segment of a request path.
RACE_KINDS = {"services": run_v2.Service.pb(), "jobs": run_v2.Job.pb()}


@dataclass
class Fault(FaultSpec):
    """An injected fault: matches a method and a path regex (re.search), fires `times` times
    once `skip` matching requests have gone through untouched (e.g. fail the third PATCH).

    mode "before" answers the error (`status`, `message`) without touching state.
    mode "after" applies the request first and then answers the error, like a response lost on
    the way back to the client.
    mode "race" emulates a concurrent writer: when the request arrives, the service or job named
    in its path is first rewritten with `race`, then the request runs normally. `race` is a
    partial v2 Service or Job in REST JSON, applied as a JSON Merge Patch (RFC 7396) to the
    resource's current JSON: objects merge key by key, lists (containers, traffic, env) are
    replaced whole, null removes a field. The write is an update without etag, so generation and
    etag move on, a changed template makes a new revision, and `"traffic": [{"type":
    "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}]` sends all traffic to it. A request
    carrying the etag read before the race then gets 409 ABORTED; one without etag overwrites
    the race, as on Google. On a create (POST .../services?serviceId=x) the race creates the
    resource first, so the create gets 409 ALREADY_EXISTS. `status` and `message` are unused.
    """

    MODES = FAULT_MODES

    race: dict | None = None

    def check(self) -> None:
        # POST /emulator/v1/faults: each wrong field is refused by name (400 INVALID_ARGUMENT), in this order,
        # before FaultSpec upper-cases, compiles or compares it.
        check_json_type("fault method", self.method, str)
        if self.method.upper() not in FAULT_METHODS:
            raise invalid(f"fault method must be one of {FAULT_METHODS}, got '{self.method.upper()}'")
        check_json_type("fault path", self.path, str)
        try:
            re.compile(self.path)
        except re.error as exc:
            raise invalid(f"fault path is not a valid regular expression: {exc}") from exc
        check_json_int("fault status", self.status, 400, 599)
        check_json_int("fault times", self.times, 1)
        check_json_int("fault skip", self.skip, 0)
        check_json_type("fault message", self.message, str)
        if self.mode not in FAULT_MODES:
            raise invalid(f"fault mode must be one of {FAULT_MODES}, got {show(self.mode)}")
        if (self.mode == "race") != (self.race is not None):
            raise invalid("fault race: a partial Service or Job is required with mode 'race', and only then")
        if self.race is not None:
            check_race_patch(self.race)

    def error(self) -> ApiError:
        status_name = HTTP_STATUS_NAMES.get(self.status, "UNKNOWN")
        message = self.message or f"Injected fault ({self.mode}): {status_name}"
        return ApiError(self.status, message, status_name)


FAULT_FIELDS = ("method", "path", "status", "times", "mode", "message", "race", "skip")


@dataclass
class LoggedRequest:
    method: str
    path: str
    query: str
    status: int
    fault: str | None = None


def make_fault(**spec: Any) -> Fault:
    """A Fault from POST /emulator/v1/faults' fields; id, fired and skipped (output fields) are ignored,
    so a fault read back from GET /faults can be posted again."""
    unknown = set(spec) - set(FAULT_FIELDS) - {"id", "fired", "skipped"}
    if unknown:
        raise invalid(f"unknown fault fields {sorted(unknown)}; expected some of {list(FAULT_FIELDS)}")
    return Fault(**{k: v for k, v in spec.items() if k in FAULT_FIELDS})


# ---------------------------------------------------------------- the race patch


def check_race_patch(patch: Any) -> None:
    """Refuse at once a patch that could fit neither a Service nor a Job (a typo fails now, not later)."""
    check_json_type("fault race", patch, dict)
    errors = []
    for kind, message_cls in RACE_KINDS.items():
        try:
            json_format.ParseDict(json_names(patch, message_cls.DESCRIPTOR), message_cls())
            return
        except json_format.ParseError as exc:
            errors.append(f"as a {kind[:-1]}: {exc}")
    raise invalid("fault race is not a partial v2 Service or Job: " + "; ".join(errors))


def race_target(path: str, query: list[tuple[str, str]]) -> tuple[str, str]:
    """(collection, full name) of the service or job a request path names, for a race to rewrite."""
    segs = path.removeprefix("/v2/").split(":", 1)[0].split("/")
    if len(segs) >= 5 and segs[:3:2] == ["projects", "locations"] and segs[4] in RACE_KINDS:
        if len(segs) >= 6:
            return segs[4], "/".join(segs[:6])
        ident = dict(query).get(f"{segs[4][:-1]}Id") or dict(query).get(f"{segs[4][:-1]}_id")
        if ident:  # a create: the resource is named by its query parameter
            return segs[4], "/".join(segs) + "/" + ident
    raise invalid(f"the request path '{path}' names no service or job")


def raced_document(current: dict, patch: dict, kind: str) -> dict:
    """The other writer's body: the current resource JSON with the patch merged in, without etag."""
    doc = dict(current)
    doc.pop("etag", None)
    patch = json_names(patch, RACE_KINDS[kind].DESCRIPTOR)
    if "revision" not in (patch.get("template") or {}):
        # A deploy names its own new revision; keeping the old explicit name would collide with it.
        doc["template"] = {k: v for k, v in (doc.get("template") or {}).items() if k != "revision"}
    return merge_patch(doc, patch)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON Merge Patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_names(doc: dict, descriptor: Descriptor) -> dict:
    """Spell every known field as REST JSON does (camelCase), so both spellings merge as one."""
    out = {}
    for key, value in doc.items():
        fd = descriptor.fields_by_name.get(key) or descriptor.fields_by_camelcase_name.get(key)
        if fd is None or fd.type != FieldDescriptor.TYPE_MESSAGE:
            out[fd.json_name if fd else key] = value
            continue
        sub = fd.message_type
        if sub.GetOptions().map_entry:
            value_fd = sub.fields_by_name["value"]
            if value_fd.type == FieldDescriptor.TYPE_MESSAGE and isinstance(value, dict):
                value = {k: _named(v, value_fd.message_type) for k, v in value.items()}
        elif fd.is_repeated and isinstance(value, list):
            value = [_named(item, sub) for item in value]
        else:
            value = _named(value, sub)
        out[fd.json_name] = value
    return out


def _named(value: Any, descriptor: Descriptor) -> Any:
    # Well-known types (Duration, Timestamp...) have their own JSON forms: leave them alone.
    if isinstance(value, dict) and not descriptor.full_name.startswith("google.protobuf."):
        return json_names(value, descriptor)
    return value
