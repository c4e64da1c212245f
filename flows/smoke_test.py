"""Flow `gpu-smoke-test` (runbook phases 2-C and 6-B): probe the GPU job, call the GPU service, compare with CPU."""
from __future__ import annotations

import time
from typing import Optional

import httpx
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from blocks.cloud_run_blocks import CloudRunTarget
from flows.common import Target, connect, resolve_target, where
from flows.run_job import start_execution, wait_for_execution
from gpuops import cloudrun, job_plan, params, probe_auth, smoke
from gpuops.errors import BadInput, CheckFailed
from gpuops.execution_logs import read_execution_output, read_once_ingested

_ERROR_CHARS = 200  # of a failing answer's body: enough to name the error, too little to dump a page


def _fix(target: Target, prefix: Optional[str]) -> str:
    with_prefix = f" --prefix {prefix}" if prefix else ""
    return (f"run `gpuops create-jobs --project {target.project} --region {target.region} "
            f"--service {target.service}{with_prefix}` first")


def run_gpu_probe(cr: cloudrun.CloudRun, job: str, args: list[str], timeout_s: float,
                  credentials=None) -> tuple[dict, Optional[dict]]:
    """One execution of the GPU job with the probe's args, waited for with a bound (a hung probe is
    cancelled: it must not keep a GPU billed); the execution and the probe's report."""
    execution, timed_out = wait_for_execution(cr, start_execution(cr, job, args), timeout_s)
    if timed_out:
        return {**execution, "timedOutAfterS": timeout_s}, None
    output = read_once_ingested(cr, lambda: read_execution_output(cr, execution, credentials),
                                lambda text: smoke.probe_result_from_output(text) is not None)
    return execution, smoke.probe_result_from_output(output)


def _request(client: httpx.Client, method: str, uri: str, path: str, body: Optional[dict],
             auth: Optional[probe_auth.ProbeAuth]) -> dict:
    """One timed request as a record the planner judges; a failure is recorded, not raised.

    A 401/403 is recorded with the credential it asks for; any text kept is redacted first (an
    error page may echo what was sent), then cut.
    """
    headers = auth.headers_for(uri) if auth is not None else None
    redact = auth.redact if auth is not None else (lambda text: text)
    started = time.perf_counter()
    try:
        answer = client.request(method, uri.rstrip("/") + path, json=body, headers=headers)
    except httpx.HTTPError as exc:
        return {"status": None, "ms": round((time.perf_counter() - started) * 1000, 1),
                "fields": None, "error": redact(f"{type(exc).__name__}: {exc}")[:_ERROR_CHARS], "refused": None}
    ms = round((time.perf_counter() - started) * 1000, 1)
    try:
        payload = answer.json()
    except ValueError:
        payload = None
    fields = sorted(payload) if isinstance(payload, dict) else None
    refused = probe_auth.explain_refusal(auth, uri, answer.status_code, answer.headers.get("www-authenticate", ""),
                                         answer.text[:500])
    error = None if answer.status_code == 200 else (refused or redact(answer.text.strip())[:_ERROR_CHARS])
    return {"status": answer.status_code, "ms": ms, "fields": fields, "error": error, "refused": refused}


@task(name="call-service", cache_policy=NO_CACHE, persist_result=False)
def call_service(uri: str, calls: list[tuple[str, str, Optional[dict]]], requests: int,
                 timeout_s: float, auth: Optional[probe_auth.ProbeAuth] = None) -> dict[str, list[dict]]:
    """`requests` rounds of the given (method, path, body) calls, in order; records per path."""
    records: dict[str, list[dict]] = {path: [] for _, path, _ in calls}
    with httpx.Client(timeout=timeout_s, follow_redirects=False) as client:
        for _ in range(requests):
            for method, path, body in calls:
                records[path].append(_request(client, method, uri, path, body, auth))
    return records


def _no_url(calls: list) -> dict[str, list[dict]]:
    missing = {"status": None, "ms": 0.0, "fields": None, "error": "the GPU service has no URL (not ready yet?)"}
    return {path: [missing] for _, path, _ in calls}


def _require(cr: cloudrun.CloudRun, target: Target, prefix: Optional[str]) -> tuple[str, dict]:
    ids = job_plan.resource_ids(prefix or target.service)
    job = target.job_name(ids["gpu_job"])
    gpu = cloudrun.get_service(cr, cloudrun.service_name(target.project, target.region, ids["gpu_service"]))
    missing = [f"job {ids['gpu_job']}"] if cloudrun.get_job(cr, job) is None else []
    missing += [] if gpu else [f"service {ids['gpu_service']}"]
    if missing:
        where_ = f"{target.project}/{target.region}"
        raise BadInput(f"{' and '.join(missing)} not found in {where_}: {_fix(target, prefix)}.")
    return job, gpu


