"""The hub as it runs: `gpuops hub` as a process, real HTTP, its SQLite outbox, a real Prefect server.

The work deployments sit on a pool nothing polls, so each dispatched task is a flow run that can be
counted and read (parameters, deployment) without running.
"""
import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from tests.waiting import wait_until

API_KEY = "hub-test-key-0123456789"
GITHUB_SECRET = "It's a Secret to Everybody"
PUSH_TOKEN = "push-token-abcdef"
GPUOPS = str(Path(sys.executable).parent / "gpuops")


def free_port() -> int:
    from gpuops.stack import free_port as port

    return port()


@pytest.fixture(scope="module")
def work_deployments(prefect_api):
    """process-file's gpu-work, gpu-work-gke, cpu-work and build-run-publish on an idle pool."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    from flows.build_run_publish import build_run_publish
    from flows.hub_work import process_file

    pool = "hub-test-idle"
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        except ObjectAlreadyExists:
            pass
    for name in ("gpu-work", "gpu-work-gke", "cpu-work"):
        process_file.to_deployment(name=name, work_pool_name=pool).apply()
    build_run_publish.to_deployment(name="build-run-publish", work_pool_name=pool).apply()
    return pool


class Hub:
    """`gpuops hub` on a free port with its own outbox file; start/kill/restart like an operator would."""

    def __init__(self, prefect_api: str, db: Path, log: Path, extra_env: dict | None = None, lease_s: float = 60,
                 args: tuple = ()):
        self.port, self.db, self.log, self.lease_s, self.args = free_port(), db, log, lease_s, list(args)
        self.env = {**os.environ, "PREFECT_API_URL": prefect_api, "GPUOPS_HUB_API_KEY": API_KEY,
                    "GITHUB_WEBHOOK_SECRET": GITHUB_SECRET, "GPUOPS_PUBSUB_PUSH_TOKEN": PUSH_TOKEN,
                    **(extra_env or {})}
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Hub":
        log = open(self.log, "ab")
        self.proc = subprocess.Popen([GPUOPS, "hub", "--port", str(self.port), "--db", str(self.db),
                                      "--lease-s", str(self.lease_s), *self.args], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise TimeoutError(self.log.read_text()[-3000:])

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)

    def post_task(self, body, **headers):
        return httpx.post(f"{self.url}/v1/tasks", json=body, timeout=10,
                          headers={"X-API-Key": API_KEY, **headers})

    def task(self, task_id: str) -> dict:
        return httpx.get(f"{self.url}/v1/tasks/{task_id}", headers={"X-API-Key": API_KEY}, timeout=10).json()

    def wait_dispatched(self, task_id: str, timeout_s: float = 60) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            seen = self.task(task_id)
            if seen["state"] != "queued":
                return seen
            time.sleep(0.2)
        raise TimeoutError(f"task {task_id} still queued after {timeout_s} s: {seen}")


@pytest.fixture(scope="module")
def hub(prefect_api, work_deployments, tmp_path_factory):
    where = tmp_path_factory.mktemp("hub")
    running = Hub(prefect_api, where / "outbox.sqlite", where / "hub.log").start()
    yield running
    running.stop()


def flow_run(flow_run_id: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def runs_with(deployment_name: str, **parameters) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment_name])))
    return [r for r in runs if all(r.parameters.get(k) == v for k, v in parameters.items())]


def deployment_name(run) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment(run.deployment_id).name


# --- POST /v1/tasks ----------------------------------------------------------------------------


@pytest.mark.parametrize("uri, route, deployment", [
    ("gs://media/in/clip.MP4", "gpu", "gpu-work"), ("gs://media/in/voice.wav", "gpu", "gpu-work"),
    ("gs://media/in/doc.pdf", "cpu", "cpu-work"), ("s3://media/in/table.csv?versionId=3", "cpu", "cpu-work")])
def test_a_task_is_accepted_at_once_and_dispatched_to_its_route(hub, uri, route, deployment):
    started = time.monotonic()
    answered = hub.post_task({"input_uri": uri, "params": {"lang": "ja"}})
    took = time.monotonic() - started
    assert answered.status_code == 202, answered.text
    body = answered.json()
    assert body["route"] == route and body["status_url"] == f"/v1/tasks/{body['id']}"
    assert body["destination"] == ("cloud-run" if route == "gpu" else None)
    assert took < 5  # generous: the contract's "under a second" is shown by the benchmark, not here

    seen = hub.wait_dispatched(body["id"])
    assert seen["state"] == "dispatched" and seen["flow_run_id"]
    run = flow_run(seen["flow_run_id"])
    assert deployment_name(run) == deployment
    assert run.parameters == {"task_id": body["id"], "input_uri": uri, "params": {"lang": "ja"}}


def health(hub) -> dict:
    return httpx.get(f"{hub.url}/healthz", timeout=10).json()


@pytest.fixture
def backlogged_pool(prefect_api):
    """A work pool with no worker and 3 runs already due on it: a backlog of 3. Its runs go afterwards."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.states import Scheduled

    from flows.hub_work import process_file

    pool = f"hub-test-backlog-{uuid.uuid4().hex[:6]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        deployment_id = process_file.to_deployment(name=pool, work_pool_name=pool).apply()
        due = datetime.now(timezone.utc) - timedelta(minutes=1)
        runs = [client.create_flow_run_from_deployment(
            deployment_id, parameters={"task_id": f"waiting-{n}", "input_uri": "gs://media/w.mp4"},
            state=Scheduled(scheduled_time=due)) for n in range(3)]
    yield pool
    with get_client(sync_client=True) as client:
        for run in runs:
            client.delete_flow_run(run.id)


