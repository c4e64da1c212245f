"""The Cloud Run adapter over real HTTP against the emulator: retries, guards, bounds."""
import pytest
from google.api_core import exceptions as gexc

from gpuops import cloudrun

LOC = "projects/demo-project/locations/us-central1"
SERVICE = {"template": {"containers": [{"image": "img:1"}]}}
JOB = {"template": {"template": {"containers": [{"image": "job:1", "args": ["--once"]}]}}}


@pytest.fixture
def emu(fresh_cloudrun_emulator):
    return fresh_cloudrun_emulator


@pytest.fixture
def cr(emu, monkeypatch):
    monkeypatch.setenv(cloudrun.ENDPOINT_ENV, emu.url)
    return cloudrun.connect()


def test_environment_endpoint_wins_and_is_labelled_an_emulator(cr, emu):
    assert cr.endpoint == emu.url and cr.is_emulator


def test_get_of_a_missing_service_is_none_not_an_error(cr):
    assert cloudrun.get_service(cr, f"{LOC}/services/nothing") is None


def test_a_503_then_success_on_a_read_is_retried(cr, emu):
    name = f"{LOC}/services/web"
    cloudrun.create_service(cr, name, SERVICE)
    emu.clear_requests()
    emu.add_fault(method="GET", path="/services/web$", status=503, times=1)
    assert cloudrun.get_service(cr, name)["name"] == name
    assert [r.status for r in emu.requests(method="GET")] == [503, 200]


def test_a_400_is_not_retried(cr, emu):
    emu.add_fault(method="GET", path="/services/web$", status=400, times=1)
    with pytest.raises(gexc.BadRequest):
        cloudrun.get_service(cr, f"{LOC}/services/web")
    assert len(emu.requests(method="GET")) == 1


def test_a_job_run_retried_after_a_lost_response_starts_one_execution(cr, emu):
    name = f"{LOC}/jobs/batch"
    cloudrun.create_job(cr, name, JOB)
    # The run is applied, then its answer is lost (503): a blind retry would start a second one.
    emu.add_fault(method="POST", path=":run$", status=503, times=1, mode="after")
    execution = cloudrun.run_job(cr, name)
    executions = cloudrun.list_executions(cr, name)
    assert [e["name"] for e in executions] == [execution["name"]]
    assert len(emu.requests(method="POST", path=":run$")) == 1


def test_a_job_run_lost_before_reaching_the_server_is_sent_again(cr, emu):
    name = f"{LOC}/jobs/batch"
    cloudrun.create_job(cr, name, JOB)
    emu.add_fault(method="POST", path=":run$", status=503, times=1, mode="before")
    cloudrun.run_job(cr, name, {"containerOverrides": [{"args": ["--probe"]}]})
    [execution] = cloudrun.list_executions(cr, name)
    assert len(emu.requests(method="POST", path=":run$")) == 2
    finished = cloudrun.wait_execution(cr, execution["name"], timeout_s=5, poll_s=0.05)
    assert finished.get("succeededCount") == 1


def test_a_create_whose_answer_was_lost_is_read_back_not_doubled(cr, emu):
    name = f"{LOC}/services/web"
    emu.add_fault(method="POST", path="/services$", status=503, times=1, mode="after")
    created = cloudrun.create_service(cr, name, SERVICE)
    assert created["name"] == name
    assert len(emu.requests(method="POST", path="/services$")) == 1
    assert len(cloudrun.list_revisions(cr, name)) == 1


def test_long_running_operations_are_polled_to_the_end(cr, emu):
    emu.operation_polls_before_done = 1
    created = cloudrun.create_job(cr, f"{LOC}/jobs/polled", JOB)
    assert created["name"].endswith("/jobs/polled")
    assert emu.requests(method="GET", path="/operations/")


def test_an_invalid_body_fails_before_any_call(cr, emu):
    with pytest.raises(cloudrun.BodyError, match="maxRetries|unknownField|Service"):
        cloudrun.create_service(cr, f"{LOC}/services/web", {"template": {"unknownField": 1}})
    assert emu.requests() == []


def test_update_then_delete_are_idempotent(cr):
    name = f"{LOC}/services/web"
    cloudrun.create_service(cr, name, SERVICE)
    updated = cloudrun.update_service(cr, name, {"template": {"containers": [{"image": "img:2"}]}})
    assert len(cloudrun.list_revisions(cr, name)) == 2 and updated["name"] == name
    assert cloudrun.delete_service(cr, name) is True
    assert cloudrun.delete_service(cr, name) is False
