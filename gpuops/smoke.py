"""GPU smoke test planner (pure): find the probe's report, judge every check, build the latency table."""
from __future__ import annotations

import json
import math
import statistics

from gpuops.markdown import cell

EMULATED_TEXT = "GPU emulated (recorded nvidia-smi reading)"
REAL_TEXT = "real GPU (nvidia-smi on the job's host)"


def probe_result_from_output(text: str) -> dict | None:
    """The last output line that parses as a JSON object with a `verdict` key.

    The last one: the job's output also holds the emulator's banner, the image's own logging,
    and possibly an earlier probe attempt; the final report is what the task ended with.
    """
    for line in reversed((text or "").splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            found = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(found, dict) and "verdict" in found:
            return found
    return None


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile: with a handful of requests, interpolating would invent figures."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def latency_figures(records: list[dict]) -> dict:
    """Median and p95 of the answered requests (status 200), with how many there were."""
    ms = ok_latencies(records)
    return {"requests": len(records), "answered_200": len(ms),
            "median_ms": round(statistics.median(ms), 1) if ms else None,
            "p95_ms": round(percentile(ms, 95), 1) if ms else None}


def ok_latencies(records: list[dict]) -> list[float]:
    return [r["ms"] for r in records if r.get("status") == 200]


def _check(name: str, passed: bool, detail: str, figure=None) -> dict:
    return {"check": name, "passed": bool(passed), "detail": detail, "figure": figure}


def _execution_check(execution: dict | None) -> dict:
    if not execution:
        return _check("job-execution", False, "the GPU job did not start an execution")
    name = execution.get("name", "?").rsplit("/", 1)[-1]
    counts = {k: execution.get(f"{k}Count", 0) for k in ("succeeded", "failed", "cancelled")}
    figure = {"execution": name, **counts}
    if execution.get("timedOutAfterS") is not None:
        return _check("job-execution", False, f"execution {name} was still running after "
                      f"{execution['timedOutAfterS']:g} s and was cancelled", figure)
    done = [c for c in execution.get("conditions", []) if c.get("type") == "Completed"]
    succeeded = bool(done) and done[0].get("state") == "CONDITION_SUCCEEDED" and counts["failed"] == 0
    said = done[0].get("message", "") if done else "no Completed condition"
    detail = f"execution {name}: {counts['succeeded']} task(s) succeeded, {counts['failed']} failed"
    return _check("job-execution", succeeded, detail if succeeded else f"{detail}; {said}".rstrip("; "), figure)


def _probe_check(probe: dict | None) -> dict:
    if probe is None:
        return _check("gpu-probe", False, "no line of the job's output is a probe report (JSON with 'verdict'): "
                      "does the image's entrypoint run `gpuops gpu-probe` for the override args?")
    gpus = [f"{g.get('name')} ({g.get('memory_total_mib')} MiB, sm {g.get('compute_cap')})"
            for g in probe.get("gpus", [])]
    figure = {"gpus": gpus, "compute": (probe.get("compute") or {}).get("seconds")}
    if probe.get("verdict") == "pass":
        return _check("gpu-probe", True, f"verdict pass: {', '.join(gpus) or 'no GPU listed'}", figure)
    reasons = "; ".join(probe.get("reasons") or []) or "no reason given"
    return _check("gpu-probe", False, f"verdict {probe.get('verdict')}: {reasons}", figure)


def _emulated_check(probe: dict | None) -> dict:
    # Recorded, never failed: the report must say so, so no one mistakes it for a real card.
    if probe is None:
        return _check("gpu-emulated", True, "unknown: no probe report", None)
    emulated = bool(probe.get("emulated"))
    return _check("gpu-emulated", True, EMULATED_TEXT if emulated else REAL_TEXT, emulated)


def _health_check(records: list[dict]) -> dict:
    bad = [r for r in records if r.get("status") != 200]
    figure = latency_figures(records)
    if not records:
        return _check("health", False, "no health request was made", figure)
    if bad:
        return _check("health", False, f"{len(bad)}/{len(records)} health requests did not answer 200: "
                      f"{_said(bad[0])}", figure)
    return _check("health", True, f"{len(records)}/{len(records)} answered 200", figure)


def _generation_check(records: list[dict], expect_field: str) -> dict:
    """A health endpoint can answer while the real work fails: only a generation shows it."""
    bad = [r for r in records if r.get("status") != 200 or expect_field not in (r.get("fields") or [])]
    figure = latency_figures(records)
    if not records:
        return _check("generation", False, "no generation request was made", figure)
    if bad:
        first = bad[0]
        why = _said(first) if first.get("status") != 200 else f"200 without the field '{expect_field}'"
        return _check("generation", False, f"{len(bad)}/{len(records)} generations failed: {why}", figure)
    return _check("generation", True, f"{len(records)}/{len(records)} answered 200 with '{expect_field}'", figure)


def _said(record: dict) -> str:
    if record.get("status") is None:
        return f"no answer ({record.get('error') or 'unknown error'})"
    return f"HTTP {record['status']} {record.get('error') or ''}".strip()


def _latency_check(health: list[dict], generation: list[dict]) -> dict:
    # Figures only: no latency bound is part of the runbook's smoke test.
    figure = {"health": latency_figures(health), "generation": latency_figures(generation)}
    gen = figure["generation"]
    detail = ("no generation answered 200" if gen["median_ms"] is None else
              f"generation median {gen['median_ms']} ms, p95 {gen['p95_ms']} ms over {gen['answered_200']} requests")
    return _check("latency", True, f"measured: {detail}", figure)


def judge_smoke(job_execution: dict | None, probe: dict | None, health: list[dict], generation: list[dict],
                expect_field: str = "output") -> dict:
    """Every check of the smoke test, and the overall verdict (all must pass).

    `health` and `generation` are request records: `{"status": int | None, "ms": float,
    "fields": [top-level keys of a JSON body] | None, "error": str | None}`.
    """
    checks = [
        _execution_check(job_execution), _probe_check(probe), _emulated_check(probe),
        _health_check(health), _generation_check(generation, expect_field), _latency_check(health, generation),
    ]
    failed = [c["check"] for c in checks if not c["passed"]]
    return {"passed": not failed, "failed": failed, "emulated": bool(probe and probe.get("emulated")),
            "gpu_label": _emulated_check(probe)["detail"], "checks": checks}


def comparison_table(gpu_latencies: list[float], cpu_latencies: list[float]) -> list[dict]:
    """CPU-vs-GPU rows (median/p95 ms, requests, speedup = CPU median / GPU median); measured, not estimated."""
    sides = [("GPU", gpu_latencies)] + ([("CPU", cpu_latencies)] if cpu_latencies else [])
    medians = {side: statistics.median(values) if values else None for side, values in sides}
    speedup = None
    if medians["GPU"] and medians.get("CPU"):
        speedup = round(medians["CPU"] / medians["GPU"], 2)
    return [{"side": side, "requests": len(values),
             "median_ms": round(medians[side], 1) if values else None,
             "p95_ms": round(percentile(values, 95), 1) if values else None,
             "speedup_vs_cpu": (speedup if side == "GPU" else 1.0) if speedup is not None else None,
             "how": f"measured: {len(values)} sequential requests"} for side, values in sides]


def auth_refusal(records: list[dict]) -> str | None:
    """The first request refused for want of a credential, as the probe explained it (which one, which flag)."""
    return next((r["refused"] for r in records if r.get("refused")), None)


# --- the report ------------------------------------------------------------------------


def report_markdown(result: dict) -> str:
    verdict = "PASSED" if result["passed"] else f"FAILED ({', '.join(result['failed'])})"
    lines = [f"# GPU smoke test of `{result['gpu_service']}`: {verdict}", "",
             f"**{result['gpu_label']}**", "", f"API: {result['api']}", "",
             f"Credentials the probes sent: {result.get('credentials_sent', 'none')}", "",
             f"GPU job: `{result['gpu_job']}`, "
             f"execution `{result['execution']}`; GPU service URL: {result['gpu_uri']}", "",
             "| check | result | detail | figures |", "|---|---|---|---|"]
    for c in result["checks"]:
        figure = json.dumps(c["figure"], sort_keys=True) if c["figure"] is not None else ""
        mark = "pass" if c["passed"] else "**FAIL**"
        lines.append(f"| {c['check']} | {mark} | {cell(c['detail'])} | `{figure}` |")
    lines += ["", "## CPU vs GPU (measured)", "", "| side | requests | median ms | p95 ms | speedup |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['side']} | {r['requests']} | {r['median_ms']} | {r['p95_ms']} | {r['speedup_vs_cpu']} |"
              for r in result["comparison"]]
    lines.append("")
    lines.append(result["comparison_note"])
    return "\n".join(lines)


def comparison_note(on_emulator: bool, baseline_uri: str | None, service: str) -> str:
    if not baseline_uri:
        return f"No CPU baseline: service `{service}` has no URL."
    note = f"Same generation request, sent sequentially to `{service}` (CPU) and the GPU service."
    if on_emulator:
        note += " On the emulator both are local processes on one host: the speedup says nothing about a GPU."
    return note