def test_with_the_gke_route_on_gpu_work_overflows_while_the_cloud_run_backlog_is_over_the_threshold(
        prefect_api, work_deployments, backlogged_pool, tmp_path):
    def hub_with(threshold: int) -> Hub:
        return Hub(prefect_api, tmp_path / f"outbox-{threshold}.sqlite", tmp_path / f"hub-{threshold}.log",
                   args=("--enable-gke-route", "--gke-backlog-threshold", str(threshold),
                         "--cloud-run-pool", backlogged_pool)).start()

    over, at = hub_with(2), hub_with(3)  # a backlog of 3 is over 2, and not over 3
    try:
        for hub in (over, at):
            seen = wait_until(lambda: (h := health(hub))["gke_route"]["cloud_run_backlog"] is not None and h,
                              "the backlog read")
            assert seen["gke_route"] == {"enabled": True, "cloud_run_backlog": 3, "threshold": int(hub.args[2])}

        overflowed = over.post_task({"input_uri": "gs://media/o.mp4"}).json()
        assert overflowed["destination"] == "gke"
        assert deployment_name(flow_run(over.wait_dispatched(overflowed["id"])["flow_run_id"])) == "gpu-work-gke"
        # The client's explicit header wins over the overflow; CPU work never overflows.
        assert over.post_task({"input_uri": "gs://media/p.mp4"}, **{"X-Destination": "cloud-run"}).json()[
            "destination"] == "cloud-run"
        assert over.post_task({"input_uri": "gs://media/o.csv"}).json()["destination"] is None
        assert at.post_task({"input_uri": "gs://media/q.mp4"}).json()["destination"] == "cloud-run"
    finally:
        over.stop()
        at.stop()


def test_with_the_gke_route_off_the_backlog_is_not_read(hub):
    assert health(hub)["gke_route"] == {"enabled": False, "cloud_run_backlog": None, "threshold": 20}


def test_the_cpu_route_is_held_to_5_dispatches_a_second_by_a_global_concurrency_limit(
        prefect_api, work_deployments, tmp_path):
    """30 CPU tasks through a dispatcher allowed 100 creates/s: the CPU route's limit (5 slots, decaying at
    5/s, shared by every hub replica on the server) admits a burst of 5, then 5 a second: 5 s at least,
    where unlimited creates take under 3 s (Prefect on SQLite makes ~11 runs/s)."""
    from prefect.client.orchestration import get_client

    from gpuops.hub.dispatcher import CPU_RATE_LIMIT, DispatchSettings, Dispatcher
    from gpuops.hub.outbox import NewTask, open_outbox

    with open_outbox(f"sqlite:///{tmp_path / 'outbox.sqlite'}") as outbox:
        for n in range(30):
            outbox.accept(NewTask(kind="task", deployment="process-file/cpu-work", route="cpu",
                                  parameters={"task_id": f"cpu-{n}", "input_uri": f"gs://media/{n}.csv"}))
        dispatcher = Dispatcher(outbox, DispatchSettings(rate_per_s=100, batch=30, backlog_pool=None))
        started = time.monotonic()
        assert dispatcher.run_once() == 30
        took = time.monotonic() - started
        assert outbox.counts()["dispatched"] == 30
    # (30 - a burst of 5) / 5 per second: at least 5 s, however fast the server is.
    assert took >= 4.9, f"30 CPU dispatches took {took:.2f} s: the 5/s limit did not hold"
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(CPU_RATE_LIMIT)
    assert (limit.limit, limit.slot_decay_per_second) == (5, 5.0)


