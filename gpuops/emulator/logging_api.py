"""Cloud Logging v2 `entries:list` on the emulator: job executions' output as Cloud Run logs it."""

from __future__ import annotations

import base64
import calendar
import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

from .cloudrun_common import ApiError, invalid

EXECUTION_LABEL = "run.googleapis.com/execution_name"
TASK_LABEL = "run.googleapis.com/task_index"
ATTEMPT_LABEL = "run.googleapis.com/task_attempt"
STDOUT_LOG = "run.googleapis.com%2Fstdout"
SYSTEM_LOG = "run.googleapis.com%2Fvarlog%2Fsystem"  # where Cloud Run writes its own messages
SYSTEM_PREFIX = "[gpuops emulator]"
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 1000  # Google's documented default and maximum
BODY_FIELDS = {"resourceNames", "filter", "orderBy", "pageSize", "pageToken", "projectIds"}
ORDERS = {"timestamp asc": False, "timestamp desc": True}


# ---------------------------------------------------------------- entries


@dataclass(frozen=True)
class Entry:
    """A log entry and the key it sorts by (timestamp, then arrival)."""

    key: tuple[int, int]
    project: str
    body: dict


def rfc3339(at_ns: int) -> str:
    seconds, nanos = divmod(at_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


def payload(text: str) -> dict:
    """A line that is a JSON object becomes jsonPayload, as Cloud Run does; anything else textPayload."""
    if text.lstrip().startswith("{"):
        try:
            found = json.loads(text)
        except ValueError:
            found = None
        if isinstance(found, dict):
            return {"jsonPayload": found}
    return {"textPayload": text}


def job_entry(execution_name: str, task_index: int, line) -> Entry:
    """One output line of a task, shaped like a Cloud Run job's log entry."""
    _, project, _, location, _, job, _, execution = execution_name.split("/")
    system = line.text.startswith(SYSTEM_PREFIX)
    stamp = rfc3339(line.at_ns)
    body = {
        "insertId": f"{line.seq:016x}",
        "logName": f"projects/{project}/logs/{SYSTEM_LOG if system else STDOUT_LOG}",
        "resource": {"type": "cloud_run_job",
                     "labels": {"job_name": job, "location": location, "project_id": project}},
        "labels": {EXECUTION_LABEL: execution, TASK_LABEL: str(task_index), ATTEMPT_LABEL: "0"},
        "timestamp": stamp, "receiveTimestamp": stamp, "severity": "INFO" if system else "DEFAULT",
        **payload(line.text),
    }
    return Entry((line.at_ns, line.seq), project, body)


def all_entries(state) -> list[Entry]:
    runner = state.process_runner
    lines = runner.log_lines() if runner is not None else []  # no workloads run: nothing was logged
    return [job_entry(name, index, line) for name, index, line in lines]


# ---------------------------------------------------------------- filters

QUOTED = r'"(?:[^"\\]|\\.)*"'
# A word may hold quoted segments: labels."run.googleapis.com/execution_name" is one field.
TOKEN = re.compile(rf'\s*(?:(?P<string>{QUOTED})|(?P<op>>=|<=|!=|=|>|<)|(?P<word>(?:[^\s"=!<>()]|{QUOTED})+)'
                   r'|(?P<other>\S))')
FIELD = re.compile(rf'^[A-Za-z_][A-Za-z0-9_]*(\.(?:[A-Za-z0-9_/-]+|{QUOTED}))*$')
TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


@dataclass(frozen=True)
class Clause:
    path: tuple[str, ...]
    op: str
    value: str

    def matches(self, entry: dict) -> bool:
        found = lookup(entry, self.path)
        if found is None:
            return self.op == "!="  # a missing field equals nothing
        if self.path == ("timestamp",):
            return compare(timestamp_ns(found), self.op, timestamp_ns(self.value))
        return compare(str(found), self.op, self.value)


def unparseable(filter_text: str, why: str) -> ApiError:
    return invalid(f"Unparseable filter: {why} in '{filter_text}'")


def tokens(filter_text: str) -> list[tuple[str, str]]:
    found, at = [], 0
    while at < len(filter_text.rstrip()):
        match = TOKEN.match(filter_text, at)
        if match is None or match.lastgroup == "other":
            raise unparseable(filter_text, f"unexpected character at column {at + 1}")
        found.append((match.lastgroup, match.group(match.lastgroup)))
        at = match.end()
    return found


def parse_filter(filter_text: str) -> list[Clause]:
    """The subset gpuops sends: `field OP value` clauses joined by AND (or by a space, as Logging allows)."""
    parts = tokens(filter_text or "")
    clauses: list[Clause] = []
    while parts:
        if len(parts) < 3 or parts[0][0] != "word" or parts[1][0] != "op" or parts[2][0] == "op":
            raise unparseable(filter_text, "expected `field = \"value\"` (only AND of comparisons is emulated)")
        (_, field), (_, op), (kind, value) = parts[:3]
        if not FIELD.match(field) or field in ("AND", "OR", "NOT"):
            raise unparseable(filter_text, f"'{field}' is not a field")
        clauses.append(clause(filter_text, field, op, unquote(value) if kind == "string" else value))
        parts = parts[3:]
        if parts and parts[0] == ("word", "AND"):
            parts = parts[1:]
            if not parts:
                raise unparseable(filter_text, "AND with nothing after it")
    return clauses


def clause(filter_text: str, field: str, op: str, value: str) -> Clause:
    path = tuple(unquote(p) if p.startswith('"') else p for p in split_field(field))
    if path == ("timestamp",) and timestamp_ns(value) is None:
        raise unparseable(filter_text, f"'{value}' is not an RFC 3339 timestamp")
    return Clause(path, op, value)


def split_field(field: str) -> list[str]:
    return re.findall(rf'{QUOTED}|[^."]+', field)


def unquote(text: str) -> str:
    return json.loads(text)


def lookup(entry: dict, path: tuple[str, ...]) -> Any:
    found: Any = entry
    for part in path:
        if not isinstance(found, dict) or part not in found:
            return None
        found = found[part]
    return None if isinstance(found, (dict, list)) else found


def timestamp_ns(text: str) -> int | None:
    match = TIMESTAMP.match(text)
    if match is None:
        return None
    whole, fraction, zone = match.groups()
    seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * 1_000_000_000 + int((fraction or "").ljust(9, "0"))


OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b, "!=": lambda a, b: a != b, ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, "<": lambda a, b: a < b,
}


