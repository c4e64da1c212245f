"""Flow `canary-shift` (runbook phase 7-A: 段階的移行): the GPU revision takes traffic step by step, gated."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from typing import Optional

from prefect import flow, get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from blocks.cloud_run import GpuProfile
from blocks.cloud_run import CloudRunTarget
from flows.common import Target, connect, notify, resolve_target, where
from flows.rollback import now, restore_stable
from gpuops import cloudrun, gpu_rules, job_plan, params, traffic
from gpuops.errors import BadInput, CheckFailed, CouldNotRun
from gpuops.monitoring import CloudMonitoringRequests
from gpuops.probe_traffic import MetricsSource, ProbeTraffic
from gpuops.traffic import CanaryState, Gates


class CanaryApproval(RunInput):
    """The answer to: move the last traffic off the stable revision onto the GPU revision?"""

    approve: bool = False
    note: str = ""


def candidate_name(service: str, template: dict) -> str:
    """Named by its content, so a re-run or a retry finds the revision it already made."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:6]
    return f"{service}-gpu-{digest}"


def single_serving_revision(service: dict) -> str:
    shares = traffic.serving(service)
    if list(shares.values()) != [100]:
        split_text = ", ".join(f"{rev} {pct}%" for rev, pct in shares.items())
        raise BadInput(f"traffic is already split ({split_text}): finish that change or run `gpuops rollback` first.")
    return next(iter(shares))


@task(name="deploy-candidate", cache_policy=NO_CACHE, persist_result=False)
def deploy_candidate(cr: cloudrun.CloudRun, target: Target, profile: dict, steps: tuple[int, ...]) -> CanaryState:
    """The GPU template as a new revision with 0% and a tag; the state written in the same update.

    Planned on the service as read, with its etag: a deploy landing in between is planned on again.
    """
    planned: list[CanaryState] = []

    def decide(service: dict) -> cloudrun.TrafficChange:
        stable = single_serving_revision(service)
        template = job_plan.gpu_template(service["template"], profile)
        candidate = candidate_name(target.service, template)
        planned[:] = [CanaryState(stable=stable, candidate=candidate, steps=steps, updated=now(),
                                  flow_run_id=str(runtime.flow_run.id or ""))]
        return cloudrun.TrafficChange(traffic.split(stable, candidate, 0),
                                      {traffic.STATE_ANNOTATION: planned[0].to_annotation()},
                                      template={**template, "revision": candidate})

    cloudrun.update_traffic(cr, target.service_name, decide)
    return planned[0]


# Tasks that hold a service dict never persist it: it carries plaintext env values.
@task(name="set-split", cache_policy=NO_CACHE, persist_result=False)
def set_split(cr: cloudrun.CloudRun, target: Target, state: CanaryState) -> dict:
    """The state's split and the state itself, written only over what this canary wrote last."""
    state = replace(state, updated=now())

    def decide(service: dict) -> cloudrun.TrafficChange:
        changed = traffic.interference(service, state)
        if changed:
            raise CheckFailed(f"{target.service} changed during its canary ({changed}): the canary stopped without "
                              f"writing over it, at {state.percent}% on {state.candidate}. Decide with "
                              f"`gpuops rollback` (it refuses stale state) or `gpuops rollback --to REVISION`.")
        return cloudrun.TrafficChange(traffic.split(state.stable, state.candidate, state.percent),
                                      {traffic.STATE_ANNOTATION: state.to_annotation()})

    return cloudrun.update_traffic(cr, target.service_name, decide)


def tag_url(service: dict, tag: str) -> str:
    for status in service.get("trafficStatuses", []):
        if status.get("tag") == tag and status.get("uri"):
            return status["uri"]
    raise CheckFailed(f"the service reports no URL for tag {tag!r}: cannot observe the candidate.")


def metrics_source(metrics: str, probe: ProbeTraffic, gates: Gates, target: Target, cr: cloudrun.CloudRun,
                   credentials=None) -> MetricsSource:
    """The probe's own figures, or Cloud Monitoring's for the candidate while the probe gives it traffic."""
    if params.choice("metrics", metrics, params.METRICS) == "probe":
        return probe
    # On the emulator, its Monitoring emulation (GPUOPS_MONITORING_API still wins inside the adapter).
    endpoint = cr.endpoint if cr.is_emulator else None
    return CloudMonitoringRequests(target.project, target.service, endpoint, credentials,
                                   traffic=lambda url, seconds: probe.observe(url, seconds, gates))


