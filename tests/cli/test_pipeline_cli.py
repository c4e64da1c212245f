"""`gpuops pipeline status` and `gpuops dashboard` as the installed command, against moto on 127.0.0.1."""
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gpuops import job_status as js
from gpuops.status_store import StatusStore

GPUOPS = str(Path(sys.executable).with_name("gpuops"))
T0 = datetime(2025, 6, 18, 14, 30, tzinfo=timezone.utc)
SHA = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"


def gpuops(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([GPUOPS, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def jobs(status_bucket):
    store = StatusStore.from_env()
    doc = js.transition(js.new_status(SHA, T0), "build", "Running", T0 + timedelta(minutes=1))
    store.create(js.set_prefect(doc, T0 + timedelta(minutes=1), flow_run_id="run-1", deployment_id="dep-1",
                                parameters={"sha": SHA}))
    failed = js.transition(js.new_status("deadbee", T0), "build", "Running", T0)
    store.create(js.transition(failed, "build", "Failed", T0 + timedelta(minutes=2)))
    return store


def test_status_json_prints_one_object_the_contract_status(jobs):
    done = gpuops("pipeline", "status", "--sha", SHA, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == jobs.read(SHA) and js.check_document(result) == []


def test_status_finds_a_job_by_its_short_sha(jobs):
    done = gpuops("pipeline", "status", "--sha", SHA[:7].upper(), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["jobId"] == SHA


def test_status_without_json_prints_for_people(jobs):
    done = gpuops("pipeline", "status", "--sha", "deadbee")
    assert done.returncode == 0 and "overallStatus: Failed" in done.stdout


@pytest.mark.parametrize("sha", ["xyz", "abc12", "a" * 41, "abcdefg"])
def test_a_bad_sha_is_bad_input(status_bucket, sha):
    done = gpuops("pipeline", "status", "--sha", sha, "--json")
    assert done.returncode == 2
    result = json.loads(done.stdout)
    assert result["error"] == "bad-input" and "--sha" in result["message"] and "Fix:" in result["message"]


def test_a_missing_job_is_bad_input_naming_the_fix(status_bucket):
    done = gpuops("pipeline", "status", "--sha", "0123456789", "--json")
    assert done.returncode == 2
    message = json.loads(done.stdout)["message"]
    assert "no job 0123456789" in message and status_bucket.bucket in message and "Fix:" in message


def test_no_bucket_configured_is_bad_input():
    env = {k: v for k, v in os.environ.items() if k != "GPUOPS_STATUS_BUCKET"}
    done = subprocess.run([GPUOPS, "pipeline", "status", "--sha", SHA, "--json"], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 2 and "GPUOPS_STATUS_BUCKET" in json.loads(done.stdout)["message"]


def test_an_unreachable_bucket_could_not_run_and_shows_no_key(status_bucket):
    done = gpuops("pipeline", "status", "--sha", SHA, "--json",
                  env={"GPUOPS_S3_ENDPOINT": "http://127.0.0.1:9", "GPUOPS_RETRY_ATTEMPTS": "2",
                       "AWS_SECRET_ACCESS_KEY": "never-print-me"})
    assert done.returncode == 3 and json.loads(done.stdout)["error"] == "could-not-run"
    assert "never-print-me" not in done.stdout + done.stderr


def test_dashboard_writes_the_page_and_uploads_it(jobs, status_bucket, tmp_path):
    out = tmp_path / "page" / "index.html"
    done = gpuops("dashboard", "--out", str(out), "--upload", "--json",
                  env={"PREFECT_API_URL": "http://127.0.0.1:4200/api"})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == {"path": str(out), "jobs": 2, "by_status": {"Failed": 1, "Running": 1},
                      "uploaded": f"s3://{status_bucket.bucket}/index.html"}
    html = out.read_text()
    assert f'href="{status_bucket.url}/{status_bucket.bucket}/{SHA}/build.log"' in html
    assert 'href="http://127.0.0.1:4200/runs/flow-run/run-1"' in html
    uploaded = jobs._client.get_object(Bucket=status_bucket.bucket, Key="index.html")
    assert uploaded["ContentType"].startswith("text/html")
    assert f'href="{SHA}/build.log"' in uploaded["Body"].read().decode()


def test_the_cli_parser_does_not_import_boto3():
    probe = ("from gpuops_cli.cli import build_parser\nbuild_parser()\nimport sys\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore', 'moto')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
