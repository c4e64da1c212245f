"""Adapter: what the weekly review reads: flow runs and deployments from the Prefect API (filtered, a page
at a time), processingTime artifacts, dead letters from the status bucket, GPU utilisation from Cloud
Monitoring, and each pool's backlog.

Flow runs are read with keyset pagination, one stream per state type merged by start time: each page asks
for runs starting at or after the last start time seen, leaving out the ids already read at exactly that
time. Unlike an offset, this costs the same for the last page as for the first and skips or repeats nothing
while runs are created. Each page's runs are cut down to a `RunRecord` at once and handed on: a caller that
aggregates as they arrive holds at most one page per state type. Prefect's client retries 429/502/503 itself.

processingTime comes from the `processing-time-<task>` markdown artifacts process-file creates on every
attempt (their description reads `task T: processingTime S s`): it is in the API for any run, with no log
to read, where process-file's result is not (persist_result=False).
"""
from __future__ import annotations

import heapq
import math
import re
import uuid
from collections import Counter
from datetime import datetime, timezone
from typing import Iterator, Optional

from gpuops import dead_letter
from gpuops.review_report import Deployment, RunRecord
from gpuops.work_pool_backlog import pool_backlog

PAGE = 200  # Prefect's largest page (PREFECT_API_DEFAULT_LIMIT)
STATE_TYPES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED", "RUNNING", "SCHEDULED", "PENDING", "PAUSED",
               "CANCELLING")  # a started run may be in any (SCHEDULED: AwaitingRetry between attempts)
PROCESSING_KEY = "processing-time-"
PROCESSING_TIME = re.compile(r"processingTime (\d+(?:\.\d+)?) s")
GPU_UTILISATION = "run.googleapis.com/container/gpu/utilizations"
# Cloud Run GPU containers report under services' revisions and under jobs; grouped by service or job.
UTILISATION_RESOURCES = (("cloud_run_revision", "service_name"), ("cloud_run_job", "job_name"))


def _post(client, path: str, body: dict) -> list[dict]:
    return client.request("POST", path, json=body).json()


def _iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat()


def _epoch(text: Optional[str]) -> Optional[float]:
    return None if text is None else datetime.fromisoformat(text).timestamp()


# --- deployments -----------------------------------------------------------------------------------


def read_deployments(client) -> dict[str, Deployment]:
    """Every deployment (id -> Deployment named `flow/deployment`, its work pool and GPU type)."""
    found, offset = [], 0
    while True:
        page = _post(client, "/deployments/filter", {"limit": PAGE, "offset": offset, "sort": "NAME_ASC"})
        found += [{k: d.get(k) for k in ("id", "name", "flow_id", "work_pool_name", "job_variables")} for d in page]
        if len(page) < PAGE:
            break
        offset += PAGE
    flows = _flow_names(client, sorted({d["flow_id"] for d in found}))
    pools = pool_gpu_types(client, sorted({d["work_pool_name"] for d in found if d["work_pool_name"]}))
    return {d["id"]: Deployment(d["id"], f"{flows.get(d['flow_id'], d['flow_id'])}/{d['name']}", d["work_pool_name"],
                                (d["job_variables"] or {}).get("gpu_type") or pools.get(d["work_pool_name"]))
            for d in found}


def _flow_names(client, ids: list[str]) -> dict[str, str]:
    names = {}
    for i in range(0, len(ids), PAGE):
        page = _post(client, "/flows/filter", {"flows": {"id": {"any_": ids[i:i + PAGE]}}, "limit": PAGE})
        names.update({f["id"]: f["name"] for f in page})
    return names


def pool_gpu_types(client, pools: list[str]) -> dict[str, Optional[str]]:
    """Each pool's default `gpu_type` job variable (None: the pool asks for no GPU type, or is gone)."""
    from prefect.exceptions import ObjectNotFound

    found = {}
    for pool in pools:
        try:
            template = client.read_work_pool(pool).base_job_template or {}
        except ObjectNotFound:
            template = {}
        found[pool] = template.get("variables", {}).get("properties", {}).get("gpu_type", {}).get("default")
    return found


