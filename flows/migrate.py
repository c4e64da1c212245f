"""Flow `migrate-to-gpu`: describe → create jobs → (job test) → smoke test → canary, stopping at the first failure."""
from __future__ import annotations

from typing import Callable, Optional

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from blocks.cloud_run_blocks import CloudRunTarget, GpuProfile
from flows.canary import canary_shift
from flows.common import connect, resolve_target, where
from flows.create_jobs import create_jobs
from flows.describe_revision import describe_revision
from flows.run_job import run_job
from flows.smoke_test import gpu_smoke_test
from gpuops import cloudrun, cost, job_plan, job_run, migration_report, params, revision
from gpuops.errors import BadInput, CheckFailed, CouldNotRun

PHASES = [
    ("describe", "Phase 0 前提確認・準備作業", "describe-revision"),
    ("create-jobs", "Phase 1-2 CPU Job化 / GPU版デプロイ", "create-jobs"),
    ("job-test", "Phase 1-B / 6-B CPU Job実行テスト / Job実行時間", "run-job"),  # only with job_args
    ("smoke-test", "Phase 2-C GPU版動作テスト", "gpu-smoke-test"),
    ("canary", "Phase 7 段階的移行", "canary-shift"),
]


def _history_of(exc: Exception) -> list[dict]:
    """The windows a failed canary observed, from its CheckFailed details."""
    details = exc.details if isinstance(exc, CheckFailed) else []
    return next((d["history"] for d in details if isinstance(d, dict) and "history" in d), [])


def _failure_progress(phase: str, exc: Exception, step_count: int) -> int:
    """How far a failed phase got: a canary rolled back after k of its n steps passed, say."""
    if phase == "canary":
        return migration_report.failure_progress(_history_of(exc), step_count)
    return 0


def _job_test(project: str, region: str, prefix: str, job_args: list[str], timeout_s: float,
              target: Optional[CloudRunTarget], measured: dict) -> dict:
    """Runbook 1-B and 6-B: the CPU job, then the GPU job, with the same args; both times measured."""
    ids = job_plan.resource_ids(prefix)
    results: dict[str, dict] = {}
    for side in ("cpu", "gpu"):
        try:
            results[side] = run_job(project, region, ids[f"{side}_job"], args=job_args, timeout_s=timeout_s,
                                    target=target)
        except CheckFailed as exc:  # a failed job still has a measured row
            results[side] = next((d for d in exc.details if isinstance(d, dict) and "state" in d), None)
    measured["rows"] = rows = job_run.job_time_rows(results)
    failed = [f"{r['job']} {r['state']}" for r in rows if r["job"] and r["state"] != job_run.SUCCEEDED]
    if len([r for r in rows if r["job"]]) < 2 or failed:
        raise CheckFailed(f"job test failed: {', '.join(failed) or 'a job did not run'}", rows)
    return {"rows": rows}


def _gpu_seconds(cr, execution_name: str | None) -> float | None:
    execution = cloudrun.get_execution(cr, execution_name) if execution_name else None
    return job_run.duration_s(execution) if execution else None


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
    job_args: Optional[list[str]] = None,
    job_timeout_s: float = 1800,
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
        job_args: the job input for runbook 1-B/6-B: when given, the CPU job and the GPU job run with
            these args after create-jobs, and the checklist shows both measured times. Empty: skipped.
        job_timeout_s: bound on each of those job executions, in seconds (cancelled past it).
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
    params.job_args("job_args", job_args)
    params.seconds("job_timeout_s", job_timeout_s, high=params.MAX_JOB_WAIT_S, example="1800")
    args = (where_to.project, where_to.region, where_to.service)
    runs: dict[str, Callable[[], dict]] = {
        "describe": lambda: describe_revision(*args, target=target),
        "create-jobs": lambda: create_jobs(*args, gpu_profile=profile, target=target),
        "job-test": lambda: _job_test(*args, list(job_args or []), job_timeout_s, target, measured_jobs),
        "smoke-test": lambda: gpu_smoke_test(*args, target=target),
        "canary": lambda: canary_shift(*args, steps=steps, gpu_profile=profile, window_s=canary_window_s,
                                       probe_requests=probe_requests, min_requests=min_requests,
                                       approve_final=approve_final, notify_block=notify_block, target=target),
    }
    rows, results, failure, crash, measured_jobs = [], {}, None, None, {}
    for phase, ja, flow_name in PHASES:
        if phase == "job-test" and not job_args:
            continue  # no job input named: the job test is not part of this migration
        if failure:
            rows.append({"phase": phase, "ja": ja, "status": "not run", "percent": 0, "evidence": f"stopped: {failure}"})
            continue
        try:
            results[phase] = runs[phase]()
            evidence, percent = migration_report.phase_evidence(phase, results[phase])
            rows.append({"phase": phase, "ja": ja, "status": "done", "percent": percent, "evidence": evidence})
        except (CheckFailed, BadInput) as exc:
            failure = f"{flow_name} failed"
            if phase == "canary":
                results["canary"] = {"history": _history_of(exc)}
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
    job_times = measured_jobs.get("rows")
    windows = (results.get("canary") or {}).get("history")
    create_markdown_artifact(key=f"migration-{where_to.service}",
                             markdown=migration_report.checklist_markdown(
                                 where_to.service, where(cr), rows, costs, serving, job_times, windows))
    result = {"service": where_to.service, "api": where(cr), "phases": rows, "serving": serving, "cost": costs,
              **({"job_times": job_times} if job_times else {}),
              **({"canary_windows": windows} if windows else {})}
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
