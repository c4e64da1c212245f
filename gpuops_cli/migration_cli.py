"""The Cloud Run migration's CLI commands, one small function per flow (same parameters as the UI)."""
from __future__ import annotations

import argparse


def service_args(p: argparse.ArgumentParser, prefix: bool = True) -> None:
    p.add_argument("--project", required=True, help="Google Cloud project ID")
    p.add_argument("--region", required=True, help="Cloud Run region, e.g. us-central1")
    p.add_argument("--service", required=True, help="the Cloud Run service (the stable, CPU one)")
    if prefix:
        p.add_argument("--prefix", help="name prefix of the migration's resources (default: the service name)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (logs go to stderr)")
    p.set_defaults(uses_prefect=True)


def profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpu-type", help="GPU type (default nvidia-l4)")
    p.add_argument("--cpu", help="CPU per GPU instance (default 8)")
    p.add_argument("--memory", help="memory per GPU instance (default 32Gi)")
    p.add_argument("--max-instances", type=int, help="max GPU service instances (default 3)")
    p.add_argument("--no-gpu-zonal-redundancy", dest="gpu_zonal_redundancy", action="store_const",
                   const=False, help="cheaper, best-effort GPU capacity")


def check_target(args) -> None:
    # Bad names fail here, before a flow run starts, with one clear line and no traceback.
    from flows.common import resolve_target

    resolve_target(args.project, args.region, args.service)


def gpu_profile(args):
    from blocks.cloud_run_blocks import GpuProfile
    from gpuops import params

    given = {"gpu_type": args.gpu_type, "cpu": args.cpu, "memory": args.memory,
             "max_instances": args.max_instances, "gpu_zonal_redundancy": args.gpu_zonal_redundancy}
    profile = GpuProfile(**{k: v for k, v in given.items() if v is not None})
    params.gpu_profile(profile)
    return profile


def check_canary_args(args) -> None:
    from gpuops import params

    params.canary(steps_text=args.steps, window_s=args.window_s, probe_requests=args.probe_requests,
                  min_requests=args.min_requests, metrics=getattr(args, "metrics", "probe"),
                  max_latency_ratio=getattr(args, "max_latency_ratio", 1.5))


def _target(args) -> tuple:
    from gpuops import params

    check_target(args)
    params.prefix(getattr(args, "prefix", None))
    return args.project, args.region, args.service


def _describe(args) -> dict:
    from flows.describe_revision import describe_revision

    return describe_revision(*_target(args))


def _create_jobs(args) -> dict:
    from flows.create_jobs import create_jobs

    target, profile = _target(args), gpu_profile(args)
    return create_jobs(*target, gpu_profile=profile, dry_run=args.dry_run,
                       require_secret_refs=args.require_secret_refs, prefix=args.prefix, adopt=args.adopt)


def _auth(args) -> dict:
    """Where the probes' credentials are (never their values), as the flows take them."""
    return {"id_token": args.id_token, "id_token_audience": args.id_token_audience,
            "api_key_header": args.api_key_header, "api_key_secret": args.api_key_secret,
            "api_key_env": args.api_key_env}


def _smoke_test(args) -> dict:
    from flows.smoke_test import gpu_smoke_test
    from gpuops import params

    target = _target(args)
    params.smoke_test(prefix_value=args.prefix, min_vram_gib=args.min_vram_gib)
    auth = _auth(args)
    params.probe_auth(**auth)
    return gpu_smoke_test(*target, prefix=args.prefix, min_vram_gib=args.min_vram_gib, **auth)


def _canary(args) -> dict:
    from flows.canary import canary_shift

    from gpuops import params

    target, profile = _target(args), gpu_profile(args)
    check_canary_args(args)
    auth = _auth(args)
    params.probe_auth(**auth)
    return canary_shift(*target, steps=args.steps, gpu_profile=profile,
                        window_s=args.window_s, probe_requests=args.probe_requests,
                        min_requests=args.min_requests, approve_final=args.approve_final, metrics=args.metrics,
                        compare_with_stable=args.compare_with_stable, max_latency_ratio=args.max_latency_ratio,
                        **auth)


def _rollback(args) -> dict:
    from flows.rollback import rollback
    from gpuops import params

    target = _target(args)
    params.revision("to_revision", args.to_revision)
    return rollback(*target, prefix=args.prefix, to_revision=args.to_revision)


def _migrate(args) -> dict:
    from flows.migrate import migrate_to_gpu
    from gpuops import params

    target, profile = _target(args), gpu_profile(args)
    check_canary_args(args)
    params.job_args("job_args", args.job_args)
    params.seconds("job_timeout_s", args.job_timeout_s, high=params.MAX_JOB_WAIT_S, example="1800")
    return migrate_to_gpu(*target, gpu_profile=profile, steps=args.steps,
                          canary_window_s=args.window_s, probe_requests=args.probe_requests,
                          min_requests=args.min_requests, approve_final=args.approve_final,
                          job_args=args.job_args, job_timeout_s=args.job_timeout_s)


def _run_job(args) -> dict:
    from flows.common import resolve_target
    from flows.run_job import run_job
    from gpuops import params

    job_args = [*(args.args or []), *args.job_args] or None
    params.run_job(job=args.job, args=job_args, timeout_s=args.timeout_s, log_lines=args.log_lines)
    resolve_target(args.project, args.region, args.job)  # project and region named before a flow run starts
    return run_job(args.project, args.region, args.job, args=job_args, timeout_s=args.timeout_s,
                   log_lines=args.log_lines)