# --- flow runs -------------------------------------------------------------------------------------


def runs(client, start: datetime, end: datetime, page_size: int = PAGE) -> Iterator[RunRecord]:
    """Flow runs of any deployment started in [start, end], in start-time order, each with its attempts'
    processingTime: one paged stream per state type, merged (at most one page of each held at a time)."""
    streams = [_pages_of(client, state_type, start, end, page_size) for state_type in STATE_TYPES]
    return heapq.merge(*(_each(stream) for stream in streams), key=lambda run: run.start)


def _each(pages: Iterator[list[RunRecord]]) -> Iterator[RunRecord]:
    for page in pages:
        yield from page


def _pages_of(client, state_type: str, start: datetime, end: datetime, page_size: int) -> Iterator[list[RunRecord]]:
    """One state type's runs by start time, keyset-paged. On SQLite only this shape has an index
    (state_type, coalesce(start_time, expected_start_time)): sorting every type together by start time scans
    and sorts the whole table for each page, so the cost of a page grows with the table."""
    after, seen = _iso(start), []
    while True:
        runs = {"deployment_id": {"is_null_": False}, "state": {"type": {"any_": [state_type]}},
                "start_time": {"after_": after, "before_": _iso(end), "is_null_": False}}
        if seen:
            runs["id"] = {"not_any_": seen}
        page = _post(client, "/flow_runs/filter", {"flow_runs": runs, "sort": "START_TIME_ASC", "limit": page_size})
        if not page:
            return
        times = processing_times(client, [r["id"] for r in page])
        yield [RunRecord(r["id"], r["deployment_id"], r["state_type"], _epoch(r["start_time"]), _epoch(r["end_time"]),
                         r["run_count"], tuple(times.get(r["id"], ()))) for r in page]
        if len(page) < page_size:
            return
        last = page[-1]["start_time"]
        at_last = [r["id"] for r in page if r["start_time"] == last]
        seen = seen + at_last if last == after else at_last
        after = last


def processing_times(client, run_ids: list[str]) -> dict[str, list[float]]:
    """Flow run id -> the processingTime of each of its attempts, from process-file's artifacts."""
    found: dict[str, list[float]] = {}
    if not run_ids:
        return found
    offset = 0
    while True:
        body = {"artifacts": {"flow_run_id": {"any_": run_ids}, "key": {"like_": PROCESSING_KEY},
                              "type": {"any_": ["markdown"]}},
                "sort": "ID_DESC", "limit": PAGE, "offset": offset}
        page = _post(client, "/artifacts/filter", body)
        for artifact in page:
            match = PROCESSING_TIME.search(artifact.get("description") or "")
            if match and (artifact.get("key") or "").startswith(PROCESSING_KEY):
                found.setdefault(artifact["flow_run_id"], []).append(float(match[1]))
        if len(page) < PAGE:
            return found
        offset += PAGE


def backlog(client, pools: list[str], now: datetime) -> dict[str, int]:
    """Each pool's late + scheduled runs due at `now` (gpuops.work_pool_backlog)."""
    return {pool: pool_backlog(client, pool, now) for pool in pools}


# --- dead letters ----------------------------------------------------------------------------------


