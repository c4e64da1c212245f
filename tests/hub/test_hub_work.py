"""process-file on a real Prefect server and moto: retries with growing waits, the dead letter, its event and
notification, processingTime. The flow runs in-process (calling it); the retries are the server's (its
RetryFailedFlows rule turns each failed attempt into AwaitingRetry), so they behave the same when deployed."""
from __future__ import annotations

import json
import sys
import time
import uuid

import httpx
import pytest

from flows.hub_work import DEAD_LETTERED, process_file
from gpuops.errors import BadInput



@pytest.fixture(scope="module")
def webhook(prefect_api):
    """The runbook's n8n webhook stand-in, and a Prefect custom-webhook block pointed at it."""
    from gpuops.emulator.webhook_sink import WebhookSink

    with WebhookSink() as sink:
        sink.block = sink.save_block("hub-work-alerts")
        yield sink


@pytest.fixture
def work(prefect_api, status_bucket, webhook, monkeypatch):
    from gpuops.status_store import StatusStore

    monkeypatch.setenv("GPUOPS_WORK_RETRY_BASE_S", "0")  # retries at once (a test below sets 1 s)
    webhook.reset()
    return type("Work", (), {"store": StatusStore.from_env(), "api": prefect_api, "webhook": webhook,
                             "task_id": f"task-{uuid.uuid4().hex[:12]}"})


