"""deployments/automations.py on the session's real Prefect server: applying creates the alert automations, a
second apply changes nothing, and the alerts fire: 3 failed runs of a GPU deployment, and a GPU pool whose
backlog stays high, each notify through the block (a custom webhook to the n8n stand-in)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from deployments import automations as am

ROOT = Path(__file__).resolve().parents[2]
BACKLOG_S = 10  # the shortest window Prefect allows a proactive trigger


@pytest.fixture(scope="module")
def alerts(prefect_api, tmp_path_factory):
    """The n8n stand-in, a custom-webhook block pointed at it, a process pool playing a GPU pool, and the
    automations applied (by the command, as an operator runs it) for that pool; deleted afterwards."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from gpuops.emulator.webhook_sink import WebhookSink

    pool = f"test-gpu-{uuid.uuid4().hex[:6]}"
    args = ["--notification-block", "custom-webhook/automation-alerts", "--gpu-pool", pool,
            "--backlog-minutes", str(BACKLOG_S / 60)]
    with WebhookSink() as sink, get_client(sync_client=True) as client:
        sink.save_block("automation-alerts")
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        for name in (am.BACKLOG_NAME, am.FAILURES_NAME):  # a shared server: start from none
            for found in client.read_automations_by_name(name):
                client.delete_automation(found.id)
        dry = am.main(args + ["--dry-run"])  # in-process; the apply itself by the command
        applied = _apply(prefect_api, args)
        yield type("Alerts", (), {"sink": sink, "pool": pool, "args": args, "api": prefect_api, "dry": dry,
                                  "applied": applied})
        for name in (am.BACKLOG_NAME, am.FAILURES_NAME):
            for found in client.read_automations_by_name(name):
                client.delete_automation(found.id)


