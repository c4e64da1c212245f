"""Flow `migrate-to-gpu`: describe → create jobs → smoke test → canary, stopping at the first failure."""
from __future__ import annotations

from datetime import datetime
from typing import Callable, Optional

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from blocks.cloud_run import CloudRunTarget, GpuProfile
from flows.canary import canary_shift
from flows.common import connect, resolve_target, where
from flows.create_jobs import create_jobs
from flows.describe_revision import describe_revision
from flows.smoke_test import gpu_smoke_test
from gpuops import cloudrun, cost, params, revision
from gpuops.errors import BadInput, CheckFailed, CouldNotRun

PHASES = [
    ("describe", "Phase 0 前提確認・準備作業", "describe-revision"),
    ("create-jobs", "Phase 1-2 CPU Job化 / GPU版デプロイ", "create-jobs"),
    ("smoke-test", "Phase 2-C GPU版動作テスト", "gpu-smoke-test"),
    ("canary", "Phase 7 段階的移行", "canary-shift"),
]


def _evidence(phase: str, result: dict) -> tuple[str, int]:
    """One line of proof per phase, and how far it got (percent)."""
    if phase == "describe":
        return (f"revision {result['revision']}, {len(result['env_names'])} env names, "
                f"{len(result['findings'])} findings"), 100
    if phase == "create-jobs":
        return ", ".join(f"{r['id']} {r['action']}" for r in result["resources"]), 100
    if phase == "smoke-test":
        return f"{sum(c['passed'] for c in result['checks'])}/{len(result['checks'])} checks passed", 100
    steps = result.get("history", [])
    return (f"{result['outcome']}: " + " → ".join(f"{h['percent']}% {h['verdict']}" for h in steps)), 100


def _failure_progress(phase: str, exc: Exception, step_count: int) -> int:
    """How far a failed phase got: a canary rolled back after k of its n steps passed, say."""
    if phase == "canary" and isinstance(exc, CheckFailed):
        history = next((d.get("history") for d in exc.details if isinstance(d, dict) and "history" in d), None)
        if history:
            return int(100 * sum(h["verdict"] == "pass" for h in history) / step_count)
    return 0


def checklist_markdown(service: str, api: str, rows: list[dict], costs: dict, serving: list[dict]) -> str:
    lines = [f"# GPU migration of `{service}`", f"API: {api}", "",
             "| phase | 日本語 | status | % done | evidence |", "|---|---|---|---|---|"]
    lines += [f"| {r['phase']} | {r['ja']} | {r['status']} | {r['percent']}% | {r['evidence']} |" for r in rows]
    lines += ["", "## Serving now", *(f"- {t['percent']}% → `{t['revision']}`" for t in serving if t["percent"])]
    est = costs["estimate"]
    lines += ["", "## Cost", f"Prices: {est['price_source']}.",
              f"**Estimate** (not a measurement) from stated inputs {est['inputs']}: "
              f"${est['usd_per_month']}/month at ${est['rate']['total']}/h "
              f"(GPU ${est['rate']['gpu']} + instance ${est['rate']['instance']})."]
    if costs.get("measured"):
        m = costs["measured"]
        lines.append(f"**Measured**: the smoke test's GPU job ran {m['gpu_seconds']} s → ${m['usd']}"
                     + (" (on the emulator: no real GPU was billed)" if "emulator" in api else "") + ".")
    return "\n".join(lines)


def _gpu_seconds(cr, execution_name: str | None) -> float | None:
    execution = cloudrun.get_execution(cr, execution_name) if execution_name else None
    if not execution or not execution.get("startTime") or not execution.get("completionTime"):
        return None
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))
    return (parse(execution["completionTime"]) - parse(execution["startTime"])).total_seconds()


