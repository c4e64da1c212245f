"""The race fault: another writer's deploy lands between gpuops' read and its write.
Driven by the real run_v2 clients and by httpx over real HTTP."""

from __future__ import annotations

import httpx
import pytest
from google.api_core import exceptions as gexc
from google.cloud import run_v2

from gpuops.emulator import ApiError

PARENT = "projects/demo/locations/us-central1"
WEB = f"{PARENT}/services/web"
LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
DEPLOY = {"template": {"containers": [{"image": "img:2"}]},
          "traffic": [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}]}


@pytest.fixture
def emu(fresh_cloudrun_emulator):
    return fresh_cloudrun_emulator


@pytest.fixture
def run(cloudrun_clients, fresh_cloudrun_emulator):
    return cloudrun_clients


def pinned_service(run) -> run_v2.Service:
    """Service web at img:1 with its traffic pinned to its first revision, as gpuops reads it."""
    body = run_v2.Service(template=run_v2.RevisionTemplate(containers=[run_v2.Container(image="img:1")]))
    svc = run.services.create_service(parent=PARENT, service_id="web", service=body).result(timeout=5)
    first = svc.latest_created_revision.rsplit("/", 1)[-1]
    svc.traffic = [run_v2.TrafficTarget(type_=REVISION, revision=first, percent=100)]
    return run.services.update_service(service=svc).result(timeout=5)


def test_a_write_with_the_etag_read_before_the_race_is_aborted_and_the_race_stays(emu, run):
    read = pinned_service(run)
    emu.add_fault("PATCH", "/services/web$", mode="race", race=DEPLOY)
    read.labels["team"] = "gpu"
    with pytest.raises(gexc.Conflict) as err:
        run.services.update_service(service=read).result(timeout=5)
    assert err.value.response.json()["error"]["status"] == "ABORTED"
    now = run.services.get_service(name=WEB)
    assert now.template.containers[0].image == "img:2" and now.generation == read.generation + 1
    assert now.etag != read.etag and "team" not in now.labels
    assert now.latest_created_revision != read.latest_created_revision
    assert [(t.type_, t.percent) for t in now.traffic] == [(LATEST, 100)]
    assert len(list(run.revisions.list_revisions(parent=WEB))) == 2
    assert [(r.status, r.fault) for r in emu.requests("PATCH")] == [(200, None), (409, "race")]


def test_a_write_without_etag_silently_overwrites_the_race(emu, run):
    read = pinned_service(run)
    emu.add_fault("PATCH", "/services/web$", mode="race", race=DEPLOY)
    read.etag = ""
    written = run.services.update_service(service=read).result(timeout=5)
    assert written.generation == read.generation + 2  # the race, then this write
    assert written.template.containers[0].image == "img:1"  # the other deploy is lost, as on Google
    assert [t.revision for t in written.traffic] == [read.traffic[0].revision]


def test_a_race_over_http_on_a_job(emu, run):
    job = run_v2.Job(template=run_v2.ExecutionTemplate(template=run_v2.TaskTemplate(
        containers=[run_v2.Container(image="job:1")])))
    read = run.jobs.create_job(parent=PARENT, job_id="batch", job=job).result(timeout=5)
    spec = {"method": "PATCH", "path": "/jobs/batch$", "mode": "race", "race": {"template": {"taskCount": 4}}}
    answer = httpx.post(f"{emu.url}/emulator/v1/faults", json=spec, timeout=5, trust_env=False)
    assert answer.json()["fault"]["race"] == spec["race"]
    read.template.parallelism = 2
    with pytest.raises(gexc.Conflict):
        run.jobs.update_job(job=read).result(timeout=5)
    now = run.jobs.get_job(name=read.name)
    assert (now.template.task_count, now.template.parallelism, now.generation) == (4, 0, 2)


def test_a_race_on_a_create_makes_the_create_collide(emu, run):
    emu.add_fault("POST", "/services$", mode="race", race={"template": {"containers": [{"image": "theirs"}]}})
    body = run_v2.Service(template=run_v2.RevisionTemplate(containers=[run_v2.Container(image="mine")]))
    with pytest.raises(gexc.Conflict, match="already exists"):
        run.services.create_service(parent=PARENT, service_id="web", service=body)
    assert run.services.get_service(name=WEB).template.containers[0].image == "theirs"


def test_a_race_that_cannot_apply_says_so(emu):
    with pytest.raises(ApiError, match="required with mode 'race'"):
        emu.add_fault("PATCH", mode="race")
    with pytest.raises(ApiError, match="not a partial v2 Service or Job"):
        emu.add_fault("PATCH", mode="race", race={"templat": {}})
    emu.add_fault("GET", "/operations$", mode="race", race={"labels": {"a": "b"}})
    answer = httpx.get(f"{emu.url}/v2/{PARENT}/operations", timeout=5, trust_env=False)
    assert answer.status_code == 400 and "race fault: " in answer.json()["error"]["message"]
    assert "names no service or job" in answer.json()["error"]["message"]
