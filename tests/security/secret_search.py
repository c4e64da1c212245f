"""Finding a planted secret wherever a run may have left it: files (also base64 pickles inside JSON) and the Prefect server."""
from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime
from pathlib import Path

_B64_RUN = re.compile(rb"[A-Za-z0-9+/]{24,}={0,2}")


def _decoded(data: bytes, depth: int = 0) -> list[bytes]:
    """data, and every base64 run in it decoded (Prefect writes results as base64 pickles in JSON,
    with line breaks every 76 characters, escaped as \\n inside the JSON string)."""
    out = [data]
    if depth > 2:
        return out
    joined = re.sub(rb"\\n|\s", b"", data)
    for run in _B64_RUN.findall(joined):
        run = run.rstrip(b"=")
        for cut in range(4):  # a run may start mid-quantum after the joins above
            piece = run[cut:]
            # Cut to whole quanta, and padded back (its '=' were stripped): else a value's last bytes are lost.
            for whole in {piece[: len(piece) - len(piece) % 4], piece + b"=" * (-len(piece) % 4)}:
                try:
                    blob = base64.b64decode(whole, validate=True)
                except (binascii.Error, ValueError):
                    continue
                if len(blob) >= 16:
                    out += _decoded(blob, depth + 1)
    return out


def holds(data: bytes, value: str) -> bool:
    return any(value.encode() in blob for blob in _decoded(data))


def files_holding(root: Path, value: str) -> list[Path]:
    return [p for p in sorted(root.rglob("*")) if p.is_file() and holds(p.read_bytes(), value)]


def server_record(since: datetime) -> str:
    """What the Prefect server keeps of the runs since `since`: logs, flow and task runs with their
    states (messages included), as one text."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterStartTime, LogFilter,
                                                LogFilterTimestamp)

    parts: list = []
    with get_client(sync_client=True) as client:
        log_filter = LogFilter(timestamp=LogFilterTimestamp(after_=since))
        while True:
            page = client.read_logs(log_filter=log_filter, limit=200, offset=len(parts))
            parts += [log.model_dump(mode="json") for log in page]
            if len(page) < 200:
                break
        flow_runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)))
        assert flow_runs, "no flow run reached the server: the check below would be empty"
        for flow_run in flow_runs:
            parts.append(flow_run.model_dump(mode="json"))
            parts += [s.model_dump(mode="json") for s in client.read_flow_run_states(flow_run.id)]
            parts += [t.model_dump(mode="json") for t in client.read_task_runs(
                flow_run_filter=FlowRunFilter(id={"any_": [flow_run.id]}))]
    return json.dumps(parts, default=str)