@task(name="observe-window", cache_policy=NO_CACHE)
def observe(url: str, source: MetricsSource, window_s: float, gates: Gates, revision: str) -> traffic.Window:
    return source.observe(url, window_s, gates, revision=revision)


def ask_approval(state: CanaryState, timeout_s: int) -> CanaryApproval | None:
    """Pause for a typed answer (UI form, or POST /api/flow_runs/{id}/resume); None on timeout."""
    get_run_logger().warning("waiting for approval to move the last %d%% onto %s", 100 - state.percent,
                             state.candidate)
    try:
        return pause_flow_run(wait_for_input=CanaryApproval, timeout=timeout_s, poll_interval=2)
    except Exception as exc:  # prefect raises its own timeout error types across versions
        if "timeout" in type(exc).__name__.lower() or "timed out" in str(exc).lower():
            return None
        raise


def history_markdown(target: Target, api: str, state: CanaryState, history: list[dict], outcome: str) -> str:
    rows = [f"| {h['step']} | {h['percent']}% | {h['requests']} | {h['errors']} | "
            f"{h['p95_ms'] if h['p95_ms'] is not None else '-'} | {h['verdict']} | {'; '.join(h['reasons'])} |"
            for h in history]
    return "\n".join([
        f"# Canary of `{target.service}`: {outcome}",
        f"API: {api}. Stable `{state.stable}`, candidate `{state.candidate}`, steps {list(state.steps)}.",
        _figures_line(history), "",
        "| step | candidate share | requests | errors | p95 ms | verdict | why |", "|---|---|---|---|---|---|---|",
        *rows,
    ])


def _figures_line(history: list[dict]) -> str:
    if any(h["source"].startswith("Cloud Monitoring") for h in history):
        return ("Figures are Cloud Monitoring's request_count and request_latencies of the candidate revision; "
                "the flow sent probe requests to its tag URL so that it had traffic.")
    return "Figures are measured from probe requests the flow sent to the candidate's tag URL."


def _record(history: list[dict], state: CanaryState, window: traffic.Window, verdict: traffic.Verdict) -> None:
    history.append({"step": state.step + 1, "percent": state.percent, "requests": window.requests,
                    "errors": window.errors, "p95_ms": None if window.p95_ms is None else round(window.p95_ms, 1),
                    "verdict": verdict.outcome, "reasons": list(verdict.reasons), "source": window.source,
                    "first_error_at": window.first_error_at, "ended_at": window.ended_at})