def dead_letters(store, client, start: datetime, end: datetime) -> dict:
    """Dead letters written in [start, end], counted per deployment of their flow run:
    {"where", "by_deployment": {deployment id: n}, "without_deployment": n}."""
    run_ids = []
    for doc in dead_letter.records(store, since=start):
        at = _when(doc.get("deadLetteredAt"))
        if at is not None and start <= at <= end:
            run_ids.append(doc.get("flowRunId"))
    valid = sorted({r for r in run_ids if _is_uuid(r)})
    deployment_of: dict[str, Optional[str]] = {}
    for i in range(0, len(valid), PAGE):
        page = _post(client, "/flow_runs/filter", {"flow_runs": {"id": {"any_": valid[i:i + PAGE]}}, "limit": PAGE})
        deployment_of.update({r["id"]: r["deployment_id"] for r in page})
    counts = Counter(deployment_of.get(str(r)) if _is_uuid(r) else None for r in run_ids)
    without = counts.pop(None, 0)
    return {"where": f"s3://{store.bucket}/{dead_letter.PREFIX}", "by_deployment": dict(counts),
            "without_deployment": without}


def _when(text) -> Optional[datetime]:
    try:
        return datetime.fromisoformat(str(text)).astimezone(timezone.utc)
    except ValueError:
        return None


def _is_uuid(text) -> bool:
    try:
        uuid.UUID(str(text))
        return True
    except ValueError:
        return False


# --- GPU utilisation -------------------------------------------------------------------------------


def utilisation_params(resource_type: str, label: str, aligner: str, reducer: str, start: float,
                       end: float) -> list[tuple[str, str]]:
    """timeSeries.list over the whole window as one period, per-series `aligner`, reduced per service/job."""
    from gpuops.monitoring import MIN_ALIGNMENT_S, rfc3339

    period = max(MIN_ALIGNMENT_S, math.ceil(end - start))
    return [("filter", f'metric.type = "{GPU_UTILISATION}" AND resource.type = "{resource_type}"'),
            ("interval.startTime", rfc3339(start)), ("interval.endTime", rfc3339(end)),
            ("aggregation.alignmentPeriod", f"{period}s"), ("aggregation.perSeriesAligner", aligner),
            ("aggregation.crossSeriesReducer", reducer), ("aggregation.groupByFields", f"resource.labels.{label}")]


def values_by(body: dict, label: str) -> dict[str, float]:
    """{service or job: value} from a reduced answer (its one point per series)."""
    found = {}
    for series in body.get("timeSeries", []):
        name = series.get("resource", {}).get("labels", {}).get(label, "")
        points = [p["value"]["doubleValue"] for p in series.get("points", []) if "doubleValue" in p.get("value", {})]
        if points:
            found[name] = float(points[0])
    return found


def gpu_utilisation(project: str, start: datetime, end: datetime, endpoint: Optional[str] = None,
                    credentials=None) -> dict:
    """GPU utilisation of the project's Cloud Run services and jobs over the window: per service or job, the
    mean over its instances' means and the highest p95 of an instance. A refusal or an outage is reported
    ("unavailable" and why), not raised: the rest of the review still stands."""
    from gpuops.monitoring import CloudMonitoringRequests

    source = CloudMonitoringRequests(project=project, service="", endpoint=endpoint, credentials=credentials)
    where = f"project {project}, " + (f"gpuops Monitoring emulation at {source.url}, not Google"
                                      if source.is_emulation else source.url)
    t0, t1 = start.timestamp(), end.timestamp()
    series = []
    try:
        for resource_type, label in UTILISATION_RESOURCES:
            means = values_by(source.list_time_series(
                utilisation_params(resource_type, label, "ALIGN_MEAN", "REDUCE_MEAN", t0, t1)), label)
            p95s = values_by(source.list_time_series(
                utilisation_params(resource_type, label, "ALIGN_PERCENTILE_95", "REDUCE_MAX", t0, t1)), label)
            kind = "service" if resource_type == "cloud_run_revision" else "job"
            series += [{"resource": f"{kind} {name}", "mean": means.get(name), "p95": p95s.get(name)}
                       for name in sorted(set(means) | set(p95s))]
    except Exception as exc:  # noqa: BLE001 - an answer we cannot use is reported, with its first line
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        return {"status": "unavailable", "source": where, "reason": f"{type(exc).__name__}: {first}"}
    return {"status": "measured", "source": where, "metric": GPU_UTILISATION, "series": series}
