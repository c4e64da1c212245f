"""Dead letters: the work item that failed its last retry, kept as `dlq/{task_id}.json` in the status bucket.

The record holds what is needed to look into it and send it again: the original request (task id,
input URI, params), the error, the flow run and how many attempts it had. It is written with a
conditional first write (`If-None-Match: *`), so a repeat (a hook run twice, a re-run failing again)
never overwrites the first record: `write` says whether this call wrote it.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Iterator

from gpuops.errors import BadInput

PREFIX = "dlq/"
# A task id becomes an object key: letters, digits and . _ - only, so it cannot climb out of dlq/.
_TASK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_ERROR_CHARS = 4000


def check_task_id(task_id: str) -> str:
    if not isinstance(task_id, str) or not _TASK_ID.match(task_id) or ".." in task_id:
        raise BadInput(f"task_id {task_id!r} is not a task id: 1-128 letters, digits, '.', '_' or '-', "
                       "starting with a letter or digit")
    return task_id


def key(task_id: str) -> str:
    return f"{PREFIX}{check_task_id(task_id)}.json"


def record(task_id: str, input_uri: str, params: dict | None, error: str, flow_run_id: str | None,
           attempts: int | None, at: datetime | None = None) -> dict:
    """The dead-letter document (plain JSON)."""
    when = (at or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return {
        "taskId": check_task_id(task_id),
        "request": {"task_id": task_id, "input_uri": input_uri, "params": params or {}},
        "error": (error or "")[:MAX_ERROR_CHARS],
        "flowRunId": flow_run_id,
        "attempts": attempts,
        "deadLetteredAt": when.isoformat().replace("+00:00", "Z"),
    }


def write(store, doc: dict) -> bool:
    """Put the record unless the task already has one: True when this call wrote it."""
    return store.put_new_json(key(doc["taskId"]), doc)


def read(store, task_id: str) -> dict | None:
    return store.read_json(key(task_id))


def records(store, since: datetime | None = None) -> Iterator[dict]:
    """Every dead letter in the bucket, one read at a time; with `since`, only objects written at or after it
    (a record is written once, so its object's time is when the task was dead-lettered)."""
    for found, modified in store.keys(PREFIX):
        if found.endswith(".json") and (since is None or modified >= since):
            doc = store.read_json(found)
            if doc is not None:
                yield doc