def _run(state):
    """The flow run, its states in order and its log lines (sent to the server first)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # the lines still queued in this process go to the server first
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
        history = sorted(client.read_flow_run_states(run.id), key=lambda s: s.timestamp)
        logs = [log.message for log in client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])), limit=200)]
    return run, history, logs


def _events(api: str, name: str, resource_id: str, at_least: int = 1, timeout_s: float = 20) -> list[dict]:
    """Events read back through the events API (`POST /api/events/filter`), waiting for them to land."""
    body = {"filter": {"event": {"name": [name]}, "resource": {"id": [resource_id]}}, "limit": 50}
    deadline = time.monotonic() + timeout_s
    while True:
        answer = httpx.post(f"{api}/events/filter", json=body, timeout=10)
        answer.raise_for_status()
        events = answer.json()["events"]
        if len(events) >= at_least or time.monotonic() > deadline:
            return events
        time.sleep(0.2)


def _dlq_keys(store) -> list[str]:
    listed = store._client.list_objects_v2(Bucket=store.bucket, Prefix="dlq/")
    return [o["Key"] for o in listed.get("Contents", [])]


def test_a_command_failing_every_attempt_is_retried_5_times_then_dead_lettered(work):
    planted = f"secret-{uuid.uuid4().hex}"
    params = {"language": "ja", "api_token": planted}
    failing = [sys.executable, "-c", "import sys; print('decoder: unsupported codec', flush=True); sys.exit(3)"]

    state = process_file(task_id=work.task_id, input_uri="gs://uploads/clip.mp4", params=params, command=failing,
                         notification_block=work.webhook.block, return_state=True)

    assert state.is_failed()
    run, history, logs = _run(state)
    assert run.run_count == 6  # the first attempt and 5 retries
    names = [s.name for s in history]
    assert names.count("AwaitingRetry") == 5 and names.count("Running") == 6 and names[-1] == "Failed"
    # Exactly one dead letter, holding the original request, the error and the run.
    assert _dlq_keys(work.store) == [f"dlq/{work.task_id}.json"]
    doc = work.store.read_json(f"dlq/{work.task_id}.json")
    assert doc["request"] == {"task_id": work.task_id, "input_uri": "gs://uploads/clip.mp4", "params": params}
    assert doc["flowRunId"] == str(run.id) and doc["attempts"] == 6
    assert "exited 3" in doc["error"] and "decoder: unsupported codec" in doc["error"]
    # One event, on the task's resource; one notification through the block.
    (event,) = _events(work.api, DEAD_LETTERED, f"gpuops.task.{work.task_id}")
    assert event["payload"]["dead_letter"] == f"s3://{work.store.bucket}/dlq/{work.task_id}.json"
    assert event["related"][0]["prefect.resource.id"] == f"prefect.flow-run.{run.id}"
    note = work.webhook.wait_for(lambda d: work.task_id in json.dumps(d.body), timeout_s=10)
    assert note is not None and note.body["subject"] == f"gpuops task {work.task_id} dead-lettered"
    assert len([d for d in work.webhook.received if work.task_id in json.dumps(d.body)]) == 1
    # The command's output is in the run log, with the runbook's processingTime line per attempt; the
    # params' names are logged, never their values.
    assert logs.count("decoder: unsupported codec") == 6  # streamed as printed, once per attempt
    assert sum(m.startswith("processingTime=") for m in logs) == 6
    assert any("params: api_token, language" in m for m in logs)
    assert not [m for m in logs if planted in m] and planted not in json.dumps(event) + json.dumps(note.body)


def test_a_second_dead_letter_for_the_same_task_never_overwrites_the_first(work):
    from gpuops import dead_letter

    first = dead_letter.record(work.task_id, "gs://u/a.wav", {"n": 1}, "first error", "run-1", 6)
    assert dead_letter.write(work.store, first) is True
    again = dead_letter.record(work.task_id, "gs://u/a.wav", {"n": 1}, "second error", "run-2", 6)
    assert dead_letter.write(work.store, again) is False
    assert dead_letter.read(work.store, work.task_id) == first
    with pytest.raises(BadInput, match="task_id"):
        dead_letter.key("../index")  # a task id never names a key outside dlq/


def test_a_dead_letter_the_bucket_refuses_is_still_announced(work, monkeypatch):
    """One attempt (retries=0) and no bucket configured: the event and the notification say where it is not."""
    monkeypatch.delenv("GPUOPS_STATUS_BUCKET")

    state = process_file.with_options(retries=0)(task_id=work.task_id, input_uri="gs://uploads/x.wav",
                                                 command=["python", "-c", "raise SystemExit(2)"],
                                                 notification_block=work.webhook.block, return_state=True)

    assert state.is_failed()
    (event,) = _events(work.api, DEAD_LETTERED, f"gpuops.task.{work.task_id}")
    assert event["payload"]["dead_letter"].startswith("nowhere: the dead letter could not be written (BadInput")
    note = work.webhook.wait_for(lambda d: work.task_id in json.dumps(d.body), timeout_s=10)
    assert note is not None and "GPUOPS_STATUS_BUCKET is not set" in note.body["body"]
    assert _dlq_keys(work.store) == []


def _waits(history) -> list[float]:
    """Seconds between each AwaitingRetry and the time its retry was scheduled for."""
    return [(s.state_details.scheduled_time - s.timestamp).total_seconds() for s in history if s.name == "AwaitingRetry"]


def test_a_command_failing_twice_then_succeeding_completes_after_growing_waits_with_no_dead_letter(
        work, tmp_path, monkeypatch):
    monkeypatch.setenv("GPUOPS_WORK_RETRY_BASE_S", "1")  # waits 1 s, then 2 s
    counter = tmp_path / "attempts"
    script = ("import pathlib, sys; p = pathlib.Path(sys.argv[1]); n = int(p.read_text()) + 1 if p.exists() else 1; "
              "p.write_text(str(n)); print(f'attempt {n} on {sys.argv[2]}'); sys.exit(0 if n >= 3 else 1)")

    state = process_file(task_id=work.task_id, input_uri="gs://uploads/song.wav",
                         command=["python", "-c", script, str(counter)], notification_block=work.webhook.block,
                         return_state=True)

    assert state.is_completed()
    result = state.result()
    assert result["attempts"] == 3 and result["processingTime"] > 0 and counter.read_text() == "3"
    run, history, logs = _run(state)
    assert run.run_count == 3 and _waits(history) == pytest.approx([1, 2], abs=0.1)
    assert "attempt 3 on gs://uploads/song.wav" in logs
    assert _dlq_keys(work.store) == []
    assert _events(work.api, DEAD_LETTERED, f"gpuops.task.{work.task_id}", timeout_s=1) == []
    assert work.webhook.received == []


def test_processing_time_is_measured_and_recorded_in_the_result_the_log_and_an_artifact(work, artifact_text):
    sleeper = ["python", "-c", "import sys, time; time.sleep(0.6); print('done', sys.argv[1])"]

    state = process_file(task_id=work.task_id, input_uri="gs://uploads/long.mov", command=sleeper, return_state=True)

    result = state.result()
    assert 0.6 <= result["processingTime"] < 10
    _, _, logs = _run(state)
    (line,) = [m for m in logs if m.startswith("processingTime=")]
    assert float(line.split()[0].split("=")[1]) == pytest.approx(result["processingTime"], abs=0.001)
    assert f"{result['processingTime']:.3f}" in artifact_text(f"processing-time-{work.task_id}")


def test_the_default_command_is_the_sample_workload_in_job_mode_on_the_input_uri(work):
    state = process_file(task_id=work.task_id, input_uri="gs://uploads/clip.mp4", return_state=True)

    assert state.is_completed()
    _, _, logs = _run(state)
    (printed,) = [json.loads(m) for m in logs if m.startswith("{")]
    assert printed["prompt"] == "gs://uploads/clip.mp4" and printed["steps"] == 1000



def test_prefect_yaml_deploys_process_file_on_the_gpu_gke_and_cpu_pools_and_the_backlog_watch_every_minute():
    from pathlib import Path

    import yaml

    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text())
    found = {d["name"]: d for d in spec["deployments"]}
    pools = {name: found[name]["work_pool"]["name"] for name in ("gpu-work", "gpu-work-gke", "cpu-work")}
    assert pools == {"gpu-work": "gpuops-cloud-run-gpu", "gpu-work-gke": "gpuops-kubernetes-gpu",
                     "cpu-work": "gpuops-process"}
    assert {found[name]["entrypoint"] for name in pools} == {"flows/hub_work.py:process_file"}
    assert all(found[name].get("description") for name in pools)
    assert found["watch-gpu-backlog"]["schedules"] == [{"interval": 60, "active": True}]


def test_a_signed_urls_credential_never_reaches_the_log_artifact_event_or_notification(work, artifact_text):
    signature = f"sig{uuid.uuid4().hex}"
    signed = f"https://storage.googleapis.com/uploads/clip.mp4?X-Goog-Signature={signature}&X-Goog-Expires=900"
    echo = ["python", "-c", "import sys; print('got an input'); sys.exit(4)"]

    state = process_file.with_options(retries=0)(task_id=work.task_id, input_uri=signed, command=echo,
                                                 notification_block=work.webhook.block, return_state=True)

    assert state.is_failed()
    _, _, logs = _run(state)
    shown = "https://storage.googleapis.com/uploads/clip.mp4?[query withheld]"
    assert any(shown in m for m in logs) and not [m for m in logs if signature in m]
    assert shown in artifact_text(f"processing-time-{work.task_id}")
    assert signature not in artifact_text(f"processing-time-{work.task_id}")
    (event,) = _events(work.api, DEAD_LETTERED, f"gpuops.task.{work.task_id}")
    assert event["payload"]["input_uri"] == shown
    note = work.webhook.wait_for(lambda d: work.task_id in json.dumps(d.body), timeout_s=10)
    assert note is not None and shown in note.body["body"] and signature not in json.dumps(note.body)
    # The dead letter keeps the request as it came, to be replayed.
    assert work.store.read_json(f"dlq/{work.task_id}.json")["request"]["input_uri"] == signed