@flow(name="migrate-to-gpu")
def migrate_to_gpu(
    project: Optional[str] = None,
    region: Optional[str] = None,
    service: Optional[str] = None,
    gpu_profile: Optional[GpuProfile] = None,
    steps: str = "20,80,100",
    canary_window_s: float = 30.0,
    probe_requests: int = 30,
    min_requests: int = 20,
    approve_final: bool = True,
    monthly_job_hours: float = 100,
    monthly_service_hours: float = 50,
    notify_block: Optional[str] = None,
    target: Optional[CloudRunTarget] = None,
) -> dict:
    """The whole Cloud Run GPU migration; the service keeps serving whatever phase fails.

    Args:
        project: Google Cloud project ID (or take it from `target`).
        region: Cloud Run region; it must offer the GPU type.
        service: the live Cloud Run service to move onto GPUs.
        gpu_profile: GPU shape; empty means one NVIDIA L4 with 8 CPU and 32 GiB.
        steps: the GPU revision's traffic share at each canary step, ending at 100.
        canary_window_s: seconds each canary observation window lasts.
        probe_requests: probe requests sent to the GPU revision per window.
        min_requests: fewest requests for a canary verdict; fewer holds.
        approve_final: pause for an approval before the canary takes the last traffic off stable.
        monthly_job_hours: GPU job hours a month, for the cost estimate (runbook: 100).
        monthly_service_hours: GPU service hours a month, for the cost estimate (runbook: 50).
        notify_block: name of a Prefect notification block told about rollbacks and the outcome.
        target: a gpuops Cloud Run target block; explicit parameters win over its fields.
    """
    where_to, credentials = resolve_target(project, region, service, target)
    profile = gpu_profile or GpuProfile()
    # Every subflow's parameters are checked here, before the first of them changes anything.
    params.gpu_profile(profile)
    params.prefix(where_to.service)
    checked = params.canary(steps_text=steps, window_s=canary_window_s, probe_requests=probe_requests,
                            min_requests=min_requests)
    params.cost_inputs(monthly_job_hours=monthly_job_hours, monthly_service_hours=monthly_service_hours)
    args = (where_to.project, where_to.region, where_to.service)
    runs: dict[str, Callable[[], dict]] = {
        "describe": lambda: describe_revision(*args, target=target),
        "create-jobs": lambda: create_jobs(*args, gpu_profile=profile, target=target),
        "smoke-test": lambda: gpu_smoke_test(*args, target=target),
        "canary": lambda: canary_shift(*args, steps=steps, gpu_profile=profile, window_s=canary_window_s,
                                       probe_requests=probe_requests, min_requests=min_requests,
                                       approve_final=approve_final, notify_block=notify_block, target=target),
    }
    rows, results, failure, crash = [], {}, None, None
    for phase, ja, flow_name in PHASES:
        if failure:
            rows.append({"phase": phase, "ja": ja, "status": "not run", "percent": 0, "evidence": f"stopped: {failure}"})
            continue
        try:
            results[phase] = runs[phase]()
            evidence, percent = _evidence(phase, results[phase])
            rows.append({"phase": phase, "ja": ja, "status": "done", "percent": percent, "evidence": evidence})
        except (CheckFailed, BadInput) as exc:
            failure = f"{flow_name} failed"
            rows.append({"phase": phase, "ja": ja, "status": "failed",
                         "percent": _failure_progress(phase, exc, len(checked["steps"])),
                         "evidence": str(exc).splitlines()[0]})
        except Exception as exc:  # recorded like a failure; the subflow left its own changes safe
            failure, crash = f"{flow_name} could not run", exc
            rows.append({"phase": phase, "ja": ja, "status": "could not run", "percent": 0,
                         "evidence": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"})

    cr = connect(where_to, credentials)
    serving = revision.traffic(cloudrun.get_service(cr, where_to.service_name) or {})
    costs = {"estimate": cost.estimate(profile.gpu_type, monthly_job_hours, monthly_service_hours,
                                       profile.min_instances)}
    seconds = _gpu_seconds(cr, _execution_name(where_to, results.get("smoke-test")))
    if seconds is not None:
        costs["measured"] = cost.measured(profile.gpu_type, seconds)
    create_markdown_artifact(key=f"migration-{where_to.service}",
                             markdown=checklist_markdown(where_to.service, where(cr), rows, costs, serving))
    result = {"service": where_to.service, "api": where(cr), "phases": rows, "serving": serving, "cost": costs}
    still = ", ".join(f"{t['revision']} {t['percent']}%" for t in serving if t["percent"])
    if crash is not None:
        crashed = next(r for r in rows if r["status"] == "could not run")
        raise CouldNotRun(f"migration of {where_to.service} stopped: {failure} ({crashed['evidence']}). Still serving: "
                          f"{still}. Run `gpuops migrate` again to resume: every phase converges.") from crash
    if failure:
        get_run_logger().warning("migration stopped: %s; the service still serves %s", failure, still)
        raise CheckFailed(f"migration of {where_to.service} stopped: {failure}. Still serving: {still}", rows)
    return result


def _execution_name(target, smoke: dict | None) -> str | None:
    if not smoke or not smoke.get("execution"):
        return None
    return f"{target.job_name(smoke['gpu_job'])}/executions/{smoke['execution']}"
