"""The Cloud Run emulator, driven by the real google-cloud-run v2 REST clients over HTTP."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
import re
from pathlib import Path

import pytest
import requests
from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.api_core.future import polling
from google.cloud import run_v2

from gpuops.emulator import EMULATOR_LABEL, CloudRunState, RunsUntilCancelled
from gpuops.emulator.cloudrun_state import emulated_uri

PARENT = "projects/demo/locations/us-central1"
LATEST = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
REVISION = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
FAST_POLL = polling.DEFAULT_POLLING.with_delay(initial=0.01, maximum=0.02).with_timeout(5)


@pytest.fixture
def emu(fresh_cloudrun_emulator):
    return fresh_cloudrun_emulator


@pytest.fixture
def run(cloudrun_clients, fresh_cloudrun_emulator):
    """The run_v2 clients, against an emulator emptied for this test."""
    return cloudrun_clients


def service_body(image: str = "img:1", **template) -> run_v2.Service:
    return run_v2.Service(
        template=run_v2.RevisionTemplate(containers=[run_v2.Container(image=image)], **template)
    )


def create_service(run, service_id: str = "web", image: str = "img:1", **template) -> run_v2.Service:
    op = run.services.create_service(parent=PARENT, service_id=service_id, service=service_body(image, **template))
    return op.result(timeout=5)


def create_job(run, job_id: str = "batch") -> run_v2.Job:
    container = run_v2.Container(name="main", image="job:1", args=["--a"], env=[run_v2.EnvVar(name="K", value="v")])
    job = run_v2.Job(template=run_v2.ExecutionTemplate(template=run_v2.TaskTemplate(containers=[container])))
    return run.jobs.create_job(parent=PARENT, job_id=job_id, job=job).result(timeout=5)


def short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


class ExitsWith:
    def __init__(self, code: int):
        self.code = code

    def start(self, execution, tasks, report):
        for task in tasks:
            report(task.name, self.code)

    def cancel(self, execution_name):
        return None


# ---------------------------------------------------------------- label


def test_emulator_is_labelled_everywhere(emu):
    for path in ("/", "/emulator/v1/info"):
        resp = requests.get(emu.url + path, timeout=5)
        assert resp.json()["name"] == EMULATOR_LABEL and "not Google" in EMULATOR_LABEL
        assert resp.headers["X-Gpuops-Emulator"] == "cloud-run"
    missing = requests.get(f"{emu.url}/v2/{PARENT}/services/nope", timeout=5)
    assert missing.status_code == 404 and missing.headers["X-Gpuops-Emulator"] == "cloud-run"
    assert missing.json()["error"]["status"] == "NOT_FOUND"


# ---------------------------------------------------------------- services and revisions


def test_create_service_sets_server_fields_and_first_revision(emu, run):
    svc = create_service(run)
    assert svc.name == f"{PARENT}/services/web"
    assert re.fullmatch(r"web-00001-[a-z]{3}", short(svc.latest_created_revision))
    assert svc.latest_ready_revision == svc.latest_created_revision
    assert svc.uri.startswith(emu.url) and svc.uid and svc.etag and svc.creator
    assert svc.generation == svc.observed_generation == 1
    assert svc.terminal_condition.type_ == "Ready"
    assert svc.terminal_condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED
    assert [(t.type_, t.percent) for t in svc.traffic] == [(LATEST, 100)]
    assert [(t.type_, t.percent) for t in svc.traffic_statuses] == [(LATEST, 100)]
    assert run.services.get_service(name=svc.name) == svc
    assert [s.name for s in run.services.list_services(parent=PARENT)] == [svc.name]
    with pytest.raises(gexc.Conflict) as err:  # REST maps by HTTP code: 409 is Conflict
        create_service(run)
    assert err.value.response.json()["error"]["status"] == "ALREADY_EXISTS"


def test_revision_copies_the_template(run):
    svc = create_service(
        run,
        execution_environment=run_v2.ExecutionEnvironment.EXECUTION_ENVIRONMENT_GEN2,
        service_account="sa@demo.iam.gserviceaccount.com",
        max_instance_request_concurrency=4,
        node_selector=run_v2.NodeSelector(accelerator="nvidia-l4"),
        gpu_zonal_redundancy_disabled=True,
        scaling=run_v2.RevisionScaling(max_instance_count=3),
        annotations={"gpuops.dev/canary": "step-1"},
    )
    rev = run.revisions.get_revision(name=svc.latest_created_revision)
    assert rev.service == "web" and rev.generation == 1
    assert rev.containers[0].image == "img:1"
    assert rev.execution_environment == run_v2.ExecutionEnvironment.EXECUTION_ENVIRONMENT_GEN2
    assert rev.service_account == "sa@demo.iam.gserviceaccount.com"
    assert rev.max_instance_request_concurrency == 4
    assert rev.node_selector.accelerator == "nvidia-l4" and rev.gpu_zonal_redundancy_disabled
    assert rev.scaling.max_instance_count == 3
    assert rev.annotations["gpuops.dev/canary"] == "step-1"
    assert any(c.type_ == "Ready" and c.state == run_v2.Condition.State.CONDITION_SUCCEEDED for c in rev.conditions)


def test_new_revision_only_when_the_template_changes(run):
    svc = create_service(run)
    first = svc.latest_created_revision
    svc.labels["team"] = "gpu"
    svc.annotations["gpuops.dev/state"] = "x"
    same = run.services.update_service(service=svc).result(timeout=5)
    assert same.latest_created_revision == first and same.generation == 2
    assert same.labels["team"] == "gpu" and same.annotations["gpuops.dev/state"] == "x"

    same.template.containers[0].image = "img:2"
    changed = run.services.update_service(service=same).result(timeout=5)
    assert re.fullmatch(r"web-00002-[a-z]{3}", short(changed.latest_created_revision))

    changed.template.revision = "web-gpu"
    named = run.services.update_service(service=changed).result(timeout=5)
    assert short(named.latest_created_revision) == "web-gpu"
    named.template.containers[0].image = "img:3"
    with pytest.raises(gexc.Conflict):
        run.services.update_service(service=named).result(timeout=5)
    revisions = [short(r.name) for r in run.revisions.list_revisions(parent=svc.name)]
    assert len(revisions) == 3 and revisions[0] == "web-gpu"


def test_update_allow_missing_creates_and_without_it_is_404(run):
    body = service_body()
    body.name = f"{PARENT}/services/late"
    with pytest.raises(gexc.NotFound):
        run.services.update_service(service=body).result(timeout=5)
    req = run_v2.UpdateServiceRequest(service=body, allow_missing=True)
    created = run.services.update_service(request=req).result(timeout=5)
    assert created.generation == 1 and short(created.latest_created_revision).startswith("late-00001-")


def test_traffic_split_by_revision_and_tag(emu, run):
    svc = create_service(run)
    stable = short(svc.latest_created_revision)
    svc.template.containers[0].image = "img:gpu"
    svc.traffic = [
        run_v2.TrafficTarget(revision=stable, percent=80, tag="stable"),
        run_v2.TrafficTarget(type_=LATEST, percent=20, tag="canary"),
    ]
    out = run.services.update_service(service=svc).result(timeout=5)
    statuses = {t.tag: t for t in out.traffic_statuses}
    assert statuses["stable"].type_ == REVISION and statuses["stable"].percent == 80
    assert statuses["canary"].type_ == LATEST and statuses["canary"].percent == 20
    assert statuses["canary"].uri == f"{emu.url}/emulated/demo/us-central1/canary---web"
    assert out.latest_created_revision != svc.latest_created_revision

    out.traffic = [run_v2.TrafficTarget(revision=short(out.latest_created_revision), percent=100),
                   run_v2.TrafficTarget(revision=stable, percent=0, tag="old")]
    moved = run.services.update_service(service=out).result(timeout=5)
    assert [(t.revision, t.percent, t.tag) for t in moved.traffic_statuses] == [
        (short(out.latest_created_revision), 100, ""), (stable, 0, "old")]


@pytest.mark.parametrize(
    "targets, needle",
    [
        ([run_v2.TrafficTarget(type_=LATEST, percent=50), run_v2.TrafficTarget(type_=LATEST, percent=40, tag="a")], "100"),
        ([run_v2.TrafficTarget(revision="web-99999-zzz", percent=100)], "web-99999-zzz"),
        ([run_v2.TrafficTarget(type_=LATEST, percent=50, tag="t"), run_v2.TrafficTarget(type_=LATEST, percent=50, tag="t")], "tag"),
    ],
)
def test_bad_traffic_is_rejected_and_changes_nothing(run, targets, needle):
    svc = create_service(run)
    svc.traffic = targets
    with pytest.raises(gexc.BadRequest) as err:
        run.services.update_service(service=svc).result(timeout=5)
    assert needle in err.value.message
    assert err.value.response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert run.services.get_service(name=svc.name).generation == 1


def test_deleting_a_serving_revision_is_refused(run):
    svc = create_service(run)
    old = svc.latest_created_revision
    svc.template.containers[0].image = "img:2"
    svc = run.services.update_service(service=svc).result(timeout=5)
    with pytest.raises(gexc.BadRequest) as err:
        run.revisions.delete_revision(name=svc.latest_created_revision).result(timeout=5)
    assert err.value.response.json()["error"]["status"] == "FAILED_PRECONDITION"
    deleted = run.revisions.delete_revision(name=old).result(timeout=5)
    assert deleted.name == old
    with pytest.raises(gexc.NotFound):
        run.revisions.get_revision(name=old)


def test_delete_service_removes_its_revisions(run):
    svc = create_service(run)
    assert run.services.delete_service(name=svc.name).result(timeout=5).name == svc.name
    with pytest.raises(gexc.NotFound):
        run.services.get_service(name=svc.name, retry=None)
    assert list(run.revisions.list_revisions(parent=svc.name)) == []


def test_stale_etag_is_aborted(run):
    svc = create_service(run)
    fresh = run.services.update_service(service=svc).result(timeout=5)
    assert fresh.etag != svc.etag
    with pytest.raises(gexc.Conflict) as err:
        run.services.update_service(service=svc).result(timeout=5)
    assert err.value.response.json()["error"]["status"] == "ABORTED"


def test_list_pages_through_every_service(run):
    for index in range(3):
        create_service(run, service_id=f"svc-{index}")
    pager = run.services.list_services(request=run_v2.ListServicesRequest(parent=PARENT, page_size=2))
    assert [short(s.name) for s in pager] == ["svc-0", "svc-1", "svc-2"]
    everywhere = run.services.list_services(parent="projects/demo/locations/-")
    assert len(list(everywhere)) == 3


# ---------------------------------------------------------------- strict parsing


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"template": {"containers": [{"image": "a", "bogus": 1}]}}, 'no field named "bogus"'),
        ({"template": {"maxInstanceRequestConcurrency": "lots", "containers": [{"image": "a"}]}}, "maxInstanceRequestConcurrency"),
        ({"ingress": "INGRESS_TRAFFIC_NOWHERE", "template": {"containers": [{"image": "a"}]}}, "INGRESS_TRAFFIC_NOWHERE"),
        ({"ingress": 77, "template": {"containers": [{"image": "a"}]}}, "77"),
        ({"template": {"containers": [{"image": ["a"]}]}}, "image"),
    ],
)
def test_malformed_body_gets_400_with_the_parser_message(emu, body, needle):
    resp = requests.post(f"{emu.url}/v2/{PARENT}/services", params={"serviceId": "raw"}, json=body, timeout=5)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT" and needle in error["message"]
    assert requests.get(f"{emu.url}/v2/{PARENT}/services/raw", timeout=5).status_code == 404


def test_unknown_query_parameter_and_missing_id_are_rejected(emu):
    body = {"template": {"containers": [{"image": "a"}]}}
    url = f"{emu.url}/v2/{PARENT}/services"
    unknown = requests.post(url, params={"serviceId": "x", "colour": "red"}, json=body, timeout=5)
    assert unknown.status_code == 400 and "colour" in unknown.json()["error"]["message"]
    assert requests.post(url, json=body, timeout=5).status_code == 400
    system_labels = {"labels": {"run.googleapis.com/x": "1"}, **body}
    assert requests.post(url, params={"serviceId": "x"}, json=system_labels, timeout=5).status_code == 400


def test_int_enums_are_answered_as_asked(emu, run):
    create_service(run, execution_environment=run_v2.ExecutionEnvironment.EXECUTION_ENVIRONMENT_GEN2)
    url = f"{emu.url}/v2/{PARENT}/services/web"
    as_names = requests.get(url, timeout=5).json()
    as_ints = requests.get(url, params={"$alt": "json;enum-encoding=int"}, timeout=5).json()
    assert as_names["template"]["executionEnvironment"] == "EXECUTION_ENVIRONMENT_GEN2"
    assert as_ints["template"]["executionEnvironment"] == 2


# ---------------------------------------------------------------- jobs, executions, tasks


def test_job_run_creates_a_succeeded_execution_with_tasks(run):
    job = create_job(run)
    assert job.generation == 1 and job.template.task_count == 1 and job.etag
    op = run.jobs.run_job(name=job.name)
    execution = op.result(timeout=5)
    assert re.fullmatch(r"batch-[a-z0-9]{5}", short(execution.name))
    assert op.metadata.name == execution.name  # Google puts the Execution in metadata too
    assert execution.succeeded_count == 1 and execution.running_count == 0 and not execution.reconciling
    assert execution.completion_time and execution.job == "batch"
    completed = next(c for c in execution.conditions if c.type_ == "Completed")
    assert completed.state == run_v2.Condition.State.CONDITION_SUCCEEDED
    assert run.executions.get_execution(name=execution.name) == execution
    assert [e.name for e in run.executions.list_executions(parent=job.name)] == [execution.name]
    tasks = list(run.tasks.list_tasks(parent=execution.name))
    assert [t.index for t in tasks] == [0] and tasks[0].last_attempt_result.exit_code == 0
    assert run.tasks.get_task(name=tasks[0].name).execution == short(execution.name)
    job = run.jobs.get_job(name=job.name)
    assert job.execution_count == 1 and job.latest_created_execution.name == execution.name
    assert job.latest_created_execution.completion_status == run_v2.ExecutionReference.CompletionStatus.EXECUTION_SUCCEEDED


def test_run_applies_overrides(run):
    job = create_job(run)
    Override = run_v2.RunJobRequest.Overrides
    overrides = Override(
        task_count=3,
        timeout={"seconds": 42},
        container_overrides=[Override.ContainerOverride(
            name="main", args=["--b", "1"], env=[run_v2.EnvVar(name="K", value="w"), run_v2.EnvVar(name="N", value="n")])],
    )
    execution = run.jobs.run_job(request=run_v2.RunJobRequest(name=job.name, overrides=overrides)).result(timeout=5)
    container = execution.template.containers[0]
    assert list(container.args) == ["--b", "1"]
    assert {e.name: e.value for e in container.env} == {"K": "w", "N": "n"}
    assert execution.task_count == 3 and execution.succeeded_count == 3
    assert execution.template.timeout.total_seconds() == 42
    assert len(list(run.tasks.list_tasks(parent=execution.name))) == 3
    cleared = Override(container_overrides=[Override.ContainerOverride(clear_args=True)])
    bare = run.jobs.run_job(request=run_v2.RunJobRequest(name=job.name, overrides=cleared)).result(timeout=5)
    assert list(bare.template.containers[0].args) == []
    assert list(run.jobs.get_job(name=job.name).template.template.containers[0].args) == ["--a"]


def test_cancel_a_running_execution_then_cancel_again_is_a_no_op(emu, run):
    runner = emu.runner = RunsUntilCancelled()
    job = create_job(run)
    op = run.jobs.run_job(name=job.name)
    assert not op.done()
    running = run.executions.get_execution(name=op.metadata.name)
    assert running.reconciling and running.running_count == 1
    cancelled = run.executions.cancel_execution(name=running.name).result(timeout=5)
    assert cancelled.cancelled_count == 1 and cancelled.running_count == 0
    assert any(c.type_ == "Cancelled" for c in cancelled.conditions)
    assert runner.cancelled == [running.name]
    assert op.result(timeout=5).cancelled_count == 1  # the :run operation ends, without an error
    again = run.executions.cancel_execution(name=running.name).result(timeout=5)
    assert again.cancelled_count == 1 and runner.cancelled == [running.name]
    status = run.jobs.get_job(name=job.name).latest_created_execution.completion_status
    assert status == run_v2.ExecutionReference.CompletionStatus.EXECUTION_CANCELLED


def test_a_failing_task_fails_the_run_operation(emu, run):
    emu.runner = ExitsWith(3)
    job = create_job(run)
    op = run.jobs.run_job(name=job.name)
    with pytest.raises(gexc.GoogleAPICallError, match="0/1 tasks were a success"):
        op.result(timeout=5)
    execution = run.executions.get_execution(name=op.metadata.name)
    assert execution.failed_count == 1 and execution.succeeded_count == 0
    task = next(iter(run.tasks.list_tasks(parent=execution.name)))
    assert task.last_attempt_result.exit_code == 3


def test_update_and_delete_job(run):
    job = create_job(run)
    job.template.template.containers[0].image = "job:2"
    updated = run.jobs.update_job(job=job).result(timeout=5)
    assert updated.generation == 2 and updated.template.template.containers[0].image == "job:2"
    run.jobs.run_job(name=job.name).result(timeout=5)
    run.jobs.delete_job(name=job.name).result(timeout=5)
    with pytest.raises(gexc.NotFound):
        run.jobs.get_job(name=job.name, retry=None)
    assert list(run.executions.list_executions(parent=job.name)) == []


# ---------------------------------------------------------------- operations


def test_operation_polling(emu, run):
    emu.operation_polls_before_done = 2
    op = run.services.create_service(parent=PARENT, service_id="slow", service=service_body())
    assert not op.done(retry=None) and not op.done(retry=None)  # two polls answer "not yet"
    assert op.done(retry=None)
    emu.clear_requests()
    op2 = run.jobs.create_job(parent=PARENT, job_id="slowjob", job=run_v2.Job(
        template=run_v2.ExecutionTemplate(template=run_v2.TaskTemplate(containers=[run_v2.Container(image="j")]))))
    assert op2.result(timeout=5, polling=FAST_POLL).name.endswith("/jobs/slowjob")
    assert len(emu.requests("GET", "/operations/")) == 3
    ops = list(run.services.list_operations(request={"name": PARENT}).operations)
    assert {o.name for o in ops} >= {op.operation.name, op2.operation.name}
    run.services.delete_operation(request={"name": op.operation.name})
    with pytest.raises(gexc.NotFound):
        run.services.get_operation(request={"name": op.operation.name}, retry=None)


# ---------------------------------------------------------------- faults and request log


def test_fault_before_answers_the_error_and_touches_nothing(emu, run):
    emu.add_fault("POST", r"/services$", status=503)
    with pytest.raises(gexc.ServiceUnavailable):
        create_service(run)
    with pytest.raises(gexc.NotFound):
        run.services.get_service(name=f"{PARENT}/services/web", retry=None)
    create_service(run)  # the fault fired once only
    emu.add_fault("GET", r"/services/web$", status=429, times=2)
    with pytest.raises(gexc.TooManyRequests):
        run.services.get_service(name=f"{PARENT}/services/web", retry=None)
    retry = gretry.Retry(predicate=gretry.if_exception_type(gexc.TooManyRequests), initial=0.01, timeout=5)
    assert run.services.get_service(name=f"{PARENT}/services/web", retry=retry).name.endswith("/web")
    statuses = [r.status for r in emu.requests("GET", r"/services/web$")]
    assert statuses == [404, 429, 429, 200]


def test_fault_after_applies_the_write_then_loses_the_answer(emu, run):
    job = create_job(run)
    emu.add_fault("POST", r":run$", status=503, mode="after")
    with pytest.raises(gexc.ServiceUnavailable):
        run.jobs.run_job(name=job.name)
    executions = list(run.executions.list_executions(parent=job.name))
    assert len(executions) == 1  # a blind retry would start a second one
    assert run.jobs.get_job(name=job.name).execution_count == 1
    logged = emu.requests("POST", ":run$")
    assert [(r.status, r.fault) for r in logged] == [(503, "after")]


def test_fault_with_skip_lets_the_first_matching_requests_through(emu, run):
    create_service(run)
    name = f"{PARENT}/services/web"
    emu.add_fault("GET", r"/services/web$", status=500, skip=2)
    for _ in range(2):
        assert run.services.get_service(name=name, retry=None).name == name
    with pytest.raises(gexc.InternalServerError):
        run.services.get_service(name=name, retry=None)
    assert run.services.get_service(name=name, retry=None).name == name  # fired its one time
    assert [r.status for r in emu.requests("GET", r"/services/web$")] == [200, 200, 500, 200]
    bad = requests.post(f"{emu.url}/emulator/v1/faults", json={"skip": -1}, timeout=5)
    assert bad.status_code == 400 and "skip" in bad.json()["error"]["message"]


def test_faults_and_request_log_over_http(emu, run):
    spec = {"method": "GET", "path": "/services/web$", "status": 500, "times": 1}
    assert requests.post(f"{emu.url}/emulator/v1/faults", json=spec, timeout=5).json()["fault"]["status"] == 500
    create_service(run)
    with pytest.raises(gexc.InternalServerError):
        run.services.get_service(name=f"{PARENT}/services/web", retry=None)
    log = requests.get(f"{emu.url}/emulator/v1/requests", timeout=5).json()["requests"]
    assert [(r["method"], r["status"]) for r in log] == [("POST", 200), ("GET", 500)]
    requests.post(f"{emu.url}/emulator/v1/faults", json={**spec, "times": 5}, timeout=5)
    assert requests.delete(f"{emu.url}/emulator/v1/faults", timeout=5).json() == {"faults": []}
    assert run.services.get_service(name=f"{PARENT}/services/web", retry=None).name.endswith("/web")
    requests.delete(f"{emu.url}/emulator/v1/requests", timeout=5)
    assert emu.requests() == []
    bad = requests.post(f"{emu.url}/emulator/v1/faults", json={"mode": "sideways"}, timeout=5)
    assert bad.status_code == 400


# ---------------------------------------------------------------- seeding and reset


SEED = {
    "services": [{
        "name": f"{PARENT}/services/seeded",
        "annotations": {"gpuops.dev/canary": "none"},
        "template": {"revision": "seeded-v1", "containers": [{"image": "img:1", "resources": {"limits": {"cpu": "8", "memory": "32Gi"}}}]},
    }],
    "jobs": [{"name": f"{PARENT}/jobs/seeded-job", "template": {"template": {"containers": [{"image": "job:1"}]}}}],
}


def test_seed_from_a_dict_creates_revisions_like_a_create(emu, run):
    assert emu.seed(SEED) == {"services": [f"{PARENT}/services/seeded"], "jobs": [f"{PARENT}/jobs/seeded-job"]}
    svc = run.services.get_service(name=f"{PARENT}/services/seeded")
    assert short(svc.latest_created_revision) == "seeded-v1" and svc.annotations["gpuops.dev/canary"] == "none"
    assert run.revisions.get_revision(name=svc.latest_created_revision).containers[0].resources.limits["cpu"] == "8"
    assert run.jobs.get_job(name=f"{PARENT}/jobs/seeded-job").template.task_count == 1
    requests.post(f"{emu.url}/emulator/v1/reset", timeout=5)
    assert list(run.services.list_services(parent=PARENT)) == []
    resp = requests.post(f"{emu.url}/emulator/v1/seed", json=SEED, timeout=5)
    assert resp.status_code == 200 and run.services.get_service(name=svc.name).generation == 1


def test_seed_at_construction_from_a_file_and_reset_reseeds(tmp_path: Path):
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(SEED))
    state = CloudRunState(emulated_uri(lambda: "http://127.0.0.1:1"), seed=path)
    state.apply_initial_seed()
    assert list(state.services.services) == [f"{PARENT}/services/seeded"]
    state.reset()
    assert list(state.jobs.jobs) == [f"{PARENT}/jobs/seeded-job"]
    with pytest.raises(Exception, match="no field named"):
        state.seed({"services": [{"name": f"{PARENT}/services/x", "templat": {}}]})


def test_the_demo_seed_loads(emu, run):
    demo = Path(__file__).resolve().parents[2] / "gpuops" / "data" / "demo_seed.json"
    if not demo.exists():
        pytest.skip("gpuops/data/demo_seed.json is not in this checkout")
    made = emu.seed(demo)
    for name in made["services"]:
        assert run.services.get_service(name=name).latest_ready_revision


def test_concurrent_creates_are_all_applied(run):
    def create(index: int) -> str:
        return create_service(run, service_id=f"par-{index}").latest_created_revision

    with ThreadPoolExecutor(max_workers=8) as pool:
        revisions = list(pool.map(create, range(16)))
    assert len(set(revisions)) == 16
    assert len(list(run.services.list_services(parent=PARENT))) == 16


def test_an_idle_keep_alive_connection_outlives_a_five_second_poll(emu):
    """prefect-gcp's worker polls an execution every 5 s over one keep-alive connection (httplib2);
    uvicorn closes idle connections after 5 s by default, so a poll racing that close was reset
    (ConnectionResetError, not retried). The emulator keeps idle connections open, as Google's
    front end does for much longer than a poll interval."""
    import http.client
    import time

    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=5)
    try:
        for pause in (0, 5.5):
            time.sleep(pause)
            conn.request("GET", "/emulator/v1/info")
            response = conn.getresponse()
            assert response.status == 200 and json.loads(response.read())["emulator"] == "cloud-run"
    finally:
        conn.close()
