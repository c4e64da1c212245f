"""Emulation of a Cloud Monitoring API v3 subset: Cloud Run request metrics of what the router served."""

from __future__ import annotations

import math
import re
import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

from .cloudrun_common import SYSTEM_QUERY_PARAMS, ApiError, invalid

# Real Cloud Monitoring samples Cloud Run metrics every 60 s and shows a sample up to 180 s later:
# a query lags the traffic by a few minutes. This emulation answers from the router's record at once.
MONITORING_LABEL = "gpuops local Cloud Monitoring API v3 emulation (timeSeries.list subset) \u2014 not Google"
REQUEST_COUNT = "run.googleapis.com/request_count"
REQUEST_LATENCIES = "run.googleapis.com/request_latencies"
RESOURCE_TYPE = "cloud_run_revision"
RESOURCE_LABELS = ("project_id", "service_name", "revision_name", "location")
METRIC_LABELS = ("response_code", "response_code_class")
MIN_ALIGNMENT_S = 60  # Google refuses a shorter alignment period
KEPT_RECORDS = 200_000  # the oldest served requests are forgotten past this many

TIME_SERIES_PATH = re.compile(r"/v3/projects/(?P<project>[^/:]+)/timeSeries")
FILTER_CLAUSE = re.compile(r'\s*(?P<key>[a-z_.]+)\s*=\s*"(?P<value>[^"\\]*)"\s*')
FILTER_KEYS = {"metric.type": "metric", "resource.type": "resource",
               "resource.labels.service_name": "service_name", "resource.labels.revision_name": "revision_name"}
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)")
PERCENTILE_ALIGNER = re.compile(r"ALIGN_PERCENTILE_(05|50|95|99)")
GROUP_FIELD = re.compile(r"(?P<kind>metric|resource)\.labels?\.(?P<label>[a-z_]+)")
FILTER_SHAPE = " AND ".join(f'{key} = "..."' for key in FILTER_KEYS)
PARAMS = {"filter", "interval.startTime", "interval.endTime", "aggregation.alignmentPeriod",
          "aggregation.perSeriesAligner", "aggregation.crossSeriesReducer", "aggregation.groupByFields",
          "pageSize", "pageToken"}


@dataclass(frozen=True)
class Served:
    """One request the router answered for a revision."""

    at: float  # epoch seconds when the answer went back
    project: str
    location: str
    service: str
    revision: str
    status: int
    latency_ms: float

    def labels(self) -> dict[str, dict[str, str]]:
        return {"resource": {"project_id": self.project, "service_name": self.service,
                             "revision_name": self.revision, "location": self.location},
                "metric": {"response_code": str(self.status), "response_code_class": f"{self.status // 100}xx"}}


class ServedRequests:
    """The router's record of served requests: what Cloud Run would report to Cloud Monitoring."""

    def __init__(self) -> None:
        self._records: deque[Served] = deque(maxlen=KEPT_RECORDS)
        self._lock = threading.Lock()

    def add(self, record: Served) -> None:
        with self._lock:
            self._records.append(record)

    def between(self, start: float, end: float) -> list[Served]:
        # DELTA intervals are (start, end]: a request answered exactly at start belongs to the period before.
        with self._lock:
            return [r for r in self._records if start < r.at <= end]

    def clear(self) -> None:
        with self._lock:
            self._records.clear()


@dataclass(frozen=True)
class Query:
    """A timeSeries.list request, parsed and checked."""

    project: str
    metric: str
    service_name: str | None
    revision_name: str | None
    start: float
    end: float
    period_s: int
    aligner: str
    reducer: str
    group_by: tuple[tuple[str, str], ...]  # (metric|resource, label)

    def matches(self, record: Served) -> bool:
        return (record.project == self.project and self.service_name in (None, record.service)
                and self.revision_name in (None, record.revision))


# ---------------------------------------------------------------- parsing


