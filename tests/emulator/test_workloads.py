"""The emulator running workloads: job tasks and serving revisions as local processes, and the router."""

from __future__ import annotations

import collections
import json
import sys
import time
from types import SimpleNamespace

import httpx
import pytest
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.api_core.future import polling
from google.auth.credentials import AnonymousCredentials
from google.cloud import run_v2

from gpuops.emulator.workloads import BANNER, group_alive
from gpuops.execution_logs import entry_text
from gpuops.sample_app import generate

PARENT = "projects/demo/locations/us-central1"
REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
FAST_POLL = polling.DEFAULT_POLLING.with_delay(initial=0.02, maximum=0.05).with_timeout(20)
SAMPLE_JOB = [sys.executable, "-m", "gpuops_cli.sample_app_cli", "--job"]
SAMPLE_SERVER = [sys.executable, "-m", "gpuops_cli.sample_app_cli"]
Completion = run_v2.ExecutionReference.CompletionStatus
Cond = run_v2.Condition.State


@pytest.fixture(scope="module")
def clients(workload_emulator):
    kwargs = dict(transport="rest", client_options=ClientOptions(api_endpoint=workload_emulator.url),
                  credentials=AnonymousCredentials())
    return SimpleNamespace(
        services=run_v2.ServicesClient(**kwargs), revisions=run_v2.RevisionsClient(**kwargs),
        jobs=run_v2.JobsClient(**kwargs), executions=run_v2.ExecutionsClient(**kwargs),
        tasks=run_v2.TasksClient(**kwargs),
    )


@pytest.fixture
def emu(fresh_workload_emulator):
    yield fresh_workload_emulator
    # The fixture's reset stops everything; prove it here, where the processes are still known.
    fresh_workload_emulator.reset()
    assert fresh_workload_emulator.processes(running_only=True) == []


@pytest.fixture
def http(emu):
    with httpx.Client(timeout=20) as client:
        yield client


def make_job(clients, job_id: str, command: list[str], args=(), env=None, timeout_s: int = 0, tasks: int = 1):
    container = run_v2.Container(
        image="us-docker.pkg.dev/demo/gpu/app:1", command=command, args=list(args),
        env=[run_v2.EnvVar(name=k, value=v) for k, v in (env or {}).items()],
    )
    template = run_v2.TaskTemplate(containers=[container])
    if timeout_s:
        template.timeout = {"seconds": timeout_s}
    job = run_v2.Job(template=run_v2.ExecutionTemplate(template=template, task_count=tasks))
    return clients.jobs.create_job(parent=PARENT, job_id=job_id, job=job).result(timeout=10)


def run_job(clients, job, overrides=None):
    """Run and wait; returns (execution, error) where error is the failed operation's exception."""
    op = clients.jobs.run_job(request=run_v2.RunJobRequest(name=job.name, overrides=overrides))
    try:
        op.result(polling=FAST_POLL)
        error = None
    except gexc.GoogleAPICallError as exc:
        error = exc
    return clients.executions.get_execution(name=op.metadata.name), error