def test_x_destination_gke_sends_gpu_work_to_the_gke_pool_and_a_bad_one_is_400(hub):
    answered = hub.post_task({"input_uri": "gs://media/a.mov"}, **{"X-Destination": "gke"})
    assert answered.status_code == 202 and answered.json()["destination"] == "gke"
    seen = hub.wait_dispatched(answered.json()["id"])
    assert deployment_name(flow_run(seen["flow_run_id"])) == "gpu-work-gke"
    refused = hub.post_task({"input_uri": "gs://media/a.mov"}, **{"X-Destination": "aws"})
    assert refused.status_code == 400 and refused.json()["field"] == "X-Destination"


def test_the_same_idempotency_key_five_times_is_one_task_and_one_flow_run(hub):
    key = f"client-{uuid.uuid4()}"
    answers = [hub.post_task({"input_uri": "gs://media/b.mp4"}, **{"Idempotency-Key": key}) for _ in range(5)]
    assert {a.status_code for a in answers} == {202}
    assert len({a.json()["id"] for a in answers}) == 1 and answers[0].json()["idempotency_key"] == key
    task_id = answers[0].json()["id"]
    hub.wait_dispatched(task_id)
    time.sleep(1)  # a second dispatch, were there one, would have happened by now
    assert len(runs_with("gpu-work", task_id=task_id)) == 1


@pytest.mark.parametrize("body, field", [
    ({}, "input_uri"), ({"input_uri": "not a uri"}, "input_uri"), ({"input_uri": "gs://media/x.mp4", "params": []}, "params"),
    ({"input_uri": "gs://media/x.mp4", "extra": 1}, "extra")])
def test_a_bad_body_is_400_naming_the_field(hub, body, field):
    answered = hub.post_task(body)
    assert answered.status_code == 400 and answered.json()["field"] == field, answered.text


def test_not_json_missing_key_and_too_large(hub):
    not_json = httpx.post(f"{hub.url}/v1/tasks", content=b"{nope", headers={"X-API-Key": API_KEY}, timeout=10)
    assert not_json.status_code == 400 and not_json.json()["field"] == "body"
    assert hub.post_task({"input_uri": "gs://media/x.mp4"}, **{"X-API-Key": "wrong"}).status_code == 401
    assert httpx.post(f"{hub.url}/v1/tasks", json={"input_uri": "gs://media/x.mp4"}, timeout=10).status_code == 401
    assert httpx.get(f"{hub.url}/v1/tasks/{uuid.uuid4()}", timeout=10).status_code == 401
    big = b'{"input_uri": "gs://media/x.mp4", "params": {"pad": "' + b"x" * (2 << 20) + b'"}}'
    assert httpx.post(f"{hub.url}/v1/tasks", content=big, headers={"X-API-Key": API_KEY},
                      timeout=30).status_code == 413

    def chunks():  # no Content-Length: refused once the stream passes the limit
        for _ in range(40):
            yield b"x" * 65536

    streamed = httpx.post(f"{hub.url}/v1/tasks", content=chunks(), headers={"X-API-Key": API_KEY}, timeout=30)
    assert streamed.status_code == 413
    assert httpx.get(f"{hub.url}/v1/tasks/{uuid.uuid4()}", headers={"X-API-Key": API_KEY}, timeout=10).status_code == 404


def test_the_api_key_never_reaches_the_hub_log(hub):
    hub.post_task({"input_uri": "gs://media/secret-check.mp4"})
    assert API_KEY not in hub.log.read_text() and GITHUB_SECRET not in hub.log.read_text()


# --- GitHub ------------------------------------------------------------------------------------


def signed(body: bytes) -> str:
    return "sha256=" + hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()


def push_payload(sha: str, ref: str = "refs/heads/main") -> bytes:
    return json.dumps({"ref": ref, "after": sha, "deleted": False,
                       "repository": {"full_name": "my-org/app", "clone_url": "https://github.com/my-org/app.git",
                                      "default_branch": "main"}}).encode()


def deliver(hub, event: str, body: bytes, delivery: str | None = None, signature: str | None = None):
    return httpx.post(f"{hub.url}/v1/webhooks/github", content=body, timeout=10, headers={
        "X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": signature if signature is not None else signed(body),
        "Content-Type": "application/json"})