@flow(name="gpu-smoke-test")
def gpu_smoke_test(
    project: Optional[str] = None,
    region: Optional[str] = None,
    service: Optional[str] = None,
    prefix: Optional[str] = None,
    probe_args: list[str] = ["gpu-probe", "--json"],  # never mutated; a literal so the UI shows it
    min_vram_gib: Optional[float] = None,
    health_path: str = "/healthz",
    generation_path: str = "/generate",
    generation_body: dict = {"prompt": "smoke test", "steps": 2000},  # never mutated
    expect_field: str = "output",
    requests: int = 3,
    timeout_s: float = 600,
    target: Optional[CloudRunTarget] = None,
    id_token: bool = False,
    id_token_audience: Optional[str] = None,
    api_key_header: str = probe_auth.DEFAULT_API_KEY_HEADER,
    api_key_secret: Optional[str] = None,
    api_key_env: Optional[str] = None,
) -> dict:
    """Smoke-test the GPU job and GPU service made by create-jobs; compare latency with the CPU service.

    Cloud Run execution overrides set a container's args and env only, never its command: the
    image's entrypoint must run the probe (`gpuops gpu-probe --json`) when given `probe_args`.

    Args:
        project: Google Cloud project ID (or take it from `target`).
        region: Cloud Run region (or take it from `target`).
        service: the stable (CPU) service; its URL, when it has one, gives the CPU baseline.
        prefix: name prefix create-jobs used (default: the service name).
        probe_args: args the GPU job runs with, as an execution override.
        min_vram_gib: VRAM each GPU must read, in GiB; passed to the probe as --min-vram-gib.
        health_path: GET path that must answer 200.
        generation_path: POST path of a real generation; a health check alone is never enough.
        generation_body: JSON body of the generation request.
        expect_field: field a successful generation's JSON body must hold.
        requests: how many health and generation requests each service gets.
        timeout_s: bound on the job execution's wait and on each HTTP request, in seconds.
        target: a gpuops Cloud Run target block; explicit parameters win over its fields.
        id_token: send a Google ID token (audience = the URL of each service called), from
            GOOGLE_APPLICATION_CREDENTIALS or the metadata server: services that require authentication.
        id_token_audience: a custom audience for the ID token instead of the service URL (implies id_token).
        api_key_header: the header an API key goes in.
        api_key_secret: NAME of a Prefect Secret block holding the API key (never the key itself).
        api_key_env: NAME of an environment variable holding the API key, on the machine running the flow.
    """
    where_to, credentials = resolve_target(project, region, service, target)
    params.smoke_test(prefix_value=prefix, min_vram_gib=min_vram_gib, requests=requests, timeout_s=timeout_s)
    params.probe_auth(id_token=id_token, id_token_audience=id_token_audience, api_key_header=api_key_header,
                      api_key_secret=api_key_secret, api_key_env=api_key_env)
    auth = probe_auth.from_parameters(id_token, id_token_audience, api_key_header, api_key_secret, api_key_env)
    ids = job_plan.resource_ids(prefix or where_to.service)
    cr = connect(where_to, credentials)
    job, gpu = _require(cr, where_to, prefix)
    _prepare(auth, gpu.get("uri"))

    args = list(probe_args) + (["--min-vram-gib", str(min_vram_gib)] if min_vram_gib else [])
    execution, probe = run_gpu_probe(cr, job, args, timeout_s, credentials)
    calls = [("GET", health_path, None), ("POST", generation_path, generation_body)]
    gpu_calls = call_service(gpu["uri"], calls, requests, timeout_s, auth) if gpu.get("uri") else _no_url(calls)
    health, generation = gpu_calls[health_path], gpu_calls[generation_path]

    stable = cloudrun.get_service(cr, where_to.service_name) or {}
    baseline = call_service(stable["uri"], calls[1:], requests, timeout_s, auth) if stable.get("uri") else {}
    verdict = smoke.judge_smoke(execution, probe, health, generation, expect_field)
    result = {
        "service": where_to.service, "gpu_service": ids["gpu_service"], "gpu_job": ids["gpu_job"],
        "api": where(cr), "execution": cloudrun.short(execution["name"]), "gpu_uri": gpu.get("uri"),
        **verdict, "probe": probe, "cpu_generation": baseline.get(generation_path, []),
        "comparison": smoke.comparison_table(smoke.ok_latencies(generation),
                                             smoke.ok_latencies(baseline.get(generation_path, []))),
        "comparison_note": smoke.comparison_note(cr.is_emulator, stable.get("uri"), where_to.service),
        "credentials_sent": auth.describe() if auth is not None else "none",
    }
    _publish(result, where_to.service)
    if not result["passed"]:
        refused = smoke.auth_refusal(health + generation)
        raise CheckFailed(f"GPU smoke test of {ids['gpu_service']} failed: {', '.join(result['failed'])} "
                          f"({result['gpu_label']})" + (f"; {refused}" if refused else ""), result["checks"])
    return result


def _prepare(auth: Optional[probe_auth.ProbeAuth], gpu_uri: Optional[str]) -> None:
    """Read every credential before the GPU job runs: a missing one stops the test before it costs GPU time."""
    if auth is None:
        return
    get_run_logger().info("probes of the services send %s", auth.describe())
    auth.prepare(gpu_uri)


def _publish(result: dict, service: str) -> None:
    """The report first: a failed smoke test must leave its evidence before the flow fails."""
    create_markdown_artifact(key=f"smoke-test-{service}", markdown=smoke.report_markdown(result),
                             description=f"GPU smoke test of {result['gpu_service']} ({result['api']})")
    create_table_artifact(key=f"smoke-latency-{service}", table=result["comparison"],
                          description=f"CPU vs GPU latency, measured ({result['gpu_label']}; {result['api']})")
