"""Flow `canary-shift` (runbook phase 7-A: 段階的移行): the GPU revision takes traffic step by step, gated."""
from __future__ import annotations

from typing import Optional

from prefect import flow, runtime

from blocks.cloud_run_blocks import CloudRunTarget, GpuProfile
from flows.common import Target, connect, notify, resolve_target, where
from gpuops import cloudrun, gpu_rules, params, probe_auth
from gpuops.errors import CheckFailed
from gpuops.monitoring import CloudMonitoringRequests
from gpuops.probe_traffic import MetricsSource, ProbeTraffic
from gpuops.rollout.backend import Urls
from gpuops.rollout.cloud_run import CloudRunBackend
from gpuops.rollout.compare import Tolerance
from gpuops.rollout.engine import Observation, Plan, Rollout
from gpuops.traffic import Gates


def metrics_source(metrics: str, probe: ProbeTraffic, gates: Gates, target: Target, cr: cloudrun.CloudRun,
                   credentials=None) -> MetricsSource:
    """The probe's own figures, or Cloud Monitoring's for the candidate while the probe gives it traffic."""
    if params.choice("metrics", metrics, params.METRICS) == "probe":
        return probe
    # On the emulator, its Monitoring emulation (GPUOPS_MONITORING_API still wins inside the adapter).
    endpoint = cr.endpoint if cr.is_emulator else None
    return CloudMonitoringRequests(target.project, target.service, endpoint, credentials,
                                   traffic=lambda url, seconds: probe.observe(url, seconds, gates))


def observer(source: MetricsSource, plan: Plan, compare_with_stable: bool):
    """One window: the candidate alone, or side by side with stable when the source can probe both."""
    def observe(urls: Urls, state) -> Observation:
        if compare_with_stable and urls.stable and isinstance(source, ProbeTraffic):
            return Observation(*source.observe_pair(urls.candidate, urls.stable, plan.window_s, plan.gates))
        return Observation(source.observe(urls.candidate, plan.window_s, plan.gates, revision=state.candidate))

    return observe


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
    compare_with_stable: bool = True,
    max_latency_ratio: float = 1.5,
    max_error_margin: float = 0.02,
    id_token: bool = False,
    id_token_audience: Optional[str] = None,
    api_key_header: str = probe_auth.DEFAULT_API_KEY_HEADER,
    api_key_secret: Optional[str] = None,
    api_key_env: Optional[str] = None,
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
        compare_with_stable: probe stable too, with the same requests interleaved, and judge the candidate
            against it: slower beyond `max_latency_ratio` (one-sided Mann-Whitney U) or erring more beyond
            `max_error_margin` fails; a window where stable fails as much as the candidate holds.
        max_latency_ratio: how much slower than stable the candidate may be, e.g. 1.5.
        max_error_margin: how much higher than stable's its error rate may be, e.g. 0.02 for 2 points.
        id_token: send a Google ID token (audience = the URL called) with each probe.
        id_token_audience: a custom audience for the ID token (implies id_token).
        api_key_header: the header an API key goes in.
        api_key_secret: NAME of a Prefect Secret block holding the API key (never the key itself).
        api_key_env: NAME of an environment variable holding the API key, on the machine running the flow.
    """
    where_to, credentials = resolve_target(project, region, service, target)
    profile = gpu_profile or GpuProfile()
    params.gpu_profile(profile)
    checked = params.canary(steps_text=steps, window_s=window_s, probe_requests=probe_requests,
                            min_requests=min_requests, max_error_rate=max_error_rate, max_p95_ms=max_p95_ms,
                            max_holds=max_holds, approval_timeout_s=approval_timeout_s, metrics=metrics,
                            max_latency_ratio=max_latency_ratio, max_error_margin=max_error_margin)
    params.probe_auth(id_token=id_token, id_token_audience=id_token_audience, api_key_header=api_key_header,
                      api_key_secret=api_key_secret, api_key_env=api_key_env)
    check = gpu_rules.check(profile.spec(), where_to.region)
    if not check.ok:
        raise CheckFailed("GPU plan refused before any change:\n" + "\n".join(f"  - {v}" for v in check.violations),
                          [v.__dict__ for v in check.violations])
    gates = Gates(max_error_rate=max_error_rate, max_p95_ms=max_p95_ms, min_requests=checked["min_requests"])
    auth = probe_auth.from_parameters(id_token, id_token_audience, api_key_header, api_key_secret, api_key_env)
    if auth is not None:
        auth.prepare()  # a missing credential stops the canary before it deploys anything
    probe = ProbeTraffic(requests=checked["probe_requests"], path=probe_path, method=probe_method,
                         body=probe_body if probe_body is not None else ProbeTraffic().body,
                         stop_early=stop_window_early, auth=auth)
    cr = connect(where_to, credentials)
    source = metrics_source(metrics, probe, gates, where_to, cr, credentials)
    plan = Plan(steps=checked["steps"], gates=gates, window_s=checked["window_s"], max_holds=checked["max_holds"],
                approve_final=approve_final, approval_timeout_s=checked["approval_timeout_s"],
                tolerance=Tolerance(latency_ratio=checked["max_latency_ratio"],
                                    error_margin=checked["max_error_margin"]))
    backend = CloudRunBackend(cr, where_to.project, where_to.region, where_to.service, profile.model_dump())
    rollout = Rollout(
        backend, plan, api=where(cr), flow_run_id=str(runtime.flow_run.id or ""),
        observe=observer(source, plan, compare_with_stable),
        notify=lambda subject, body: notify(notify_block, subject, body))
    return rollout.run()