def _run_job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project", required=True, help="Google Cloud project ID")
    p.add_argument("--region", required=True, help="Cloud Run region, e.g. us-central1")
    p.add_argument("--job", required=True, help="the Cloud Run job to execute, e.g. my-service-cpu-job")
    p.add_argument("--args", nargs="*", action="extend", metavar="A",
                   help="the container's args for this execution; values starting with '-' go after `--` "
                        "or as --args=VALUE")
    p.add_argument("job_args", nargs="*", metavar="-- ARG", help="more args for the job, after `--`")
    p.add_argument("--timeout-s", type=float, default=1800.0,
                   help="how long to wait (default 1800); past it the execution is cancelled")
    p.add_argument("--log-lines", type=int, default=20, help="last log lines to show (default 20)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (logs go to stderr)")
    p.set_defaults(uses_prefect=True, run=_run_job)


def _canary_args(p: argparse.ArgumentParser) -> None:
    profile_args(p)
    p.add_argument("--steps", default="20,80,100", help="GPU share at each step, ending at 100 (default 20,80,100)")
    p.add_argument("--window-s", type=float, default=30.0, help="seconds per observation window (default 30)")
    p.add_argument("--probe-requests", type=int, default=30, help="probe requests per window (default 30)")
    p.add_argument("--min-requests", type=int, default=20, help="fewest requests for a verdict (default 20)")


def _probe_auth_args(p: argparse.ArgumentParser) -> None:
    # Places of secrets, never values: a value on a command line ends up in shell history and `ps`.
    p.add_argument("--id-token", action="store_true",
                   help="send a Google ID token (audience = the service URL) from GOOGLE_APPLICATION_CREDENTIALS "
                        "or the metadata server, for services that require authentication")
    p.add_argument("--id-token-audience", metavar="AUDIENCE",
                   help="a custom audience for the ID token instead of the service URL (implies --id-token)")
    p.add_argument("--api-key-header", default="X-API-Key", metavar="NAME",
                   help="the header an API key goes in (default X-API-Key)")
    p.add_argument("--api-key-secret", metavar="BLOCK",
                   help="name of the Prefect Secret block holding the API key")
    p.add_argument("--api-key-env", metavar="VAR", help="name of the environment variable holding the API key")


def register(subparsers) -> None:
    p = subparsers.add_parser("describe", help="describe the live revision of a Cloud Run service (phase 0)")
    service_args(p, prefix=False)
    p.set_defaults(run=_describe)

    p = subparsers.add_parser("create-jobs", help="create the CPU job, GPU job and GPU service (phases 1-2)")
    service_args(p)
    profile_args(p)
    p.add_argument("--require-secret-refs", action="store_true",
                   help="refuse when a plaintext env value looks like a secret")
    p.add_argument("--dry-run", action="store_true", help="print the request bodies and change nothing")
    p.add_argument("--adopt", action="store_true",
                   help="update (and label as gpuops') an existing job or GPU service that gpuops did not create")
    p.set_defaults(run=_create_jobs)

    p = subparsers.add_parser("smoke-test",
                              help="probe the GPU job, call the GPU service, compare with CPU (phase 2-C)")
    service_args(p)
    p.add_argument("--min-vram-gib", type=float, help="VRAM each GPU must read, in GiB")
    _probe_auth_args(p)
    p.set_defaults(run=_smoke_test)

    p = subparsers.add_parser("canary", help="shift traffic onto a GPU revision step by step, gated (phase 7)")
    service_args(p, prefix=False)
    _canary_args(p)
    p.add_argument("--approve-final", action="store_true",
                   help="pause for an approval before the last traffic leaves the stable revision")
    p.add_argument("--metrics", choices=["probe", "cloud-monitoring"], default="probe",
                   help="judge windows on the probe requests (default) or on Cloud Monitoring's request "
                        "metrics (on Google use --window-s 300 or more: Monitoring lags up to 3 min)")
    p.add_argument("--max-latency-ratio", type=float, default=1.5,
                   help="fail a candidate slower than stable beyond this ratio, by a rank test on the same "
                        "window's requests to both (default 1.5)")
    p.add_argument("--no-compare-stable", dest="compare_with_stable", action="store_false",
                   help="judge the candidate on the fixed limits alone, without probing stable alongside")
    _probe_auth_args(p)
    p.set_defaults(run=_canary)

    p = subparsers.add_parser("rollback", help="all traffic back to the stable revision (phase 8-B)")
    service_args(p)
    p.add_argument("--to", "--to-revision", dest="to_revision", metavar="REVISION",
                   help="the revision to send all traffic to, when no canary state says which is stable")
    p.set_defaults(run=_rollback)

    p = subparsers.add_parser("run-job", help="execute a Cloud Run job once, bounded: state, time, log tail "
                                              "(phases 1-B, 6-B)")
    _run_job_args(p)

    p = subparsers.add_parser("migrate", help="describe, create jobs, smoke test and canary in one flow")
    service_args(p, prefix=False)
    _canary_args(p)
    p.add_argument("--no-approve-final", dest="approve_final", action="store_false",
                   help="do not pause before the last step (by default the migration asks)")
    p.add_argument("--job-args", nargs="*", action="extend", metavar="A",
                   help="run the CPU and the GPU job with these args after create-jobs and measure both "
                        "(runbook 1-B, 6-B); values starting with '-' as --job-args=VALUE")
    p.add_argument("--job-timeout-s", type=float, default=1800.0,
                   help="bound on each of those job executions (default 1800)")
    p.set_defaults(run=_migrate)