def _apply(api: str, args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_API_URL": api}
    return subprocess.run([sys.executable, "-m", "deployments.automations", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def _ids() -> dict[str, str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {name: [str(a.id) for a in client.read_automations_by_name(name)]
                for name in (am.BACKLOG_NAME, am.FAILURES_NAME)}


def test_applying_creates_the_automations_and_a_second_apply_changes_nothing(alerts, capsys):
    assert alerts.dry == 2  # a dry run found both to create, and created neither (the command did)
    assert alerts.applied.returncode == 0, alerts.applied.stdout + alerts.applied.stderr
    assert alerts.applied.stdout.count("created") == 2
    before = _ids()
    assert all(len(ids) == 1 for ids in before.values()), before

    code = am.main(alerts.args)  # in-process this time

    out = capsys.readouterr().out
    assert code == 0 and out.count("in sync") == 2 and "0 pending change(s)" in out, out
    assert _ids() == before
    # A changed setting is drift: reported, and applied only with --update.
    changed = alerts.args + ["--failures-within-minutes", "30"]
    assert am.main(changed) == 2 and "differs      " + am.FAILURES_NAME in capsys.readouterr().out
    assert am.main(changed + ["--update"]) == 0 and am.main(changed) == 0
    assert am.main(alerts.args + ["--update"]) == 0 and _ids() == before  # back as the fixture applied it


def test_a_missing_or_unnamed_notification_block_is_an_error_and_changes_nothing(alerts, capsys, monkeypatch):
    monkeypatch.delenv(am.BLOCK_ENV, raising=False)
    before = _ids()
    assert am.main(["--gpu-pool", alerts.pool]) == 1
    assert "--notification-block" in capsys.readouterr().err
    assert am.main(["--notification-block", "custom-webhook/no-such-block", "--update"]) == 1
    assert "is not saved on this Prefect API" in capsys.readouterr().err
    assert am.main(["--notification-block", "automation-alerts"]) == 1
    assert "<block-type-slug>/<name>" in capsys.readouterr().err
    assert _ids() == before


def test_the_defaults_watch_every_gpu_pool_for_3_failures_and_10_minutes_of_backlog():
    backlog, failures = am.desired_automations(am.Settings(block_document_id=uuid.uuid4()))
    assert backlog.trigger.within.total_seconds() == 600 and backlog.trigger.posture == "Proactive"
    assert failures.trigger.threshold == 3 and failures.trigger.expect == {"prefect.flow-run.Failed"}
    assert set(failures.trigger.match_related["prefect.resource.name"]) == {
        "gpuops-cloud-run-gpu", "gpuops-kubernetes-gpu", "gpuops-docker-gpu"}
    assert {p.stem for p in (ROOT / "deployments" / "work_pools").glob("*-gpu.json")} == set(am.GPU_POOLS)


def _fail(client, run_id) -> None:
    from prefect.states import Failed, Pending, Running

    for state in (Pending(), Running(), Failed(message="test: the GPU job exited 1")):
        client.set_flow_run_state(run_id, state)


def _automation_events(api: str, name: str, event: str) -> list[dict]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        (automation,) = client.read_automations_by_name(name)
    body = {"filter": {"event": {"name": [event]}, "resource": {"id": [f"prefect.automation.{automation.id}"]}},
            "limit": 50}
    answer = httpx.post(f"{api}/events/filter", json=body, timeout=10)
    answer.raise_for_status()
    return answer.json()["events"]


def test_three_failed_runs_of_a_gpu_deployment_notify_once(alerts):
    from prefect.client.orchestration import get_client

    from flows.hub_work import process_file
    from gpuops.stack import deploy_here

    deploy_here(process_file, "gpu-work", alerts.pool)
    alerts.sink.reset()
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"process-file/gpu-work")
        runs = [client.create_flow_run_from_deployment(deployment.id, parameters={
            "task_id": f"t{i}", "input_uri": f"gs://uploads/{i}.mp4"}) for i in range(3)]
        for run in runs[:2]:
            _fail(client, run.id)
        early = alerts.sink.wait_for(lambda d: True, timeout_s=1)  # two failures are not an alert
        _fail(client, runs[2].id)

    note = alerts.sink.wait_for(lambda d: "failing" in str(d.body), timeout_s=45)
    assert early is None
    assert note is not None, "no notification within 45 s of the third failure"
    assert note.body["subject"] == "gpuops: GPU deployment failing"
    assert f"Deployment gpu-work on GPU pool {alerts.pool} failed 3 runs in a row" in note.body["body"]
    assert runs[2].name in note.body["body"] and "the GPU job exited 1" in note.body["body"]
    deadline = time.monotonic() + 10
    while not _automation_events(alerts.api, am.FAILURES_NAME, "prefect.automation.action.executed"):
        assert time.monotonic() < deadline, "the automation's action.executed event never came"
        time.sleep(0.5)
    assert len([d for d in alerts.sink.received if "failing" in str(d.body)]) == 1


def test_a_gpu_pool_whose_backlog_stays_high_notifies_and_one_that_comes_down_does_not(alerts):
    """watch-gpu-backlog (in-process) measures the pool: 2 runs due against a threshold of 1 is high; a second
    pool measured high then normal within the window stays quiet."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from flows.hub_work import process_file, watch_gpu_backlog
    from gpuops.stack import deploy_here

    calm = f"test-gpu-calm-{uuid.uuid4().hex[:6]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=calm, type="process"))
    deploy_here(process_file, "backlog-probe", alerts.pool)
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("process-file/backlog-probe")
        for i in range(2):
            client.create_flow_run_from_deployment(deployment.id, parameters={"task_id": f"b{i}",
                                                                              "input_uri": "gs://u/b.mp4"})
    alerts.sink.reset()

    measured = watch_gpu_backlog(work_pools=[alerts.pool, calm], threshold=1)
    assert measured == {alerts.pool: 2, calm: 0}
    _post_event(alerts.api, "gpuops.work-pool.backlog.high", calm)  # high, then normal within the window
    _post_event(alerts.api, "gpuops.work-pool.backlog.normal", calm)

    note = alerts.sink.wait_for(lambda d: "backlog" in str(d.body), timeout_s=BACKLOG_S + 30)
    assert note is not None, f"no backlog alert within {BACKLOG_S + 30} s"
    assert note.body["body"].startswith(f"GPU work pool {alerts.pool}: 2 runs waiting (over 1)")
    time.sleep(1)
    assert not [d for d in alerts.sink.received if calm in str(d.body)]


def _post_event(api: str, name: str, pool: str) -> None:
    from datetime import datetime, timezone

    event = {"id": str(uuid.uuid4()), "occurred": datetime.now(timezone.utc).isoformat(), "event": name,
             "resource": {"prefect.resource.id": f"gpuops.work-pool.{pool}", "prefect.resource.name": pool},
             "payload": {"backlog": 5, "threshold": 1}}
    assert httpx.post(f"{api}/events", json=[event], timeout=10).status_code == 204
