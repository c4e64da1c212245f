"""A plaintext env value never comes to rest: not under PREFECT_HOME, not in the state dir, not on the console.

`gpuops create-jobs` copies the service's env (plaintext values included) into the job bodies it
writes. When such a write fails, Prefect persists the flow's exception as a result (a base64
cloudpickle in a JSON file under PREFECT_HOME/storage); google's REST errors used to carry the
requests.Response, and with it the request body. Each case here runs the CLI as a user does, in a
subprocess with its own PREFECT_HOME against the session's Prefect server and the emulator, with a
unique planted value, and looks for that value in every file it left.
"""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import pytest

from gpuops import cloudrun
from secret_search import files_holding, server_record

PROJECT, REGION, SERVICE = "nca-toolkit-438301", "us-central1", "no-code-architects-toolkit"
TARGET = ["--project", PROJECT, "--region", REGION, "--service", SERVICE]
CREATE_JOB = r"/locations/us-central1/jobs$"  # POST .../jobs?jobId=x
UPDATE_JOB = r"/locations/us-central1/jobs/[^/:]+$"  # PATCH .../jobs/x


def test_the_search_finds_the_value_in_a_result_prefect_persisted(tmp_path):
    """The control: an exception holding the value, written as Prefect writes a failed run's result."""
    from prefect.filesystems import LocalFileSystem
    from prefect.results import ResultStore

    planted = f"planted-{uuid.uuid4()}"
    store = ResultStore(result_storage=LocalFileSystem(basepath=str(tmp_path)))
    record = store.create_result_record(RuntimeError({"env": [{"name": "API_KEY", "value": planted}]}))
    store.persist_result_record(record)
    assert files_holding(tmp_path, planted) == [Path(record.metadata.storage_key)]
    assert planted.encode() not in Path(record.metadata.storage_key).read_bytes()  # plain grep misses it


# --- the CLI run -----------------------------------------------------------------------------------


@pytest.fixture
def planted_cloud_run(fresh_cloudrun_emulator):
    """The runbook's service on the emulator, its plaintext API_KEY a unique value."""
    seed = json.loads(resources.files("gpuops.data").joinpath("demo_seed.json").read_text())
    planted = f"planted-{uuid.uuid4()}"
    env = seed["services"][0]["template"]["containers"][0]["env"]
    next(e for e in env if e["name"] == "API_KEY")["value"] = planted
    fresh_cloudrun_emulator.seed(seed)
    fresh_cloudrun_emulator.clear_requests()
    return fresh_cloudrun_emulator, planted


@pytest.fixture
def user(prefect_api, planted_cloud_run, tmp_path):
    """Runs `gpuops ...` in a subprocess with its own PREFECT_HOME (results under its storage)."""
    emulator, planted = planted_cloud_run
    home, state = tmp_path / "prefect-home", tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_API_URL": prefect_api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "GPUOPS_CLOUD_RUN_API": emulator.url,
        "GPUOPS_STATE_DIR": str(state),
        "GPUOPS_RETRY_ATTEMPTS": "2",
        "GPUOPS_RETRY_INITIAL_S": "0.01",
    })
    runs: list[subprocess.CompletedProcess] = []
    started = datetime.now(timezone.utc)

    def run(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "gpuops_cli.cli", *args], env=env, capture_output=True,
                              text=True, timeout=240)
        runs.append(done)
        return done

    def assert_nothing_kept() -> None:
        assert home.is_dir() and state.is_dir(), "the run used neither PREFECT_HOME nor the state dir"
        for root in (home, state):
            found = files_holding(root, planted)
            assert not found, f"{planted} at rest in {[str(p) for p in found]}"
        for done in runs:
            assert planted not in done.stdout and planted not in done.stderr
        assert planted not in server_record(started), "the value reached the Prefect server's database"

    return run, assert_nothing_kept, emulator, planted, home


def _faulted(emulator, method: str, path: str) -> list:
    return [r for r in emulator.requests(method=method) if r.fault and re.search(path, r.path)]


def _persisted_failures(home: Path) -> list[BaseException]:
    """The exceptions Prefect stored as results under PREFECT_HOME/storage."""
    from prefect.serializers import PickleSerializer

    def load(raw: bytes):
        try:  # a flow's result: the serialized value alone (its metadata store is a NullFileSystem)
            return PickleSerializer().loads(raw)
        except Exception:
            pass
        try:  # a task's result record: JSON with the serialized value under "result"
            return PickleSerializer().loads(json.loads(raw)["result"].encode())
        except Exception:
            return None

    values = [load(p.read_bytes()) for p in (home / "storage").rglob("*") if p.is_file()]
    return [v for v in values if isinstance(v, BaseException)]


@pytest.mark.parametrize("status", [400, 503], ids=["400-refused", "503-outlasts-retries"])
def test_a_failed_create_keeps_no_env_value(user, status):
    from google.api_core import exceptions as gexc

    run, assert_nothing_kept, emulator, planted, home = user
    emulator.add_fault(method="POST", path=CREATE_JOB, status=status, times=20)

    done = run("create-jobs", *TARGET, "--json")

    assert done.returncode != 0, done.stdout
    assert _faulted(emulator, "POST", CREATE_JOB), "the write carrying the env value was never sent"
    if status == 503:
        assert len(_faulted(emulator, "POST", CREATE_JOB)) == 2  # GPUOPS_RETRY_ATTEMPTS
    assert_nothing_kept()
    # The path the reviewer saw was taken: Prefect persisted the failure, the google error (scrubbed).
    failures = [e for e in _persisted_failures(home) if isinstance(e, gexc.GoogleAPICallError)]
    assert failures and {e.code for e in failures} == {status}
    assert all(e.response is None for e in failures)


@pytest.mark.parametrize("status", [400, 503], ids=["400-refused", "503-outlasts-retries"])
def test_a_failed_update_keeps_no_env_value(user, status):
    run, assert_nothing_kept, emulator, planted, home = user
    first = run("create-jobs", *TARGET, "--json")  # succeeds: the jobs exist, with the value
    assert first.returncode == 0, first.stderr
    cr = cloudrun.connect(emulator.url)
    jobs = cloudrun.list_jobs(cr, cloudrun.location(PROJECT, REGION))
    assert jobs
    for job in jobs:  # someone changed the jobs by hand: create-jobs now updates them
        stale = copy.deepcopy(job)
        stale["template"]["template"]["containers"][0]["image"] += "-stale"
        emulator.seed({"jobs": [stale]})
    emulator.add_fault(method="PATCH", path=UPDATE_JOB, status=status, times=20)

    done = run("create-jobs", *TARGET, "--json")

    assert done.returncode != 0, done.stdout
    assert _faulted(emulator, "PATCH", UPDATE_JOB), "the write carrying the env value was never sent"
    assert_nothing_kept()
