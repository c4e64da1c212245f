"""A pipeline job's status.json (CONTRACTS.md §7): built, moved through its stages, and checked."""
from __future__ import annotations

import copy
import re
from datetime import datetime, timezone
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

from gpuops.errors import BadInput

PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
STATUSES = (PENDING, RUNNING, SUCCEEDED, FAILED)
STAGES = ("build", "run")
LOG_NAMES = {"build": "build.log", "run": "app.log"}
# Each stage's own contract field besides status and log; set through `transition(..., **fields)`.
STAGE_FIELDS = {"build": ("imageUri",), "run": ("artifactUrl",)}
# Where a stage may go from where it is. The same status again is allowed (a retried task says it twice).
NEXT = {PENDING: {RUNNING, FAILED}, RUNNING: {SUCCEEDED, FAILED}, SUCCEEDED: set(), FAILED: set()}
_SHA = re.compile(r"[0-9a-fA-F]{7,40}")


class BadTransition(ValueError):
    """A stage asked to move where it may not (run before build succeeded, a finished stage again)."""


def check_job_id(sha: str) -> str:
    """The job id of a commit SHA (7 to 40 hex digits), lower-cased; anything else is bad input."""
    text = (sha or "").strip()
    if not _SHA.fullmatch(text):
        raise BadInput(f"sha (--sha) {sha!r} is not a commit SHA (the job id). Fix: pass 7 to 40 hex digits, "
                       "e.g. --sha $(git rev-parse HEAD).")
    return text.lower()


def timestamp(now: datetime) -> str:
    """UTC ISO-8601 with Z, to the second, as §7 shows: 2025-06-18T14:30:00Z."""
    if now.tzinfo is None:
        raise ValueError("timestamps need an aware datetime (UTC)")
    return now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def log_key(job_id: str, stage: str) -> str:
    """The bucket key of a stage's log: `{jobId}/build.log` or `{jobId}/app.log`."""
    return f"{job_id}/{LOG_NAMES[stage]}"


def new_status(job_id: str, now: datetime) -> dict:
    """A created job: every stage Pending, both logs named, their results not known yet."""
    job_id = check_job_id(job_id)
    ts = timestamp(now)
    return {
        "jobId": job_id,
        "overallStatus": PENDING,
        "timestamps": {"created": ts, "updated": ts},
        "build": {"status": PENDING, "log": "/" + log_key(job_id, "build"), "imageUri": None},
        "run": {"status": PENDING, "log": "/" + log_key(job_id, "run"), "artifactUrl": None},
    }


def transition(doc: dict, stage: str, status: str, now: datetime, **fields) -> dict:
    """A copy of `doc` with `stage` moved to `status` (and its fields set), times and overall status updated.

    Raises BadTransition for a move §7's order forbids: the run before the build succeeded, a
    finished stage started again, an unknown stage, status or field.
    """
    _check_move(doc, stage, status, fields)
    new = copy.deepcopy(doc)
    part = new[stage]
    ts = timestamp(now)
    if status != part["status"]:
        # Extra fields (§7 allows them): when each stage started and finished, for durations.
        if status == RUNNING or (part["status"] == PENDING and status in (SUCCEEDED, FAILED)):
            part["started"] = ts
        if status in (SUCCEEDED, FAILED):
            part["finished"] = ts
    part["status"] = status
    part.update({k: v for k, v in fields.items() if v is not None})
    return _touched(new, ts)


def _check_move(doc: dict, stage: str, status: str, fields: dict) -> None:
    if stage not in STAGES:
        raise BadTransition(f"unknown stage {stage!r}: one of {', '.join(STAGES)}")
    if status not in STATUSES:
        raise BadTransition(f"unknown status {status!r}: one of {', '.join(STATUSES)}")
    unknown = set(fields) - set(STAGE_FIELDS[stage])
    if unknown:
        raise BadTransition(f"{stage} has no field {', '.join(sorted(unknown))}: only {', '.join(STAGE_FIELDS[stage])}")
    current = doc[stage]["status"]
    if status != current and status not in NEXT[current]:
        raise BadTransition(f"{doc['jobId']}: {stage} cannot go from {current} to {status}")
    if stage == "run" and status != PENDING and doc["build"]["status"] != SUCCEEDED:
        raise BadTransition(f"{doc['jobId']}: the run cannot be {status} while the build is {doc['build']['status']}")


