"""build-run-publish end to end on real parts: a Prefect server, a process worker polling the GPU pool
(its flow runs see a fake nvidia-smi printing a recorded L4 reading), moto for the bucket, the Hub
emulator, and a local git repository holding the app.

Every version of status.json is kept (the bucket is versioned), so the tests read the whole history
of transitions, not only the last state.
"""
import json
import os
import sys
import uuid
from pathlib import Path

import boto3
import pytest
from prefect import flow

from gpuops import job_status as js
from gpuops.demo_app_repo import make_app_repo, uv_dir
from gpuops.errors import BadInput, CheckFailed

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "gpuops-status"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "test-access-key", "AWS_SECRET_ACCESS_KEY": "test-secret-key",
           "AWS_DEFAULT_REGION": "us-east-1"}
HF_REPO = "demo/app-output"


@pytest.fixture(scope="module")
def gpu_pool(prefect_api, moto_s3, hf_hub_emulator, tmp_path_factory):
    """A process pool with `run-app` deployed on it and a real worker polling it; yields the deployment name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from flows.run_app import run_app
    from gpuops.emulator.fake_nvidia_smi import install_fake_nvidia_smi, recorded_reading
    from gpuops.stack import Worker, deploy_here

    pool = f"gpu-pool-{uuid.uuid4().hex[:6]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    deploy_here(run_app, pool, pool)
    fake_bin = tmp_path_factory.mktemp("fake-gpu-bin")
    install_fake_nvidia_smi(fake_bin, recorded_reading("l4"))
    uv = uv_dir()
    assert uv, "uv is neither on the PATH nor bootstrapped by make: the source runtime needs it"
    env = {**S3_KEYS, "PATH": f"{fake_bin}:{Path(sys.executable).parent}:{uv}:/usr/bin:/bin",
           "GPUOPS_EMULATED_GPU": "1", "GPUOPS_S3_ENDPOINT": moto_s3.url, "GPUOPS_STATUS_BUCKET": BUCKET,
           "HF_ENDPOINT": hf_hub_emulator.url, "HF_TOKEN": hf_hub_emulator.write_token,
           "GPUOPS_WORKDIR": str(tmp_path_factory.mktemp("worker-jobs")), "PREFECT_API_URL": prefect_api}
    with Worker(pool, tmp_path_factory.mktemp("worker") / "worker.log", env=env):
        yield f"run-app/{pool}"


@pytest.fixture
def pipeline(gpu_pool, status_bucket, fresh_hf_hub, tmp_path, monkeypatch):
    """A versioned bucket, an empty Hub and an app repository; `versions(job)` lists status.json's history."""
    monkeypatch.setenv("PATH", f"{uv_dir()}{os.pathsep}{os.environ['PATH']}")  # the build stage runs uv here
    s3 = boto3.session.Session().client("s3", endpoint_url=status_bucket.url, region_name="us-east-1")
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})

    def versions(job_id: str) -> list[dict]:
        listed = s3.list_object_versions(Bucket=BUCKET, Prefix=f"{job_id}/status.json")["Versions"]
        ordered = list(reversed(listed))  # S3 lists the newest first (LastModified is only to the second)
        bodies = [s3.get_object(Bucket=BUCKET, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
                  for v in ordered]
        return [json.loads(b) for b in bodies]

    return type("Pipeline", (), {"deployment": gpu_pool, "repo": tmp_path / "app", "hub": fresh_hf_hub,
                                 "versions": staticmethod(versions), "s3": s3})


def run(pipeline, sha: str, **overrides) -> dict:
    from flows.build_run_publish import build_run_publish

    arguments = {"repo": str(pipeline.repo), "sha": sha, "ref": "main", "hf_repo": HF_REPO,
                 "run_deployment_name": pipeline.deployment, "run_timeout_s": 120, **overrides}
    return build_run_publish(**arguments)


def stages(history: list[dict]) -> list[tuple[str, str, str]]:
    """(build, run, overall) per version, repeats folded."""
    seen = []
    for doc in history:
        now = (doc["build"]["status"], doc["run"]["status"], doc["overallStatus"])
        if not seen or seen[-1] != now:
            seen.append(now)
    return seen


def test_a_push_is_built_run_on_the_gpu_pool_and_published_in_one_commit(pipeline, artifact_text):
    sha = make_app_repo(pipeline.repo)
    planted = f"job-variable-secret-{uuid.uuid4().hex}"

    doc = run(pipeline, sha, run_job_variables={"env": {"GPUOPS_TEST_TOKEN": planted}})

    assert doc["overallStatus"] == "Succeeded" and doc["jobId"] == sha
    history = pipeline.versions(sha)
    # The re-run link's parameters: the job's own, never the job variables (the bucket may be public).
    assert doc["prefect"]["parameters"]["sha"] == sha and "run_job_variables" not in doc["prefect"]["parameters"]
    assert planted not in json.dumps(history)
    assert all(js.check_document(v) == [] for v in history)
    assert stages(history) == [
        ("Pending", "Pending", "Pending"), ("Running", "Pending", "Running"), ("Succeeded", "Pending", "Running"),
        ("Succeeded", "Running", "Running"), ("Succeeded", "Succeeded", "Succeeded")]
    assert doc["build"]["log"] == f"/{sha}/build.log" and doc["run"]["log"] == f"/{sha}/app.log"
    # The Hub: one commit holding the output and the model card, named after the job and the source commit.
    (commit, *older) = pipeline.hub.commits(HF_REPO)
    assert doc["run"]["artifactUrl"].endswith(f"/{HF_REPO}/commit/{commit['oid']}")
    assert sha in commit["title"] and all("gpuops job" not in c["title"] for c in older)
    files = pipeline.hub.files(HF_REPO)
    assert json.loads(files["result.json"]) == {"steps": 3, "gpu": "NVIDIA L4"}
    assert sha in files["README.md"].decode() and "emulated" in files["README.md"].decode()
    # The logs, as the worker streamed them; and what Prefect shows.
    app_log = pipeline.s3.get_object(Bucket=BUCKET, Key=f"{sha}/app.log")["Body"].read().decode()
    assert "gpu-check: pass" in app_log and "app: step 3/3" in app_log and "publish: 2 files" in app_log
    build_log = pipeline.s3.get_object(Bucket=BUCKET, Key=f"{sha}/build.log")["Body"].read().decode()
    assert "Creating virtual environment" in build_log  # `uv sync --frozen` ran for real
    (table,) = json.loads(artifact_text(f"pipeline-{sha}-stages"))
    rows = {row["stage"]: row for row in json.loads(table)}
    # status.json's times are to the second (§7), so a fast stage may take 0 s: known, not None.
    assert all(rows[stage]["status"] == "Succeeded" and rows[stage]["seconds"] >= 0 for stage in ("build", "run")), rows
    assert commit["oid"] in artifact_text(f"pipeline-{sha}-hub-commit")


def test_a_failing_build_ends_failed_with_the_run_still_pending_and_the_tail_in_an_artifact(pipeline, artifact_text,
                                                                                           capsys):
    """From the command line: exit 1, and --json prints the job's final status.json in the details."""
    from gpuops_cli.cli import main

    sha = make_app_repo(pipeline.repo, broken_build=True)

    code = main(["pipeline", "run", "--repo", str(pipeline.repo), "--ref", "main", "--sha", sha, "--hf-repo", HF_REPO,
                 "--run-deployment", pipeline.deployment, "--json"])

    printed = json.loads(capsys.readouterr().out)
    assert code == 1 and printed["exit_code"] == 1 and printed["error"] == "check-failed"
    (doc,) = printed["details"]
    assert doc == pipeline.versions(sha)[-1]
    assert (doc["build"]["status"], doc["run"]["status"], doc["overallStatus"]) == ("Failed", "Pending", "Failed")
    tail = artifact_text(f"pipeline-{sha}-failed-log")
    assert "build failed" in tail and "uv" in tail
    assert not (pipeline.hub.store.repo_dir("model", HF_REPO) / "repo.json").exists()  # nothing published


def test_a_card_too_small_for_the_job_is_refused_before_the_app_starts(pipeline):
    sha = make_app_repo(pipeline.repo)

    with pytest.raises(CheckFailed):
        run(pipeline, sha, need_vram_gib=40)

    doc = pipeline.versions(sha)[-1]
    assert (doc["build"]["status"], doc["run"]["status"]) == ("Succeeded", "Failed")
    assert "VRAM" in doc["run"]["error"] or "GiB" in doc["run"]["error"]
    app_log = pipeline.s3.get_object(Bucket=BUCKET, Key=f"{sha}/app.log")["Body"].read().decode()
    assert "gpu-check: refused" in app_log and "app: starting" not in app_log


@flow(name="build-run-publish")
def _another_pipeline_run():
    """Stands for a pipeline run already under way (its state is set, it never executes)."""


def test_the_same_job_never_runs_twice_at_once(pipeline, prefect_api):
    """A job owned by a flow run that is still running is refused, and its status.json is left alone."""
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from gpuops.status_store import StatusStore

    sha = make_app_repo(pipeline.repo)
    with get_client(sync_client=True) as client:
        owner = client.create_flow_run(_another_pipeline_run, state=Running())
    store = StatusStore.from_env()
    store.create(js.set_prefect(js.new_status(sha, js.parse_timestamp("2026-01-01T00:00:00Z")),
                                js.parse_timestamp("2026-01-01T00:00:00Z"), flow_run_id=str(owner.id)))
    before = store.read(sha)

    with pytest.raises(CheckFailed, match=f"already being run by flow run {owner.id}"):
        run(pipeline, sha)
    assert store.read(sha) == before


def test_bad_input_is_refused_before_anything_is_written(pipeline, capsys):
    from gpuops_cli.cli import main

    sha = make_app_repo(pipeline.repo)
    base = ["pipeline", "run", "--repo", str(pipeline.repo), "--ref", "main", "--sha", sha, "--json"]
    for extra in (["--run-deployment", "run-app/nope"], ["--hf-repo", "no-slash"], ["--runtime", "container"],
                  ["--ref", "a..b"], ["--need-vram-gib", "0"], ["--repo", "https://ghp_token@github.com/o/a.git"]):
        code = main(base + ["--run-deployment", pipeline.deployment] + extra)
        printed = json.loads(capsys.readouterr().out)
        assert (code, printed["error"]) == (2, "bad-input"), (extra, printed)
        assert "ghp_token" not in printed["message"]
    with pytest.raises(BadInput, match="runtime"):
        run(pipeline, sha, runtime="vm")
    assert pipeline.s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0


def test_a_run_no_worker_starts_is_cancelled_at_the_bound_and_the_job_says_why(pipeline):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    from flows.run_app import run_app
    from gpuops.stack import deploy_here

    idle = f"idle-pool-{uuid.uuid4().hex[:6]}"  # a pool nothing polls
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=idle, type="process"))
    deploy_here(run_app, idle, idle)
    sha = make_app_repo(pipeline.repo)

    with pytest.raises(CheckFailed, match="no worker started run-app within 3 s"):
        run(pipeline, sha, run_deployment_name=f"run-app/{idle}", run_timeout_s=3)

    doc = pipeline.versions(sha)[-1]
    assert (doc["build"]["status"], doc["run"]["status"]) == ("Succeeded", "Failed")
    assert "prefect worker start --pool" in doc["run"]["error"]
    with get_client(sync_client=True) as client:
        (left,) = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[idle])))
    assert left.state.name in ("Cancelling", "Cancelled")  # it will not start later and race a re-run