def list_entries(http, url: str, execution_name: str) -> list[dict]:
    """Every Cloud Logging entry of one execution, from the emulator's entries:list."""
    project, execution = execution_name.split("/")[1], execution_name.rsplit("/", 1)[-1]
    body = {"resourceNames": [f"projects/{project}"], "orderBy": "timestamp asc", "pageSize": 1000,
            "filter": f'resource.type="cloud_run_job" AND labels."run.googleapis.com/execution_name"="{execution}"'}
    answer = http.post(f"{url}/v2/entries:list", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json().get("entries", [])


def completed(resource) -> run_v2.Condition:
    return next(c for c in resource.conditions if c.type_ == "Completed")


def gone(pgid: int) -> bool:
    """No live member left in the process group (a zombie waiting for PID 1 does not count)."""
    return not group_alive(pgid)


# ---------------------------------------------------------------- jobs


def test_job_runs_the_sample_workload_and_its_output_is_readable(emu, clients, http):
    job = make_job(clients, "gen", SAMPLE_JOB, args=["--prompt", "hello", "--steps", "50"])
    execution, error = run_job(clients, job)
    assert error is None
    assert (execution.succeeded_count, execution.failed_count) == (1, 0)
    assert completed(execution).state == Cond.CONDITION_SUCCEEDED
    text = emu.logs(execution.name)
    assert text.splitlines()[0] == BANNER.format(image="us-docker.pkg.dev/demo/gpu/app:1")
    assert generate("hello", 50)["output"] in text
    # Over HTTP, as Cloud Logging serves it: one entry per line, the JSON result as jsonPayload.
    entries = list_entries(http, emu.url, execution.name)
    assert [entry_text(e) for e in entries] == [
        json.dumps(json.loads(line), sort_keys=True) if line.startswith("{") else line for line in text.splitlines()]
    assert entries[-2]["jsonPayload"]["output"] == generate("hello", 50)["output"]
    assert list_entries(http, emu.url, f"{job.name}/executions/nope") == []
    assert http.get(f"{emu.url}/emulator/v1/logs/{execution.name}").status_code == 404  # the old shortcut is gone


def test_job_tasks_get_cloud_run_env_secret_placeholders_and_the_extra_path(emu, clients):
    script = (
        'echo "$CLOUD_RUN_JOB $CLOUD_RUN_EXECUTION $CLOUD_RUN_TASK_INDEX/$CLOUD_RUN_TASK_COUNT '
        '$PLAIN $TOKEN $GPUOPS_EMULATED_GPU"; nvidia-smi'
    )
    container = run_v2.Container(image="img:1", command=["sh", "-c", script], env=[
        run_v2.EnvVar(name="PLAIN", value="plain-value"),
        run_v2.EnvVar(name="TOKEN", value_source=run_v2.EnvVarSource(
            secret_key_ref=run_v2.SecretKeySelector(secret="hf-token", version="3"))),
    ])
    job = run_v2.Job(template=run_v2.ExecutionTemplate(
        task_count=2, template=run_v2.TaskTemplate(containers=[container])))
    job = clients.jobs.create_job(parent=PARENT, job_id="envs", job=job).result(timeout=10)
    execution, error = run_job(clients, job)
    assert error is None and execution.succeeded_count == 2
    text = emu.logs(execution.name)
    exec_id = execution.name.rsplit("/", 1)[-1]
    for index in (0, 1):
        assert f"envs {exec_id} {index}/2 plain-value emulated-secret:hf-token:3 1" in text
    assert text.count("0, NVIDIA L4, 23034 MiB, 8.9") == 2  # the fake nvidia-smi came first on PATH
    assert text.index("0/2") < text.index("1/2")  # task by task, in index order


def test_overridden_env_makes_the_job_fail(emu, clients):
    job = make_job(clients, "gen", SAMPLE_JOB)
    fail = run_v2.EnvVar(name="SAMPLE_APP_FAIL", value="1")
    overrides = run_v2.RunJobRequest.Overrides(
        container_overrides=[run_v2.RunJobRequest.Overrides.ContainerOverride(env=[fail])]
    )
    execution, error = run_job(clients, job, overrides)
    assert isinstance(error, gexc.GoogleAPICallError)
    assert (execution.succeeded_count, execution.failed_count) == (0, 1)
    assert completed(execution).state == Cond.CONDITION_FAILED
    latest = clients.jobs.get_job(name=job.name).latest_created_execution
    assert latest.completion_status == Completion.EXECUTION_FAILED
    assert "failing on purpose (SAMPLE_APP_FAIL=1)" in emu.logs(execution.name)


def test_cancel_kills_the_process_group(emu, clients):
    # sh starts sleep as a child: the whole group must go, not just the shell.
    job = make_job(clients, "sleepy", ["sh", "-c", "sleep 30; echo never"])
    op = clients.jobs.run_job(name=job.name)
    deadline = time.monotonic() + 5
    while not emu.processes(running_only=True) and time.monotonic() < deadline:
        time.sleep(0.02)
    (proc,) = emu.processes(running_only=True)
    clients.executions.cancel_execution(name=op.metadata.name).result(polling=FAST_POLL)
    assert gone(proc["pid"])
    execution = clients.executions.get_execution(name=op.metadata.name)
    assert execution.cancelled_count == 1 and execution.running_count == 0
    assert "execution cancelled" in emu.logs(execution.name)


def test_task_timeout_kills_and_fails(emu, clients):
    job = make_job(clients, "slow", ["sleep", "30"], timeout_s=1)
    started = time.monotonic()
    execution, error = run_job(clients, job)
    assert time.monotonic() - started < 10
    assert error is not None and execution.failed_count == 1
    (task,) = clients.tasks.list_tasks(parent=execution.name)
    assert task.last_attempt_result.exit_code == 124
    assert "timed out after 1 s" in task.last_attempt_result.status.message
    assert all(gone(p["pid"]) for p in emu.processes())


def test_a_container_without_command_fails_clearly(emu, clients):
    container = run_v2.Container(image="img:only")
    job = run_v2.Job(template=run_v2.ExecutionTemplate(template=run_v2.TaskTemplate(containers=[container])))
    job = clients.jobs.create_job(parent=PARENT, job_id="nocmd", job=job).result(timeout=10)
    execution, error = run_job(clients, job)
    assert error is not None and execution.failed_count == 1
    text = emu.logs(execution.name)
    assert text.startswith(BANNER.format(image="img:only")) and "has no 'command'" in text
    assert emu.processes() == []


# ---------------------------------------------------------------- services and the router


def container(env=None, command=SAMPLE_SERVER):
    return run_v2.Container(image="us-docker.pkg.dev/demo/gpu/web:1", command=command,
                            env=[run_v2.EnvVar(name=k, value=v) for k, v in (env or {}).items()])


def deploy_two_revisions(clients, green_env=None):
    """web-blue, then web-green with 80/20 traffic and the tag 'canary' on green."""
    svc = run_v2.Service(template=run_v2.RevisionTemplate(revision="web-blue", containers=[container()]))
    svc = clients.services.create_service(parent=PARENT, service_id="web", service=svc).result(timeout=20)
    svc.template = run_v2.RevisionTemplate(revision="web-green", containers=[container(green_env)])
    svc.traffic = [
        run_v2.TrafficTarget(type_=REVISION, revision="web-blue", percent=80),
        run_v2.TrafficTarget(type_=REVISION, revision="web-green", percent=20, tag="canary"),
    ]
    return clients.services.update_service(service=svc).result(timeout=20)


def test_router_follows_the_traffic_split_and_tags(emu, clients, http):
    svc = deploy_two_revisions(clients)
    served = collections.Counter()
    for _ in range(50):
        answer = http.get(f"{svc.uri}/healthz")
        assert answer.status_code == 200
        assert answer.json()["revision"] == answer.headers["X-Gpuops-Revision"]
        served[answer.headers["X-Gpuops-Revision"]] += 1
    assert served == {"web-blue": 40, "web-green": 10}
    (canary,) = [t.uri for t in svc.traffic_statuses if t.tag == "canary"]
    assert canary.endswith("/canary---web")
    for _ in range(3):
        assert http.get(f"{canary}/healthz").headers["X-Gpuops-Revision"] == "web-green"
    answer = http.post(f"{canary}/generate?x=1", json={"prompt": "hi", "steps": 10})
    assert answer.status_code == 200 and answer.json()["output"] == generate("hi", 10)["output"]
    assert http.post(f"{canary}/generate", content=b"not json").status_code == 400
    running = {p["name"].rsplit("/", 1)[-1] for p in emu.processes(running_only=True)}
    assert running == {"web-blue", "web-green"}


def test_health_passes_while_real_work_fails(emu, clients, http):
    svc = deploy_two_revisions(clients, green_env={"SAMPLE_APP_FAIL": "generate"})
    canary = f"{emu.url}/emulated/demo/us-central1/canary---web"
    assert svc.uri == f"{emu.url}/emulated/demo/us-central1/web"
    assert http.get(f"{canary}/healthz").status_code == 200
    assert http.post(f"{canary}/generate", json={"prompt": "hi", "steps": 5}).status_code == 500
    revision = clients.revisions.get_revision(name=f"{svc.name}/revisions/web-green")
    assert next(c for c in revision.conditions if c.type_ == "Ready").state == Cond.CONDITION_SUCCEEDED


def test_revisions_stop_with_traffic_and_with_the_service(emu, clients, http):
    svc = deploy_two_revisions(clients)
    pids = {p["name"].rsplit("/", 1)[-1]: p["pid"] for p in emu.processes(running_only=True)}
    svc.traffic = [run_v2.TrafficTarget(type_=REVISION, revision="web-blue", percent=100)]
    svc = clients.services.update_service(service=svc).result(timeout=20)
    assert gone(pids["web-green"]) and not gone(pids["web-blue"])
    assert "revision web-green stopped" in emu.logs(f"{svc.name}/revisions/web-green")
    clients.services.delete_service(name=svc.name).result(timeout=20)
    assert gone(pids["web-blue"])
    assert http.get(f"{svc.uri}/healthz").status_code == 404


def test_a_revision_that_never_listens_fails_its_deploy(emu, clients, http):
    crash = [sys.executable, "-c", "print('no GPU here'); raise SystemExit(3)"]
    svc = run_v2.Service(template=run_v2.RevisionTemplate(containers=[container(command=crash)]))
    op = clients.services.create_service(parent=PARENT, service_id="broken", service=svc)
    with pytest.raises(gexc.GoogleAPICallError, match="no GPU here"):
        op.result(timeout=20)
    svc = clients.services.get_service(name=f"{PARENT}/services/broken")
    assert svc.terminal_condition.state == Cond.CONDITION_FAILED
    assert "exited with code 3" in svc.terminal_condition.message
    answer = http.get(f"{svc.uri}/")
    assert answer.status_code == 503 and "failed to start" in answer.text


def test_router_answers_503_for_a_container_without_command_and_404_for_unknown(emu, clients, http):
    svc = run_v2.Service(template=run_v2.RevisionTemplate(containers=[container(command=[])]))
    op = clients.services.create_service(parent=PARENT, service_id="imageonly", service=svc)
    svc = op.result(timeout=20)
    answer = http.get(f"{svc.uri}/healthz")
    assert answer.status_code == 503 and "has no 'command'" in answer.text
    assert http.get(f"{emu.url}/emulated/demo/us-central1/nope/").status_code == 404
    assert http.get(f"{emu.url}/emulated/demo/us-central1/nope---imageonly/").status_code == 404
    assert emu.processes() == []


def test_sample_app_can_fail_everything_and_add_latency(emu, clients, http):
    env = {"SAMPLE_APP_FAIL": "all", "SAMPLE_APP_LATENCY_MS": "150"}
    svc = run_v2.Service(template=run_v2.RevisionTemplate(containers=[container(env)]))
    svc = clients.services.create_service(parent=PARENT, service_id="sick", service=svc).result(timeout=20)
    started = time.monotonic()
    answer = http.get(f"{svc.uri}/healthz")
    assert answer.status_code == 500 and time.monotonic() - started >= 0.15
    assert answer.headers["X-Gpuops-Revision"] == svc.latest_ready_revision.rsplit("/", 1)[-1]


def test_sample_app_job_mode_from_the_gpuops_command(capsys, monkeypatch):
    from gpuops_cli import cli

    assert cli.main(["sample-app", "--job", "--prompt", "p", "--steps", "3"]) == 0
    assert generate("p", 3)["output"] in capsys.readouterr().out
    monkeypatch.setenv("SAMPLE_APP_FAIL", "generate")
    assert cli.main(["sample-app", "--job"]) == 1
