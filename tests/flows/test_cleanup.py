"""The cleanup flow on a real Prefect server and the Cloud Run emulator: dry run, approvals by name, timeout."""
import threading
import time

import httpx
import pytest
from approvals import answer, paused_run
from prefect.client.orchestration import get_client
from flows.cleanup import cleanup
from flows.create_jobs import create_jobs
from gpuops import cloudrun

P, R, S = "nca-toolkit-438301", "us-central1", "no-code-architects-toolkit"
LOC = cloudrun.location(P, R)
SVC = cloudrun.service_name(P, R, S)
CPU_JOB, GPU_JOB, GPU_SVC = f"{LOC}/jobs/{S}-cpu-job", f"{LOC}/jobs/{S}-gpu-job", f"{LOC}/services/{S}-gpu"


@pytest.fixture
def emu(prefect_api, seeded_cloud_run):
    """The migration's resources, and a second revision of the source service: the first now serves 0%."""
    create_jobs(P, R, S)
    cr = cloudrun.connect()
    service = cloudrun.get_service(cr, SVC)
    spec = cloudrun.service_spec(service)
    spec["template"]["labels"] = {"release": "two"}
    cloudrun.update_service(cr, SVC, spec)
    seeded_cloud_run.old_revision = service["latestReadyRevision"]
    seeded_cloud_run.new_revision = cloudrun.get_service(cr, SVC)["latestReadyRevision"]
    seeded_cloud_run.clear_requests()
    return seeded_cloud_run


def writes(emu):
    return [(r.method, r.path) for r in emu.requests() if r.method in ("POST", "PATCH", "DELETE")]


def start(**kwargs):
    """The flow with execute=True in a thread (a paused run blocks its caller); box holds its result."""
    box = {}
    thread = threading.Thread(target=lambda: box.update(result=cleanup(P, R, S, execute=True, **kwargs)))
    thread.start()
    return thread, box


def finish(thread, box) -> dict:
    thread.join(60)
    assert not thread.is_alive()
    return box["result"]


def test_dry_run_lists_the_jobs_gpu_service_and_idle_revision_and_changes_nothing(emu):
    result = cleanup(P, R, S)
    assert result["dry_run"] and result["approval"] is None and "emulator" in result["api"]
    assert sorted(i["name"] for i in result["items"] if i["deletable"]) == sorted(
        [CPU_JOB, GPU_JOB, GPU_SVC, emu.old_revision])
    latest = next(i for i in result["items"] if i["name"] == emu.new_revision)
    assert not latest["deletable"] and latest["why_not"]
    assert writes(emu) == []


def test_a_refusal_deletes_nothing_and_the_form_shows_the_proposed_list(emu, prefect_api):
    thread, box = start()
    run = paused_run("cleanup")
    answer(prefect_api, "cleanup", {"approve": False, "resources": []})
    result = finish(thread, box)
    with get_client(sync_client=True) as client:
        keyset = run.state.state_details.run_input_keyset
        assert CPU_JOB in client.read_flow_run_input(run.id, keyset["description"])
    assert result["approval"]["approve"] is False and result["deleted"] == []
    assert writes(emu) == []


def test_approval_naming_only_the_cpu_job_deletes_only_that(emu, prefect_api):
    thread, box = start()
    answer(prefect_api, "cleanup", {"approve": True, "resources": [CPU_JOB]})
    result = finish(thread, box)
    assert [d["name"] for d in result["deleted"]] == [CPU_JOB] and result["refused"] == []
    assert [m for m, _ in writes(emu)] == ["DELETE"] and CPU_JOB.split("/", 2)[2] in writes(emu)[0][1]
    assert GPU_JOB in result["remaining"] and CPU_JOB not in result["remaining"]


def test_a_serving_revision_is_refused_even_when_named_and_a_rerun_changes_nothing(emu, prefect_api):
    thread, box = start()
    answer(prefect_api, "cleanup", {"approve": True,
                         "resources": [emu.new_revision, emu.old_revision, CPU_JOB, GPU_JOB, GPU_SVC]})
    result = finish(thread, box)
    assert sorted(d["name"] for d in result["deleted"]) == sorted([emu.old_revision, CPU_JOB, GPU_JOB, GPU_SVC])
    assert [r["name"] for r in result["refused"]] == [emu.new_revision]
    assert emu.new_revision.rsplit("/", 1)[-1] not in " ".join(p for _, p in writes(emu))

    emu.clear_requests()
    again = cleanup(P, R, S, execute=True)  # nothing deletable left: no pause, no write
    assert again["approval"] is None and again["deleted"] == [] and writes(emu) == []


def test_no_answer_before_the_timeout_deletes_nothing_and_the_run_completes(emu):
    started = time.monotonic()
    result = cleanup(P, R, S, execute=True, approval_timeout_s=2)
    assert result["approval"]["timed_out"] and result["deleted"] == []
    assert time.monotonic() - started < 20
    assert writes(emu) == []
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(result["approval"]["flow_run_id"]).state.is_completed()


def test_an_approved_gpu_canary_tag_is_removed_with_the_percentages_kept(emu, prefect_api):
    cr = cloudrun.connect()
    old, new = (r.rsplit("/", 1)[-1] for r in (emu.old_revision, emu.new_revision))
    split = [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": new, "percent": 100},
             {"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": old, "percent": 0, "tag": "gpu-canary"}]
    cloudrun.update_traffic(cr, SVC, lambda _service: cloudrun.TrafficChange(split))
    thread, box = start()
    answer(prefect_api, "cleanup", {"approve": True, "resources": ["tag:gpu-canary", emu.old_revision]})
    result = finish(thread, box)
    assert [d["name"] for d in result["deleted"]] == ["tag:gpu-canary"]
    assert "tag:gpu-canary" in result["refused"][0]["why"]  # the revision was tagged when the list was made
    assert [(t["revision"], t.get("percent", 0)) for t in cloudrun.get_service(cr, SVC)["traffic"]] == [(new, 100)]
    assert emu.old_revision in [i["name"] for i in cleanup(P, R, S)["items"] if i["deletable"]]