def parse_filter(text: str) -> dict[str, str]:
    """`metric.type = "..." AND resource.type = "cloud_run_revision" [AND resource.labels.X = "..."]`."""
    found: dict[str, str] = {}
    for clause in text.split(" AND "):
        match = FILTER_CLAUSE.fullmatch(clause)
        key = FILTER_KEYS.get(match["key"]) if match else None
        if key is None or key in found:
            raise invalid(f'Field filter had an invalid value of "{text}": the emulation understands only '
                          f"{FILTER_SHAPE} (the resource.labels clauses optional)")
        found[key] = match["value"]
    if found.get("metric") not in (REQUEST_COUNT, REQUEST_LATENCIES):
        raise invalid(f"Cannot find metric(s) that match type = \"{found.get('metric', '')}\" "
                      f"(the emulation serves {REQUEST_COUNT} and {REQUEST_LATENCIES})")
    if found.get("resource") != RESOURCE_TYPE:
        raise invalid(f'Field filter had an invalid value of "{text}": resource.type must be "{RESOURCE_TYPE}"')
    return found


def parse_time(value: str | None, field: str) -> float | None:
    if value is None:
        return None
    if not RFC3339.fullmatch(value):
        raise invalid(f'Invalid value at \'{field}\' (type.googleapis.com/google.protobuf.Timestamp), '
                      f'"{value}": not an RFC 3339 timestamp')
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def parse_period(value: str | None) -> int:
    match = re.fullmatch(r"(\d+)s", value or "")
    if not match:
        raise invalid(f"aggregation.alignmentPeriod {value!r} must be a whole number of seconds like \"60s\"")
    if int(match[1]) < MIN_ALIGNMENT_S:
        raise invalid(f"The alignment period must be at least {MIN_ALIGNMENT_S} seconds, got {value}")
    return int(match[1])


def parse_aggregation(metric: str, params: dict[str, list[str]]) -> tuple[str, str, tuple]:
    aligner = _one(params, "aggregation.perSeriesAligner") or "ALIGN_NONE"
    reducer = _one(params, "aggregation.crossSeriesReducer") or "REDUCE_NONE"
    # Counts align by delta; a latency distribution aligns to a percentile (a DOUBLE gauge).
    counting = metric == REQUEST_COUNT
    known = (aligner == "ALIGN_DELTA") if counting else bool(PERCENTILE_ALIGNER.fullmatch(aligner))
    if not known:
        wanted = "ALIGN_DELTA" if counting else "ALIGN_PERCENTILE_05/50/95/99"
        raise invalid(f"perSeriesAligner {aligner} is not supported for {metric} by the emulation (use {wanted})")
    if reducer not in ("REDUCE_NONE", "REDUCE_SUM") or (reducer == "REDUCE_SUM" and metric != REQUEST_COUNT):
        raise invalid(f"crossSeriesReducer {reducer} is not supported for {metric} by the emulation")
    group_by = []
    for field in params.get("aggregation.groupByFields", []):
        match = GROUP_FIELD.fullmatch(field)
        labels = METRIC_LABELS if match and match["kind"] == "metric" else RESOURCE_LABELS
        if not match or match["label"] not in labels:
            raise invalid(f"groupByFields {field!r} names no label of {metric} or {RESOURCE_TYPE}")
        group_by.append((match["kind"], match["label"]))
    return aligner, reducer, tuple(group_by)


