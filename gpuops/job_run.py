"""Planner for one Cloud Run job execution (runbook 1-B and 6-B): its outcome, duration, report."""
from __future__ import annotations

from datetime import datetime

from gpuops.markdown import cell

SUCCEEDED, FAILED, CANCELLED, TIMED_OUT, UNFINISHED = "succeeded", "failed", "cancelled", "timed out", "unfinished"


def _completed_state(execution: dict) -> str | None:
    found = [c.get("state") for c in execution.get("conditions", []) if c.get("type") == "Completed"]
    return found[0] if found else None


def outcome(execution: dict, timed_out: bool = False) -> str:
    """succeeded, failed, cancelled, timed out (gpuops cancelled it at its bound), or unfinished."""
    if timed_out:
        return TIMED_OUT
    cancelled = execution.get("cancelledCount") or any(
        c.get("type") == "Cancelled" or c.get("executionReason") == "CANCELLED"
        for c in execution.get("conditions", []))
    if cancelled:
        return CANCELLED
    completed = _completed_state(execution)
    if execution.get("failedCount") or completed == "CONDITION_FAILED":
        return FAILED
    if completed == "CONDITION_SUCCEEDED" or (execution.get("completionTime") and execution.get("succeededCount")):
        return SUCCEEDED
    return UNFINISHED


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def duration_s(execution: dict) -> float | None:
    """Measured: startTime → completionTime (None until both are known)."""
    start, end = execution.get("startTime"), execution.get("completionTime")
    if not start or not end:
        return None
    return round((_instant(end) - _instant(start)).total_seconds(), 3)


def summary(*, job: str, execution: dict, timed_out: bool, timeout_s: float, args: list[str] | None,
            log_tail: list[str], api: str) -> dict:
    """What run-job reports: plain data, never the execution's template (it holds env values)."""
    state = outcome(execution, timed_out)
    return {
        "job": job, "execution": execution.get("name", "").rsplit("/", 1)[-1], "state": state,
        "succeeded": state == SUCCEEDED, "duration_s": duration_s(execution), "timeout_s": timeout_s,
        "timed_out": timed_out, "args": list(args) if args is not None else None,
        "tasks": {"count": execution.get("taskCount", 0), "succeeded": execution.get("succeededCount", 0),
                  "failed": execution.get("failedCount", 0), "cancelled": execution.get("cancelledCount", 0)},
        "started_at": execution.get("startTime"), "completed_at": execution.get("completionTime"),
        "log_tail": list(log_tail), "api": api,
    }


def failure_message(result: dict) -> str:
    what = f"job {result['job']} execution {result['execution']}"
    if result["state"] == TIMED_OUT:
        return f"{what} ran past its bound of {result['timeout_s']:g} s: gpuops cancelled it."
    last = next((line for line in reversed(result["log_tail"]) if line.strip()), "")
    tail = f" Last log line: {last[:200]}" if last else ""
    return f"{what} {result['state']} ({result['tasks']['failed']} of {result['tasks']['count']} tasks failed).{tail}"


def _seconds(value: float | None) -> str:
    return "—" if value is None else f"{value:g}"


def report_markdown(result: dict) -> str:
    args = " ".join(result["args"]) if result["args"] else "(the job's own)"
    lines = [f"# Job `{result['job']}`: {result['state'].upper()}", "", f"API: {result['api']}", "",
             "| execution | state | measured s | bound s | args |", "|---|---|---|---|---|",
             f"| `{result['execution']}` | {result['state']} | {_seconds(result['duration_s'])} | "
             f"{result['timeout_s']:g} | `{cell(args)}` |", "",
             f"## Last {len(result['log_tail'])} log lines", "", "```", *result["log_tail"], "```"]
    return "\n".join(lines)


# --- the migration's 6-B rows ------------------------------------------------------------

ROWS = (("cpu", "CPU job", "CPU Job実行時間"), ("gpu", "GPU job", "GPU Job実行時間"))


def job_time_rows(results: dict[str, dict | None]) -> list[dict]:
    """The runbook's 6-B rows (実測値 ___秒), measured: one per side, then the speedup when both succeeded."""
    rows = []
    for side, label, ja in ROWS:
        result = results.get(side) or {}
        rows.append({"item": label, "ja": ja, "job": result.get("job"), "execution": result.get("execution"),
                     "state": result.get("state", "not run"), "measured_s": result.get("duration_s")})
    cpu, gpu = rows[0], rows[1]
    if cpu["state"] == gpu["state"] == SUCCEEDED and cpu["measured_s"] and gpu["measured_s"]:
        rows.append({"item": "GPU speedup", "ja": "高速化率 (CPU秒 / GPU秒)", "job": None, "execution": None,
                     "state": SUCCEEDED, "speedup": round(cpu["measured_s"] / gpu["measured_s"], 2),
                     "measured_s": None})
    return rows


def job_time_markdown(rows: list[dict], emulated: bool) -> list[str]:
    lines = ["## 6-B パフォーマンステスト: job run time (measured)", "",
             "| item | 日本語 | 実測値 (s) | state | execution |", "|---|---|---|---|---|"]
    for row in rows:
        figure = f"×{row['speedup']}" if "speedup" in row else _seconds(row["measured_s"])
        execution = f"`{row['execution']}`" if row["execution"] else ""
        job = f" `{row['job']}`" if row["job"] else ""
        lines.append(f"| {row['item']}{job} | {row['ja']} | {figure} | {row['state']} | {execution} |")
    lines.append("")
    lines.append("Both jobs ran the same args; each time is the execution's startTime → completionTime."
                 + (" On the emulator both are local processes on one host: the times say nothing about a GPU."
                    if emulated else ""))
    return lines