@flow(name="canary-shift")
def canary_shift(
    project: Optional[str] = None,
    region: Optional[str] = None,
    service: Optional[str] = None,
    steps: str = "20,80,100",
    gpu_profile: Optional[GpuProfile] = None,
    window_s: float = 30.0,
    probe_requests: int = 30,
    probe_path: str = "/generate",
    probe_method: str = "POST",
    probe_body: Optional[dict] = None,
    max_error_rate: float = 0.01,
    max_p95_ms: float = 5000.0,
    min_requests: int = 20,
    max_holds: int = 2,
    stop_window_early: bool = True,
    approve_final: bool = False,
    approval_timeout_s: int = 3600,
    notify_block: Optional[str] = None,
    target: Optional[CloudRunTarget] = None,
    metrics: str = "probe",
) -> dict:
    """Deploy the GPU configuration as a tagged 0% revision, then shift traffic step by step.

    Each step sets the split, observes a window of probe traffic to the candidate's tag URL, and
    judges the gates: a broken limit rolls back at once; too few requests holds (never promotes),
    and rolls back after `max_holds` held windows. The state lives on the service (annotation
    `gpuops.dev/canary`), so a crashed run resumes where it was, or `rollback` restores stable.

    Args:
        project: Google Cloud project ID (or take it from `target`).
        region: Cloud Run region; it must offer the GPU type.
        service: the live Cloud Run service that gets the GPU revision.
        steps: the candidate's traffic share at each step, ending at 100 (runbook: 20,80,100).
        gpu_profile: GPU shape of the new revision; empty means one NVIDIA L4, 8 CPU, 32 GiB.
        window_s: seconds each observation window lasts.
        probe_requests: requests the flow sends to the candidate per window.
        probe_path: path of the real-work request (a health check alone proves nothing).
        probe_method: HTTP method of the probe request.
        probe_body: JSON body of the probe request (default: a small generation).
        max_error_rate: highest share of 5xx/timeouts a window may have, e.g. 0.01 for 1%.
        max_p95_ms: highest 95th-percentile latency a window may have, in milliseconds.
        min_requests: fewest requests for a verdict; fewer is inconclusive and holds.
        max_holds: inconclusive windows in a row before the canary rolls back.
        stop_window_early: end a window as soon as its errors already break the limit (faster rollback).
        approve_final: pause for an approval before the step that takes the last traffic off stable.
        approval_timeout_s: how long to wait for that approval; on timeout the split is held.
        notify_block: name of a Prefect notification block told about rollbacks, holds and promotion.
        target: a gpuops Cloud Run target block; explicit parameters win over its fields.
        metrics: where a window's figures come from: "probe" (the probe requests' own answers) or
            "cloud-monitoring" (Cloud Run's request_count and request_latencies of the candidate revision
            over the window; probe requests are still sent to its tag URL so that it has traffic to measure).
            On Google, Monitoring shows a minute's sample up to 3 minutes late: each window then waits
            3 minutes more before its query; use window_s of 300 or more.
    """
    where_to, credentials = resolve_target(project, region, service, target)
    profile = gpu_profile or GpuProfile()
    params.gpu_profile(profile)
    checked = params.canary(steps_text=steps, window_s=window_s, probe_requests=probe_requests,
                            min_requests=min_requests, max_error_rate=max_error_rate, max_p95_ms=max_p95_ms,
                            max_holds=max_holds, approval_timeout_s=approval_timeout_s, metrics=metrics)
    check = gpu_rules.check(profile.spec(), where_to.region)
    if not check.ok:
        raise CheckFailed("GPU plan refused before any change:\n" + "\n".join(f"  - {v}" for v in check.violations),
                          [v.__dict__ for v in check.violations])
    gates = Gates(max_error_rate=max_error_rate, max_p95_ms=max_p95_ms, min_requests=checked["min_requests"])
    probe = ProbeTraffic(requests=checked["probe_requests"], path=probe_path, method=probe_method,
                         body=probe_body if probe_body is not None else ProbeTraffic().body,
                         stop_early=stop_window_early)
    cr = connect(where_to, credentials)
    source = metrics_source(metrics, probe, gates, where_to, cr, credentials)
    current = cloudrun.get_service(cr, where_to.service_name)
    if current is None:
        raise BadInput(f"service {where_to.service!r} not found: check --project, --region and --service.")
    state = CanaryState.from_service(current)
    if state and state.phase == traffic.PROMOTED and traffic.serving_percent(current, state.candidate) == 100:
        return {"service": where_to.service, "api": where(cr), "outcome": "already-promoted",
                "stable": state.stable, "candidate": state.candidate, "history": []}
    try:
        if state and state.live:
            get_run_logger().warning("resuming the canary of %s at step %d (%d%%)", state.candidate, state.step + 1,
                                     state.percent)
        else:
            state = deploy_candidate(cr, where_to, profile.model_dump(), checked["steps"])
        return _walk(cr, where_to, state, source, gates, checked["window_s"], checked["max_holds"], approve_final,
                     checked["approval_timeout_s"], notify_block)
    except (CheckFailed, BadInput):
        raise  # a gate, a refusal or a foreign change: each already left traffic where it must be
    except Exception as exc:
        raise _back_to_stable_after(exc, cr, where_to, notify_block) from exc