def compare(found: Any, op: str, wanted: Any) -> bool:
    return found is not None and OPS[op](found, wanted)


# ---------------------------------------------------------------- the request


@dataclass(frozen=True)
class ListRequest:
    projects: tuple[str, ...]
    clauses: tuple[Clause, ...]
    newest_first: bool
    page_size: int
    after: tuple[int, int] | None  # the key of the last entry of the previous page
    fingerprint: str


def parse_request(raw: str) -> ListRequest:
    try:
        body = json.loads(raw or "{}")
    except ValueError as exc:
        raise invalid(f"Invalid JSON payload received. {exc}") from None
    if not isinstance(body, dict):
        raise invalid("Invalid JSON payload received. Expected an object.")
    unknown = sorted(set(body) - BODY_FIELDS)
    if unknown:
        raise invalid(f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.')
    projects = resource_projects(body)
    order = str(body.get("orderBy") or "timestamp asc").strip().lower()
    if order not in ORDERS:
        raise invalid(f"Invalid orderBy '{body.get('orderBy')}': use 'timestamp asc' or 'timestamp desc'")
    filter_text = str(body.get("filter") or "")
    fingerprint = hashlib.sha1(json.dumps([projects, filter_text, order]).encode()).hexdigest()[:16]
    return ListRequest(tuple(projects), tuple(parse_filter(filter_text)), ORDERS[order],
                       page_size(body.get("pageSize")), decode_token(body.get("pageToken"), fingerprint),
                       fingerprint)


def resource_projects(body: dict) -> list[str]:
    names = body.get("resourceNames") or [f"projects/{p}" for p in body.get("projectIds") or []]
    if not isinstance(names, list) or not names:
        raise invalid("resourceNames: at least one resource name is required, e.g. projects/my-project")
    projects = []
    for name in names:
        match = re.fullmatch(r"projects/([^/]+)", str(name))
        if match is None:
            raise invalid(f"resourceNames: '{name}' is not supported here; the emulator reads projects/P only")
        projects.append(match.group(1))
    return projects


def page_size(value: Any) -> int:
    if value in (None, 0, "0"):
        return DEFAULT_PAGE_SIZE
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise invalid(f"Invalid pageSize '{value}'") from None
    if size < 0:
        raise invalid(f"pageSize must not be negative: {size}")
    return min(size, MAX_PAGE_SIZE)


def encode_token(key: tuple[int, int], fingerprint: str) -> str:
    text = json.dumps({"after": list(key), "query": fingerprint})
    return base64.urlsafe_b64encode(text.encode()).decode()


def decode_token(token: Any, fingerprint: str) -> tuple[int, int] | None:
    """A token names where the last page ended (not an offset, so lines arriving meanwhile shift nothing)."""
    if not token:
        return None
    try:
        decoded = json.loads(base64.urlsafe_b64decode(str(token).encode()))
        after, query = tuple(int(x) for x in decoded["after"]), decoded["query"]
    except (ValueError, KeyError, TypeError):
        raise invalid("Invalid page token: it was not returned by entries.list") from None
    if query != fingerprint or len(after) != 2:
        raise invalid("Invalid page token: the request's resourceNames, filter or orderBy changed")
    return after  # type: ignore[return-value]


def list_entries(state, call) -> dict:
    """POST /v2/entries:list → {"entries": [...], "nextPageToken": "..."} (both left out when empty)."""
    request = parse_request(call.body)
    chosen = [e for e in all_entries(state) if e.project in request.projects
              and all(c.matches(e.body) for c in request.clauses)]
    chosen.sort(key=lambda e: e.key, reverse=request.newest_first)
    if request.after is not None:
        later = (lambda e: e.key < request.after) if request.newest_first else (lambda e: e.key > request.after)
        chosen = [e for e in chosen if later(e)]
    page = chosen[:request.page_size]
    answer: dict = {"entries": [e.body for e in page]} if page else {}
    if len(chosen) > len(page):
        answer["nextPageToken"] = encode_token(page[-1].key, request.fingerprint)
    return answer
