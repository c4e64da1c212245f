"""Flow `run-app` (the pipeline's run and publish stages, on a GPU work pool): check the GPU the run
landed on, run the app with its output streaming into `{jobId}/app.log`, publish its output folder.

It runs where the GPU and the output are (a worker of the GPU pool), so the output goes to the Hub
from there instead of travelling back to the orchestrating flow first. Every outcome is written to
the job's status.json: `run` goes Running, then Succeeded with the Hub commit URL, or Failed.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from blocks.pipeline_blocks import hub_settings, status_store
from flows.stage_log import stage_log
from gpuops import job_status, params
from gpuops.errors import CheckFailed
from gpuops.process_stream import job_env, run_streaming

DEFAULT_APP_COMMAND = ["python", "main.py"]


def _now():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


@task(name="check-gpu", cache_policy=NO_CACHE, persist_result=False)
def check_gpu(need_vram_gib: Optional[float], min_compute_cap: str, say) -> dict:
    """The project's own probe and guardrails on the GPU this run landed on; CheckFailed with the reasons."""
    from gpuops.gpu_probe import probe

    report, code = probe(need_vram_gib, min_compute_cap)
    for gpu in report["gpus"]:
        say(f"gpu-check: {gpu.get('name')} {gpu.get('memory_total_mib')} MiB compute {gpu.get('compute_cap')}"
            + (" (EMULATED reading)" if report["emulated"] else ""))
    if code != 0:
        for reason in report["reasons"]:
            say(f"gpu-check: refused: {reason}")
        raise CheckFailed("the GPU this run landed on cannot do the work: " + "; ".join(report["reasons"]),
                          [{"gpus": report["gpus"], "reasons": report["reasons"]}])
    say(f"gpu-check: pass (need {need_vram_gib or 'unstated'} GiB, compute >= {min_compute_cap})")
    return {"gpus": report["gpus"], "emulated": report["emulated"]}


@task(name="prepare-app", cache_policy=NO_CACHE, persist_result=False)
def prepare_app(runtime: str, repo: str, sha: str, job_id: str, say) -> Path:
    """Where the app runs: a checkout installed at the SHA (source), or the image's working directory."""
    if runtime == "container":
        return Path.cwd()
    from gpuops.source_build import build_from_source

    from prefect import runtime

    workdir = Path(os.environ.get("GPUOPS_WORKDIR") or Path(tempfile.gettempdir()) / "gpuops-jobs")
    # Per flow run: two runs of one commit on a worker (a re-run, another bucket's job) keep apart.
    built = build_from_source(repo, sha, workdir / job_id / str(runtime.flow_run.id or "local") / "app", say)
    return Path(built["checkout"])


@task(name="run-app-command", cache_policy=NO_CACHE, persist_result=False)
def run_command(command: list[str], where: Path, output: Path, job_id: str, timeout_s: float, say) -> float:
    """The app, its lines streamed as they come; CheckFailed with the tail when it fails. Its seconds."""
    env = job_env(GPUOPS_OUTPUT_DIR=str(output), GPUOPS_JOB_ID=job_id, PYTHONUNBUFFERED="1")
    done = run_streaming(app_command(command, where), str(where), say, timeout_s, env=env)
    if not done.ok:
        what = f"was stopped at the {timeout_s:g} s bound" if done.exit_code is None else f"exited {done.exit_code}"
        raise CheckFailed(f"the app {what} after {done.seconds} s; last lines:\n" + "\n".join(done.tail[-10:]),
                          [{"exit_code": done.exit_code, "tail": list(done.tail)}])
    return done.seconds


def app_command(command: list[str], where: Path) -> list[str]:
    """`python` means the project's interpreter: the checkout's .venv when `uv sync` made one, else this one."""
    if command[0] != "python":
        return command
    venv_python = where / ".venv" / "bin" / "python"
    return [str(venv_python) if venv_python.exists() else sys.executable, *command[1:]]


@task(name="publish-output", cache_policy=NO_CACHE, persist_result=False)
def publish(output: Path, hf_repo: str, hf_revision: str, job_id: str, sha: str, metadata: dict,
            hf_hub_block: Optional[str], say) -> dict:
    from gpuops.hub_publish import publish_folder

    if not output.is_dir():
        raise CheckFailed(f"the app wrote no output folder {output}: nothing to publish "
                          "(Fix: write the results into $GPUOPS_OUTPUT_DIR)")
    endpoint, token = hub_settings(hf_hub_block)
    published = publish_folder(output, hf_repo, revision=hf_revision, job_id=job_id, source_commit=sha,
                               metadata=metadata, endpoint=endpoint, token=token)
    say(f"publish: {len(published['files'])} files in one commit: {published['commit_url']}")
    return published