def _back_to_stable_after(exc: Exception, cr, target: Target, notify_block) -> CouldNotRun:
    """An unexpected error is handled like a failed gate: traffic goes back to stable, or the message
    says what is left and how to finish (the state on the service lets `rollback` or a re-run do it)."""
    what = type(exc).__name__ + (f": {str(exc).splitlines()[0][:200]}" if str(exc).strip() else "")
    try:
        service = cloudrun.get_service(cr, target.service_name)
        recorded = CanaryState.from_service(service) if service is not None else None
        if service is not None and (recorded is None or not recorded.live):
            # Failed before the candidate landed: this run changed nothing to undo.
            message = f"canary of {target.service} stopped on an unexpected error ({what}) before any change."
            notify(notify_block, f"gpuops canary of {target.service} failed", message)
            return CouldNotRun(message)
        changes = restore_stable(cr, target, (f"unexpected error: {what}",))
    except Exception as again:
        message = (f"canary of {target.service} stopped on an unexpected error ({what}), and putting traffic back "
                   f"on stable failed too ({type(again).__name__}). The canary state on the service says where it "
                   f"is: run `gpuops rollback` once the API answers, or `gpuops canary` to resume.")
    else:
        message = (f"canary of {target.service} stopped on an unexpected error ({what}); traffic is back on the "
                   f"stable revision ({'; '.join(changes) or 'it already served 100%'}).")
    notify(notify_block, f"gpuops canary of {target.service} failed", message)
    return CouldNotRun(message)


def _walk(cr, target, state, source, gates, window_s, max_holds, approve_final, approval_timeout_s,
          notify_block) -> dict:
    """The state machine's loop: advance, observe, judge; until promoted or rolled back."""
    history: list[dict] = []
    api = where(cr)
    action = "advance" if state.step < 0 or state.phase == traffic.DEPLOYED else "observe"
    while True:
        if action == "advance":
            if traffic.needs_approval(state, approve_final):
                state = replace(state, phase=traffic.AWAITING_APPROVAL)
                set_split(cr, target, state)  # a crash while paused still shows what it waits for
                answer = ask_approval(state, approval_timeout_s)
                if answer is None:
                    return _stop(target, api, state, history, "held: approval timed out", notify_block)
                if not answer.approve:
                    return _roll_back(cr, target, api, state, history, (f"approval refused: {answer.note}",),
                                      notify_block)
            state = traffic.advanced(state)
            service = set_split(cr, target, state)
        else:
            service = cloudrun.get_service(cr, target.service_name)
        window = observe(tag_url(service, traffic.CANARY_TAG), source, window_s, gates, state.candidate)
        verdict = traffic.judge(window, gates)
        _record(history, state, window, verdict)
        state, action = traffic.after_verdict(state, verdict, max_holds)
        if action == "rollback":
            return _roll_back(cr, target, api, state, history, state.failed_checks, notify_block)
        if action == "done":
            set_split(cr, target, state)  # records the promoted phase; the split is already 100%
            create_markdown_artifact(key=f"canary-{target.service}",
                                     markdown=history_markdown(target, api, state, history, "promoted"))
            notify(notify_block, f"gpuops canary of {target.service} promoted",
                   f"{state.candidate} serves 100%; stable {state.stable} kept at 0% (tag `stable`).")
            return {"service": target.service, "api": api, "outcome": "promoted", "stable": state.stable,
                    "candidate": state.candidate, "history": history}
        if action == "observe":
            set_split(cr, target, state)  # records the hold on the service
            notify(notify_block, f"gpuops canary of {target.service} holding",
                   f"{state.percent}% on {state.candidate}: {'; '.join(verdict.reasons)}")


def _roll_back(cr, target, api, state, history, reasons, notify_block) -> dict:
    changes = restore_stable(cr, target, tuple(reasons))
    rolled_back_at = time.time()
    create_markdown_artifact(key=f"canary-{target.service}",
                             markdown=history_markdown(target, api, state, history, "rolled back"))
    notify(notify_block, f"gpuops canary of {target.service} rolled back", "; ".join([*reasons, *changes]))
    raise CheckFailed(f"canary rolled back to {state.stable}: {'; '.join(reasons)}",
                      [{"history": history, "changes": changes, "rolled_back_at": rolled_back_at}])


def _stop(target, api, state, history, outcome, notify_block) -> dict:
    create_markdown_artifact(key=f"canary-{target.service}",
                             markdown=history_markdown(target, api, state, history, outcome))
    notify(notify_block, f"gpuops canary of {target.service} {outcome}",
           f"{state.percent}% on {state.candidate}. Run `gpuops canary` again to ask again, or `gpuops rollback`.")
    raise CheckFailed(f"canary {outcome} at {state.percent}%: run `gpuops canary` again or `gpuops rollback`.")
