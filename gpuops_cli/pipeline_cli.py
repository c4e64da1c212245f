"""`gpuops pipeline status` (one job's status.json) and `gpuops dashboard` (the jobs page), from the bucket."""
from __future__ import annotations

import os
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from gpuops.errors import BadInput, CheckFailed

DEFAULT_PAGE = Path(".gpuops") / "dashboard" / "index.html"


def register(subparsers) -> None:
    pipeline = subparsers.add_parser("pipeline", help="the build -> run -> publish pipeline's jobs (status.json)")
    commands = pipeline.add_subparsers(dest="pipeline_command", required=True, metavar="PIPELINE_COMMAND")
    p = commands.add_parser("run", help="build -> run on the GPU pool -> publish one commit (flow build-run-publish)")
    p.add_argument("--repo", required=True, metavar="URL_OR_PATH", help="the app's git repository (no credentials in it)")
    p.add_argument("--ref", required=True, help="the branch or tag pushed, e.g. main")
    p.add_argument("--sha", required=True, help="the commit to build: also the job id")
    p.add_argument("--runtime", default="source", choices=("source", "container"),
                   help="source: git clone + uv sync (default); container: build and push an image")
    p.add_argument("--hf-repo", metavar="NAME", help="Hugging Face repo to publish to (e.g. my-org/my-model)")
    p.add_argument("--hf-revision", default="main", help="branch of --hf-repo to commit to (default main)")
    p.add_argument("--image-repo", metavar="REGISTRY/PATH", help="container runtime: where the image goes, "
                                                                  "e.g. ghcr.io/my-org/my-app")
    p.add_argument("--app-command", nargs="+", metavar="ARG", help="the app's command (default: python main.py)")
    p.add_argument("--need-vram-gib", type=float, help="VRAM the app needs; a smaller card is refused")
    p.add_argument("--min-compute-cap", default="7.0", help="lowest CUDA compute capability (default 7.0)")
    p.add_argument("--run-timeout-s", type=float, default=3600, help="bound on the GPU run (default 3600)")
    p.add_argument("--run-deployment", default="run-app/run-app", metavar="FLOW/DEPLOYMENT",
                   help="the run stage's deployment on the GPU pool (default run-app/run-app)")
    p.add_argument("--status-bucket-block", metavar="NAME", help="a gpuops-status-bucket block (default: env)")
    p.add_argument("--hf-hub-block", metavar="NAME", help="a gpuops-hf-hub block for the run (default: env)")
    p.add_argument("--registry-credentials-block", metavar="NAME",
                   help="a DockerRegistryCredentials block (container runtime)")
    _common(p)
    p.set_defaults(run=_run)

    p = commands.add_parser("status", help="print one job's status.json from the bucket (CONTRACTS §7)")
    p.add_argument("--sha", required=True, help="the job id: the commit SHA, full or a unique prefix of 7+ hex digits")
    _common(p)
    p.set_defaults(run=_status)

    p = subparsers.add_parser("dashboard", help="render the jobs page from every status.json (and upload it)")
    p.add_argument("--out", type=Path, default=DEFAULT_PAGE, metavar="FILE",
                   help=f"where to write the page (default {DEFAULT_PAGE})")
    p.add_argument("--upload", action="store_true", help="also put it in the bucket as index.html")
    p.add_argument("--prefect-ui-url", metavar="URL",
                   help="Prefect UI for flow-run and re-run links (default PREFECT_UI_URL, else PREFECT_API_URL)")
    p.add_argument("--object-base-url", metavar="URL",
                   help="where the bucket's objects are served, for log links in the file "
                        "(default GPUOPS_S3_ENDPOINT/bucket; the uploaded page links relative to itself)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (logs go to stderr)")
    p.set_defaults(run=_dashboard)


def _common(p) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (logs go to stderr)")
    # cli.py adds --verbose to top-level commands only; a nested one needs its own.
    p.add_argument("--verbose", action="store_true", help="show the traceback of an internal error")


def store():
    """The status bucket from GPUOPS_STATUS_BUCKET / GPUOPS_S3_ENDPOINT (CONTRACTS §2)."""
    from gpuops.status_store import configured

    return configured()


def _run(args) -> dict:
    """The flow in this process; its run stage goes to the GPU pool's worker. The job's final status.json."""
    from flows.build_run_publish import build_run_publish

    return build_run_publish(
        repo=args.repo, sha=args.sha, ref=args.ref, runtime=args.runtime, hf_repo=args.hf_repo,
        hf_revision=args.hf_revision, image_repo=args.image_repo, app_command=args.app_command,
        need_vram_gib=args.need_vram_gib, min_compute_cap=args.min_compute_cap, run_timeout_s=args.run_timeout_s,
        run_deployment_name=args.run_deployment, status_bucket_block=args.status_bucket_block,
        hf_hub_block=args.hf_hub_block, registry_credentials_block=args.registry_credentials_block)


def _status(args) -> dict:
    from gpuops import job_status

    prefix = job_status.check_job_id(args.sha)
    bucket = store()
    job_id = _resolve(bucket, prefix, args.sha)
    doc = bucket.read(job_id)
    problems = job_status.check_document(doc)
    if problems:
        raise CheckFailed(f"{job_id}/status.json is not a CONTRACTS §7 status: {'; '.join(problems)}", problems)
    return doc


def _resolve(bucket, prefix: str, given: str) -> str:
    """The one job whose id starts with the SHA given; none or several is bad input naming the fix."""
    found = bucket.job_ids(prefix)
    if prefix in found:
        return prefix
    where = f"bucket {bucket.bucket}" + (f" at {bucket.endpoint_url}" if bucket.endpoint_url else "")
    if not found:
        raise BadInput(f"--sha {given}: no job {prefix} in {where} (Fix: check the SHA and GPUOPS_STATUS_BUCKET; "
                       "`gpuops dashboard` lists every job; `gpuops pipeline run` starts one)")
    if len(found) > 1:
        raise BadInput(f"--sha {given}: {len(found)} jobs start with {prefix} ({', '.join(sorted(found)[:5])}) "
                       "(Fix: give more digits of the SHA)")
    return found[0]


def _dashboard(args) -> dict:
    from gpuops import dashboard

    bucket = store()
    jobs = bucket.list_jobs()
    now = datetime.now(timezone.utc)
    ui = args.prefect_ui_url or os.environ.get("PREFECT_UI_URL") or os.environ.get("PREFECT_API_URL")
    base = args.object_base_url if args.object_base_url is not None else _bucket_url(bucket)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dashboard.render(jobs, generated=now, prefect_ui_url=ui, object_base_url=base),
                        encoding="utf-8")
    uploaded = None
    if args.upload:
        # Next to the jobs in the bucket, so its log links are relative to itself.
        uploaded = bucket.upload_page(dashboard.render(jobs, generated=now, prefect_ui_url=ui))
    statuses = Counter(str(j.get("overallStatus", "unreadable")) for j in jobs)
    return {"path": str(args.out), "jobs": len(jobs), "by_status": dict(sorted(statuses.items())),
            "uploaded": uploaded}


def _bucket_url(bucket) -> str:
    """Path-style object URLs on the endpoint (moto, a public R2 bucket needs --object-base-url instead)."""
    return f"{bucket.endpoint_url.rstrip('/')}/{bucket.bucket}" if bucket.endpoint_url else ""