def parse_query(project: str, query: Iterable[tuple[str, str]]) -> Query:
    params: dict[str, list[str]] = {}
    for key, value in query:
        if key in SYSTEM_QUERY_PARAMS:
            continue
        if key not in PARAMS:
            raise invalid(f"Invalid JSON payload received. Unknown name \"{key}\": the emulation supports "
                          f"{sorted(PARAMS)}")
        params.setdefault(key, []).append(value)
    found = parse_filter(_one(params, "filter") or "")
    end = parse_time(_one(params, "interval.endTime"), "interval.end_time")
    if end is None:
        raise invalid("Field interval.end_time is required")
    start = parse_time(_one(params, "interval.startTime"), "interval.start_time")
    start = end if start is None else start  # Google's default: the start time is the end time
    if start > end:
        raise invalid("The start time must be before the end time")
    aligner, reducer, group_by = parse_aggregation(found["metric"], params)
    period = parse_period(_one(params, "aggregation.alignmentPeriod"))
    return Query(project, found["metric"], found.get("service_name"), found.get("revision_name"),
                 start, end, period, aligner, reducer, group_by)


def _one(params: dict[str, list[str]], key: str) -> str | None:
    values = params.get(key, [])
    if len(values) > 1:
        raise invalid(f"Parameter {key} was given {len(values)} times")
    return values[0] if values else None


# ---------------------------------------------------------------- answering


def time_series(records: ServedRequests, query: Query) -> dict:
    """Align each raw series into periods ending at endTime, then reduce; points newest first."""
    series: dict[tuple, dict] = {}
    for record in filter(query.matches, records.between(query.start, query.end)):
        labels = _grouped(record.labels(), query) if query.reducer != "REDUCE_NONE" else record.labels()
        key = (tuple(sorted(labels["resource"].items())), tuple(sorted(labels["metric"].items())))
        entry = series.setdefault(key, {"labels": labels, "buckets": {}})
        bucket = math.floor((query.end - record.at) / query.period_s)
        entry["buckets"].setdefault(bucket, []).append(record.latency_ms)
    out = [_series_json(query, entry["labels"], entry["buckets"]) for _, entry in sorted(series.items())]
    return {"timeSeries": out} if out else {}  # Google leaves the field out when nothing matches


def _grouped(labels: dict[str, dict[str, str]], query: Query) -> dict[str, dict[str, str]]:
    # A reduced series keeps only the grouped labels (and its project).
    kept = {"resource": {"project_id": labels["resource"]["project_id"]}, "metric": {}}
    for kind, label in query.group_by:
        kept[kind][label] = labels[kind][label]
    return kept


def _series_json(query: Query, labels: dict, buckets: dict[int, list[float]]) -> dict:
    counting = query.metric == REQUEST_COUNT
    points = []
    for bucket in sorted(buckets):  # bucket 0 ends at endTime: newest first, as Google sends them
        end = query.end - bucket * query.period_s
        start = end - query.period_s if counting else end  # an aligned gauge point is an instant
        value = ({"int64Value": str(len(buckets[bucket]))} if counting
                 else {"doubleValue": _percentile(buckets[bucket], int(query.aligner[-2:]))})
        points.append({"interval": {"startTime": rfc3339(start), "endTime": rfc3339(end)}, "value": value})
    return {"metric": {"type": query.metric, "labels": labels["metric"]},
            "resource": {"type": RESOURCE_TYPE, "labels": labels["resource"]},
            "metricKind": "DELTA" if counting else "GAUGE", "valueType": "INT64" if counting else "DOUBLE",
            "points": points}


def _percentile(values: list[float], pct: int) -> float:
    # Nearest rank over the raw latencies; Google interpolates within its distribution buckets,
    # so its figure can differ by up to a bucket's width.
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)], 3)


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def handle(records: ServedRequests, method: str, path: str, query: list[tuple[str, str]]) -> tuple[int, dict]:
    """GET /v3/projects/{project}/timeSeries; any other /v3 path is a 404 in Google's shape."""
    match = TIME_SERIES_PATH.fullmatch(path)
    try:
        if method != "GET" or match is None:
            raise ApiError(404, f"{MONITORING_LABEL}: only GET /v3/projects/PROJECT/timeSeries is served, "
                                f"not {method} {path}", "NOT_FOUND")
        return 200, time_series(records, parse_query(match["project"], query))
    except ApiError as exc:
        return exc.code, exc.body()