def test_a_push_to_the_default_branch_starts_the_pipeline_once_per_delivery(hub):
    sha = uuid.uuid4().hex[:12] + "0" * 28
    body, delivery = push_payload(sha), str(uuid.uuid4())
    first = deliver(hub, "push", body, delivery)
    again = deliver(hub, "push", body, delivery)  # GitHub's redelivery
    assert first.status_code == again.status_code == 202 and first.json()["id"] == again.json()["id"]
    seen = hub.wait_dispatched(first.json()["id"])
    run = flow_run(seen["flow_run_id"])
    assert deployment_name(run) == "build-run-publish"
    assert run.parameters == {"repo": "https://github.com/my-org/app.git", "ref": "main", "sha": sha}
    time.sleep(1)
    assert len(runs_with("build-run-publish", sha=sha)) == 1


def test_github_ping_other_branches_tampering_and_non_json(hub):
    ping = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()
    assert deliver(hub, "ping", ping).status_code == 200
    other = deliver(hub, "push", push_payload("a" * 40, ref="refs/heads/feature"))
    assert other.status_code == 202 and "ignored" in other.json()
    body = push_payload("b" * 40)
    assert deliver(hub, "push", body.replace(b"my-org", b"evil-org"), signature=signed(body)).status_code == 401
    assert deliver(hub, "push", body, signature="").status_code == 401
    assert deliver(hub, "push", b"not json", signature=signed(b"not json")).status_code == 400


# --- Pub/Sub push ------------------------------------------------------------------------------


def envelope(message_id: str, bucket: str = "uploads", name: str = "in/movie.mp4",
             event: str = "OBJECT_FINALIZE") -> dict:
    data = base64.b64encode(json.dumps({"bucket": bucket, "name": name}).encode()).decode()
    return {"subscription": "projects/p/subscriptions/hub", "message": {
        "messageId": message_id, "data": data, "publishTime": "2026-11-23T00:00:00Z",
        "attributes": {"eventType": event, "bucketId": bucket, "objectId": name, "payloadFormat": "JSON_API_V1"}}}


def test_a_finalize_notification_is_one_task_however_often_it_is_delivered(hub):
    message_id = str(uuid.uuid4().int)[:16]
    url = f"{hub.url}/v1/pubsub/push?token={PUSH_TOKEN}"
    answers = [httpx.post(url, json=envelope(message_id), timeout=10) for _ in range(3)]
    assert {a.status_code for a in answers} == {202} and len({a.json()["id"] for a in answers}) == 1
    seen = hub.wait_dispatched(answers[0].json()["id"])
    run = flow_run(seen["flow_run_id"])
    assert deployment_name(run) == "gpu-work" and run.parameters["input_uri"] == "gs://uploads/in/movie.mp4"


def test_pubsub_refusals(hub):
    url = f"{hub.url}/v1/pubsub/push"
    assert httpx.post(url, json=envelope("1"), timeout=10).status_code == 401
    assert httpx.post(f"{url}?token=wrong", json=envelope("1"), timeout=10).status_code == 401
    malformed = httpx.post(f"{url}?token={PUSH_TOKEN}", json={"message": {"data": "x"}}, timeout=10)
    assert malformed.status_code == 400 and "messageId" in malformed.json()["field"]
    deleted = httpx.post(f"{url}?token={PUSH_TOKEN}", json=envelope("2", event="OBJECT_DELETE"), timeout=10)
    assert deleted.status_code == 200 and "ignored" in deleted.json()


# --- durability --------------------------------------------------------------------------------


def test_a_task_accepted_before_a_sigkill_is_dispatched_exactly_once_after_the_restart(
        prefect_api, work_deployments, tmp_path):
    """Prefect unreachable at first, so the task is only in the outbox when the hub is killed."""
    down = Hub(prefect_api, tmp_path / "outbox.sqlite", tmp_path / "hub.log",
               extra_env={"PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"}, lease_s=3).start()
    try:
        answered = down.post_task({"input_uri": "gs://media/kill.mp4"})
        assert answered.status_code == 202
        task_id = answered.json()["id"]
        assert down.task(task_id)["state"] == "queued"
    finally:
        down.kill()

    back = Hub(prefect_api, tmp_path / "outbox.sqlite", tmp_path / "hub.log")
    back.port = down.port
    back.start()
    try:
        seen = back.wait_dispatched(task_id)
        assert seen["state"] == "dispatched"
        time.sleep(1)
        assert len(runs_with("gpu-work", task_id=task_id)) == 1
    finally:
        back.stop()


# --- beyond one machine ------------------------------------------------------------------------


