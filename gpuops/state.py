"""Local state the migration flows share: the describe snapshot (never an env value)."""
from __future__ import annotations

import json
import os
from pathlib import Path

STATE_ENV = "GPUOPS_STATE_DIR"


def state_dir() -> Path:
    return Path(os.environ.get(STATE_ENV) or Path.cwd() / ".gpuops" / "state")


def snapshot_path(project: str, region: str, service: str) -> Path:
    return state_dir() / project / region / service / "snapshot.json"


def save_snapshot(project: str, region: str, snapshot: dict) -> Path:
    path = snapshot_path(project, region, snapshot["service"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(snapshot, indent=2, sort_keys=True))
    tmp.replace(path)  # atomic: a crash never leaves half a snapshot for rollback to read
    return path


def load_snapshot(project: str, region: str, service: str) -> dict | None:
    path = snapshot_path(project, region, service)
    return json.loads(path.read_text()) if path.exists() else None


def _executions_path(job_name: str) -> Path:
    # projects/P/locations/R/jobs/J -> <state>/P/R/jobs/J.executions.json
    parts = job_name.split("/")
    return state_dir() / parts[1] / parts[3] / "jobs" / f"{parts[5]}.executions.json"


def record_started_execution(execution_name: str) -> None:
    """Remember an execution gpuops started, so that a rollback cancels only those (never a user's)."""
    job_name = execution_name.rsplit("/executions/", 1)[0]
    path = _executions_path(job_name)
    names = started_executions(job_name)
    if execution_name not in names:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([*names, execution_name][-100:], indent=2))
        tmp.replace(path)


def started_executions(job_name: str) -> list[str]:
    path = _executions_path(job_name)
    return json.loads(path.read_text()) if path.exists() else []
