"""What a pipeline run shows in Prefect, computed from its status.json (CONTRACTS §7) and its logs:
a table of stage durations, and the tail of a failed stage's log."""
from __future__ import annotations

from gpuops.job_status import FAILED, STAGES, parse_timestamp

TAIL_LINES = 30


def stage_durations(doc: dict) -> list[dict]:
    """One row per stage: status, start, end and the seconds between them (None until both are known)."""
    rows = []
    for stage in STAGES:
        part = doc[stage]
        started, finished = part.get("started"), part.get("finished")
        seconds = None
        if started and finished:
            seconds = round((parse_timestamp(finished) - parse_timestamp(started)).total_seconds(), 3)
        rows.append({"stage": stage, "status": part["status"], "started": started, "finished": finished,
                     "seconds": seconds})
    return rows


def failed_stage(doc: dict) -> str | None:
    return next((stage for stage in STAGES if doc[stage]["status"] == FAILED), None)


def log_tail_markdown(doc: dict, log_text: str, lines: int = TAIL_LINES) -> str | None:
    """The failed stage's last log lines as markdown, or None when no stage failed."""
    stage = failed_stage(doc)
    if stage is None:
        return None
    tail = log_text.rstrip("\n").splitlines()[-lines:]
    body = "\n".join(tail) if tail else "(the log is empty)"
    fence = "````" if "```" in body else "```"  # a log holding a fence must not close ours
    return "\n".join([f"# {doc['jobId']}: {stage} failed", f"Last {len(tail)} lines of `{doc[stage]['log']}`:",
                      "", fence, body, fence])
