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
