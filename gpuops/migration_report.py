"""Planner for the migration's checklist: each phase's evidence and progress, and the artifact's markdown."""
from __future__ import annotations

from gpuops import job_run
from gpuops.markdown import cell


def phase_evidence(phase: str, result: dict) -> tuple[str, int]:
    """One line of proof per phase, and how far it got (percent)."""
    if phase == "describe":
        return (f"revision {result['revision']}, {len(result['env_names'])} env names, "
                f"{len(result['findings'])} findings"), 100
    if phase == "create-jobs":
        return ", ".join(f"{r['id']} {r['action']}" for r in result["resources"]), 100
    if phase == "job-test":
        return job_test_evidence(result), 100
    if phase == "smoke-test":
        return f"{sum(c['passed'] for c in result['checks'])}/{len(result['checks'])} checks passed", 100
    steps = result.get("history", [])
    return (f"{result['outcome']}: " + " → ".join(f"{h['percent']}% {h['verdict']}" for h in steps)), 100


def job_test_evidence(rows: list[dict] | dict) -> str:
    rows = rows["rows"] if isinstance(rows, dict) else rows
    measured = [r for r in rows if r["job"]]
    return ", ".join(f"{r['job']} {r['state']} in {r['measured_s']} s (`{r['execution']}`)" for r in measured)


def failure_progress(history: list[dict], step_count: int) -> int:
    """How far a canary got before it stopped: the last step that passed, of the canary's own steps."""
    passed = [h for h in history if h.get("verdict") == "pass"]
    if not passed or step_count <= 0:
        return 0
    # History counts steps from 1; a resumed canary's history starts at the step it resumed from.
    done = max(h["step"] for h in passed) if all("step" in h for h in passed) else len(passed)
    return min(100, int(100 * done / step_count))


def checklist_markdown(service: str, api: str, rows: list[dict], costs: dict, serving: list[dict],
                       job_times: list[dict] | None = None, canary_windows: list[dict] | None = None) -> str:
    lines = [f"# GPU migration of `{service}`", f"API: {api}", "",
             "| phase | 日本語 | status | % done | evidence |", "|---|---|---|---|---|"]
    lines += [f"| {r['phase']} | {r['ja']} | {r['status']} | {r['percent']}% | {r['evidence']} |" for r in rows]
    lines += ["", "## Serving now", *(f"- {t['percent']}% → `{t['revision']}`" for t in serving if t["percent"])]
    if job_times:
        lines += ["", *job_run.job_time_markdown(job_times, emulated="emulator" in api)]
    if canary_windows and any("stable_requests" in w for w in canary_windows):
        lines += ["", *response_time_markdown(canary_windows, emulated="emulator" in api)]
    lines += _cost_lines(costs, api)
    return "\n".join(lines)


def response_time_markdown(windows: list[dict], emulated: bool = False) -> list[str]:
    """Runbook 6-B's response-time row, measured: each canary window sent the same requests to the GPU
    candidate and to the CPU stable revision, interleaved."""
    rows = [f"| {w['step']} | {w['percent']}% | {w['requests']} | {cell(w['p95_ms'])} | "
            f"{cell(w.get('stable_requests'))} | {cell(w.get('stable_p95_ms'))} | {cell(w.get('median_ratio'))} | "
            f"{cell(w.get('p_value'))} | {w['verdict']} |" for w in windows]
    return ["## 6-B レスポンス時間 / response time: GPU candidate vs CPU stable, per canary window (measured)",
            "| step | GPU share | GPU requests | GPU p95 ms | CPU requests | CPU p95 ms | GPU/CPU median | "
            "p-value | verdict |", "|---|---|---|---|---|---|---|---|---|", *rows,
            *(["", "On the emulator both revisions are local processes on one host: these figures say nothing "
                   "about a GPU."] if emulated else [])]


def _cost_lines(costs: dict, api: str) -> list[str]:
    est = costs["estimate"]
    lines = ["", "## Cost", f"Prices: {est['price_source']}.",
             f"**Estimate** (not a measurement) from stated inputs {est['inputs']}: "
             f"${est['usd_per_month']}/month at ${est['rate']['total']}/h "
             f"(GPU ${est['rate']['gpu']} + instance ${est['rate']['instance']})."]
    if costs.get("measured"):
        m = costs["measured"]
        lines.append(f"**Measured**: the smoke test's GPU job ran {m['gpu_seconds']} s → ${m['usd']}"
                     + (" (on the emulator: no real GPU was billed)" if "emulator" in api else "") + ".")
    return lines