@flow(name="run-app", persist_result=False)
def run_app(
    job_id: str,
    repo: str,
    sha: str,
    ref: str = "main",
    runtime: str = "source",
    app_command: Optional[list[str]] = None,
    output_dir: str = "output",
    need_vram_gib: Optional[float] = None,
    min_compute_cap: str = "7.0",
    hf_repo: Optional[str] = None,
    hf_revision: str = "main",
    app_timeout_s: float = 3600,
    status_bucket_block: Optional[str] = None,
    hf_hub_block: Optional[str] = None,
) -> dict:
    """Check the GPU, run the app (its output streaming to `{jobId}/app.log`), publish its output folder.

    Started by build-run-publish on a GPU work pool; its status goes to the job's status.json.

    Args:
        job_id: the job (the commit SHA) whose status.json this run writes.
        repo: the app's git repository (clone URL or path), for the source runtime.
        sha: the commit to run.
        ref: the branch or tag the commit came from (recorded on the Hub).
        runtime: `source` (clone and install at the SHA) or `container` (this flow runs inside the image).
        app_command: the app's command; `python` means the project's interpreter. Default `python main.py`.
        output_dir: the folder (inside the app's directory) the app writes its results to: $GPUOPS_OUTPUT_DIR.
        need_vram_gib: the VRAM the app needs, judged against the card's real reading; empty: not judged.
        min_compute_cap: the lowest CUDA compute capability the app runs on (7.0 for PyTorch 2.x).
        hf_repo: the Hugging Face repo to publish the output folder to; empty: not published.
        hf_revision: the branch of hf_repo the commit goes to.
        app_timeout_s: the app is stopped past this many seconds and the run fails.
        status_bucket_block: a gpuops-status-bucket block; empty: GPUOPS_STATUS_BUCKET / GPUOPS_S3_ENDPOINT.
        hf_hub_block: a gpuops-hf-hub block; empty: HF_ENDPOINT / HF_TOKEN.
    """
    checked = params.pipeline(repo=repo, ref=ref, sha=sha, runtime=runtime, hf_repo=hf_repo,
                              hf_revision=hf_revision, app_command=app_command, output_dir=output_dir,
                              need_vram_gib=need_vram_gib, min_compute_cap=min_compute_cap,
                              run_timeout_s=app_timeout_s)
    job_id = job_status.check_job_id(job_id)
    store = status_store(status_bucket_block)
    store.update(job_id, lambda d: job_status.transition(d, "run", job_status.RUNNING, _now()))
    try:
        with stage_log(store, job_id, "run") as say:
            result = _stages(checked, job_id, hf_hub_block, say)
    except BaseException as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        store.update(job_id, lambda d: _failed(d, reason))
        raise
    store.update(job_id, lambda d: job_status.transition(d, "run", job_status.SUCCEEDED, _now(),
                                                        artifactUrl=result.get("commit_url")))
    return result


def _stages(checked: dict, job_id: str, hf_hub_block: Optional[str], say) -> dict:
    gpu = check_gpu(checked["need_vram_gib"], checked["min_compute_cap"], say)
    where = prepare_app(checked["runtime"], checked["repo"], checked["sha"], job_id, say)
    output = where / checked["output_dir"]
    seconds = run_command(checked["app_command"] or DEFAULT_APP_COMMAND, where, output, job_id,
                          checked["run_timeout_s"], say)
    result = {"job_id": job_id, "app_seconds": seconds, "gpus": gpu["gpus"], "emulated_gpu": gpu["emulated"],
              "commit_url": None}
    if checked["hf_repo"]:
        names = [g.get("name") for g in gpu["gpus"]]
        metadata = {"repo": checked["repo"], "ref": checked["ref"], "runtime": checked["runtime"],
                    "gpu": ", ".join(map(str, names)) + (" (emulated)" if gpu["emulated"] else ""),
                    "app seconds": seconds}
        published = publish(output, checked["hf_repo"], checked["hf_revision"], job_id, checked["sha"], metadata,
                            hf_hub_block, say)
        result.update(commit_url=published["commit_url"], files=published["files"])
    else:
        say("publish: skipped (no hf_repo)")
    return result


def _failed(doc: dict, reason: str) -> dict:
    """The run Failed (unless it already finished), the reason kept as an extra field."""
    if doc["run"]["status"] in (job_status.SUCCEEDED, job_status.FAILED):
        return doc
    failed = job_status.transition(doc, "run", job_status.FAILED, _now())
    failed["run"]["error"] = reason[:500]
    return failed