def set_prefect(doc: dict, now: datetime, *, flow_run_id: str | None = None, flow_run_url: str | None = None,
                deployment_id: str | None = None, parameters: dict | None = None) -> dict:
    """A copy of `doc` naming its Prefect flow run and deployment (an extra field, for the dashboard's links).

    `parameters` are what a re-run starts the deployment with; credentials in a URL are dropped.
    """
    new = copy.deepcopy(doc)
    given = {"flowRunId": flow_run_id, "flowRunUrl": flow_run_url, "deploymentId": deployment_id,
             "parameters": None if parameters is None else {k: _no_userinfo(v) for k, v in parameters.items()}}
    new.setdefault("prefect", {}).update({k: v for k, v in given.items() if v is not None})
    return _touched(new, timestamp(now))


def restart(doc: dict, now: datetime) -> dict:
    """The same job run again: stages back to Pending, `created` kept, `attempt` counted (an extra field)."""
    new = new_status(doc["jobId"], now)
    new["timestamps"]["created"] = doc["timestamps"]["created"]
    new["attempt"] = int(doc.get("attempt", 1)) + 1
    if "prefect" in doc:
        new["prefect"] = {k: v for k, v in doc["prefect"].items() if k in ("deploymentId", "parameters")}
    return new


class JobBusy(RuntimeError):
    """Another flow run, still active, owns this job id: the same job never runs twice at once."""

    def __init__(self, job_id: str, owner: str):
        super().__init__(f"job {job_id} is already being run by flow run {owner}")
        self.job_id, self.owner = job_id, owner


def claim(doc: dict, flow_run_id: str, now: datetime, owner_active: Callable[[str], bool], **prefect) -> dict:
    """`doc` owned by `flow_run_id` (and naming the rest of `prefect`, as set_prefect takes it): the job is free when it has no owner, is finished, or its owner's
    flow run is no longer active (it crashed); then a started or finished job starts over (restart).

    Raises JobBusy while another active flow run owns an unfinished job. Called inside
    StatusStore.update, so two runs claiming at once cannot both win.
    """
    owner = doc.get("prefect", {}).get("flowRunId")
    if owner == flow_run_id:
        return doc
    if owner and not is_finished(doc) and owner_active(owner):
        raise JobBusy(doc["jobId"], owner)
    untouched = all(doc[stage]["status"] == PENDING for stage in STAGES)
    fresh = doc if untouched and not owner else restart(doc, now)
    return set_prefect(fresh, now, flow_run_id=flow_run_id, **prefect)


def overall(doc: dict) -> str:
    """Failed if a stage failed; Succeeded when the run did; Pending before anything started; else Running."""
    build, run = doc["build"]["status"], doc["run"]["status"]
    if FAILED in (build, run):
        return FAILED
    if run == SUCCEEDED:
        return SUCCEEDED
    if build == PENDING and run == PENDING:
        return PENDING
    return RUNNING


def is_finished(doc: dict) -> bool:
    return doc.get("overallStatus") in (SUCCEEDED, FAILED)


def check_document(doc) -> list[str]:
    """What keeps `doc` from being a §7 status.json (empty: it is one). For documents read from a bucket."""
    if not isinstance(doc, dict):
        return ["not a JSON object"]
    problems = [f"missing {key}" for key in ("jobId", "overallStatus", "timestamps", "build", "run") if key not in doc]
    if problems:
        return problems
    for stage in STAGES:
        part = doc[stage]
        if not isinstance(part, dict) or part.get("status") not in STATUSES:
            problems.append(f"{stage}.status is not one of {', '.join(STATUSES)}")
    if doc["overallStatus"] not in STATUSES:
        problems.append(f"overallStatus is not one of {', '.join(STATUSES)}")
    stamps = doc["timestamps"] if isinstance(doc["timestamps"], dict) else {}
    for key in ("created", "updated"):
        try:
            parse_timestamp(stamps.get(key, ""))
        except (TypeError, ValueError):
            problems.append(f"timestamps.{key} is not UTC ISO-8601 with Z")
    return problems


def _touched(doc: dict, ts: str) -> dict:
    doc["timestamps"]["updated"] = ts
    doc["overallStatus"] = overall(doc)
    return doc


def _no_userinfo(value):
    """A URL without `user:token@`: a re-run link must not carry a credential."""
    if not isinstance(value, str) or "@" not in value or "://" not in value:
        return value
    parts = urlsplit(value)
    if parts.username is None and parts.password is None:
        return value
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