# 60 in the suite (Prefect on SQLite creates ~11 runs/s); GPUOPS_TWO_HUB_TASKS=1000 for the full check.
# 1,000 through two processes also run in tests/hub/test_outbox.py (the outbox alone, ~1 s).
TWO_HUB_TASKS = int(os.environ.get("GPUOPS_TWO_HUB_TASKS", "60"))


def test_two_hubs_on_one_postgresql_outbox_dispatch_each_task_exactly_once(
        prefect_api, work_deployments, postgres_database, tmp_path):
    """Two `gpuops hub` processes, one PostgreSQL outbox, tasks accepted across both, each dispatched once.
    (Prefect on SQLite creates ~11 runs/s, so 1,000 runs here would take minutes of the suite.)"""
    from concurrent.futures import ThreadPoolExecutor

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    from gpuops.hub.outbox import open_outbox

    hubs = [Hub(prefect_api, postgres_database, tmp_path / f"hub{i}.log") for i in range(2)]
    for hub in hubs:
        hub.db = postgres_database  # a URL: both hubs share the one outbox
        hub.start()
    try:
        marker = uuid.uuid4().hex[:8]

        def send(i: int) -> str:
            answered = hubs[i % 2].post_task({"input_uri": f"gs://media/{marker}/{i}.mp4"})
            assert answered.status_code == 202, answered.text
            return answered.json()["id"]

        with ThreadPoolExecutor(max_workers=10) as pool:
            accepted = list(pool.map(send, range(TWO_HUB_TASKS)))
        assert len(set(accepted)) == TWO_HUB_TASKS
        outbox = open_outbox(postgres_database)
        deadline = time.monotonic() + 300
        while outbox.counts().get("dispatched", 0) < TWO_HUB_TASKS and time.monotonic() < deadline:
            time.sleep(1)
        assert {k: v for k, v in outbox.counts().items() if v} == {"dispatched": TWO_HUB_TASKS}
        owners = {}
        for task_id in accepted:
            task = outbox.get(task_id)
            owners[task.flow_run_id] = task_id
        outbox.close()
        assert len(owners) == TWO_HUB_TASKS  # distinct flow runs, one per task

        wanted = DeploymentFilter(name=DeploymentFilterName(any_=["gpu-work"]))
        per_task: dict[str, int] = {}
        with get_client(sync_client=True) as client:
            offset = 0
            while True:
                page = client.read_flow_runs(deployment_filter=wanted, limit=200, offset=offset,
                                             sort=FlowRunSort.ID_DESC)
                for run in page:
                    if marker in run.parameters.get("input_uri", ""):
                        per_task[run.parameters["task_id"]] = per_task.get(run.parameters["task_id"], 0) + 1
                if len(page) < 200:
                    break
                offset += 200
        assert set(per_task) == set(accepted) and set(per_task.values()) == {1}
        assert all(hub.proc.poll() is None for hub in hubs)
    finally:
        for hub in hubs:
            hub.stop()


def test_a_task_for_a_deployment_prefect_does_not_have_is_dead_lettered_with_the_fix(prefect_api, tmp_path):
    """The dispatcher in this process, on a real outbox and the real server: refused for good is not retried."""
    from gpuops.hub.dispatcher import Dispatcher
    from gpuops.hub.outbox import NewTask, open_outbox

    with open_outbox(f"sqlite:///{tmp_path / 'outbox.sqlite'}") as outbox:
        task, _ = outbox.accept(NewTask(kind="task", deployment="process-file/no-such-deployment",
                                        parameters={"task_id": "t", "input_uri": "gs://media/a.mp4"}, route="gpu"))
        dispatcher = Dispatcher(outbox)
        assert dispatcher.run_once() == 1
        seen = outbox.get(task.id)
        assert seen.state == "dead-lettered" and "process-file/no-such-deployment not found" in seen.last_error
        assert "prefect deploy" in seen.last_error
        assert dispatcher.run_once() == 0  # never claimed again


@pytest.mark.parametrize("flags, field", [
    (["--gke-backlog-threshold", "-1"], "gke_backlog_threshold (--gke-backlog-threshold)"),
    (["--rate-per-s", "0"], "rate_per_s (--rate-per-s)"), (["--lease-s", "0"], "lease_s (--lease-s)"),
    (["--port", "70000"], "port (--port)")])
def test_bad_hub_settings_exit_2_naming_the_flag_before_anything_starts(flags, field, tmp_path):
    done = subprocess.run([GPUOPS, "hub", "--db", str(tmp_path / "outbox.sqlite"), *flags],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert field in done.stderr and not (tmp_path / "outbox.sqlite").exists()
