"""The Cloud Run emulator refuses what Google refuses, in Google's error shape, and never answers 500
to a malformed control request. Over real HTTP (httpx) and the real run_v2 clients."""

from __future__ import annotations

import json

import httpx
import pytest
from google.api_core import exceptions as gexc
from google.cloud import run_v2

PARENT = "projects/demo/locations/us-central1"
SERVICES = f"/v2/{PARENT}/services"
JOBS = f"/v2/{PARENT}/jobs"
LIMIT = 10 * 1024 * 1024


@pytest.fixture
def http(fresh_cloudrun_emulator):
    with httpx.Client(base_url=fresh_cloudrun_emulator.url, timeout=30, trust_env=False) as client:
        yield client


def refused(resp: httpx.Response, needle: str) -> None:
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == 400 and error["status"] == "INVALID_ARGUMENT", error
    assert needle in error["message"], error["message"]


def service(**extra) -> dict:
    return {"template": {"containers": [{"image": "img:1"}]}, **extra}


def job(**extra) -> dict:
    return {"template": {"template": {"containers": [{"image": "job:1"}]}, **extra}}


# ---------------------------------------------------------------- control routes


@pytest.mark.parametrize("route, body, needle", [
    ("faults", "[1, 2]", "must be a JSON object"),
    ("faults", '{"method": 5}', "fault method"),
    ("faults", '{"times": "twice"}', "fault times must be an integer"),
    ("faults", '{"status": 200}', "fault status must be between 400 and 599"),
    ("faults", '{"path": "("}', "not a valid regular expression"),
    ("faults", '{"colour": "red"}', "unknown fault fields ['colour']"),
    ("faults", '{"message": 5}', "fault message"),
    ("faults", '{"mode": "race"}', "required with mode 'race'"),
    ("faults", '{"times": 1e999}', "out of range"),
    ("config", '{"operation_polls_before_done": "many"}', "must be an integer"),
    ("config", '{"operation_polls_before_done": NaN}', "NaN"),
    ("config", '{"operation_polls_before_done": -1}', "at least 0"),
    ("reset", "[1]", "must be a JSON object"),
    ("reset", '"yes"', "must be a JSON object"),
    ("reset", '{"reseed": "no"}', "reset.reseed must be a JSON boolean"),
    ("seed", '"seed.json"', "must be a JSON object"),
    ("seed", '{"services": {"name": "x"}}', "seed.services must be a JSON array"),
    ("seed", '{"services": [{"name": "projects/p/locations/l"}]}', "Invalid resource name"),
    ("seed", "{not json", "control body is not JSON"),
])
def test_a_malformed_control_request_is_a_400_with_a_message(http, route, body, needle):
    refused(http.post(f"/emulator/v1/{route}", content=body), needle)
    assert http.get("/emulator/v1/faults").json() == {"faults": []}
    assert http.get("/emulator/v1/config").json() == {"operation_polls_before_done": 0}


def test_seed_over_http_takes_a_body_never_a_file_path(http, tmp_path):
    path = tmp_path / "seed.json"
    path.write_text(json.dumps({"services": [{"name": f"{PARENT}/services/from-file", **service()}]}))
    refused(http.post("/emulator/v1/seed", json=str(path)), "must be a JSON object")
    refused(http.post("/emulator/v1/seed", json={"path": str(path)}), "unknown keys ['path']")
    assert http.get(f"{SERVICES}/from-file").status_code == 404  # the file was not read
    inline = {"services": [{"name": f"{PARENT}/services/inline", **service()}]}
    seeded = http.post("/emulator/v1/seed", json=inline)
    assert seeded.json() == {"seeded": {"services": [f"{PARENT}/services/inline"], "jobs": []}}


# ---------------------------------------------------------------- what a v2 write must look like


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_write_that_is_not_json_is_refused_and_changes_nothing(http, content_type):
    assert http.post(SERVICES, params={"serviceId": "web"}, json=service()).status_code == 200
    headers = {"content-type": content_type} if content_type else {}
    body = json.dumps(service(labels={"team": "gpu"}))
    refused(http.patch(f"{SERVICES}/web", content=body, headers=headers), "Unsupported content with type")
    refused(http.post(SERVICES, params={"serviceId": "other"}, content=body, headers=headers),
            "Unsupported content with type")
    current = http.get(f"{SERVICES}/web").json()
    assert current["generation"] == "1" and "labels" not in current
    assert http.get(f"{SERVICES}/other").status_code == 404


def test_json_with_a_charset_is_json(http):
    headers = {"content-type": "application/json; charset=utf-8"}
    resp = http.post(SERVICES, params={"serviceId": "web"}, content=json.dumps(service()), headers=headers)
    assert resp.status_code == 200, resp.text


def test_a_body_over_the_limit_is_refused_and_changes_nothing(http):
    assert http.post(SERVICES, params={"serviceId": "web"}, json=service()).status_code == 200
    huge = service(labels={"blob": "x" * (20 * 1024 * 1024)})
    message = f"Request payload size exceeds the limit: {LIMIT} bytes"
    refused(http.patch(f"{SERVICES}/web", json=huge), message)
    refused(http.post(SERVICES, params={"serviceId": "big"}, json=huge), "exceeds the limit")
    refused(http.post("/emulator/v1/seed", content=b"{" + b" " * (LIMIT + 1) + b"}"), "exceeds the limit")
    assert http.get(f"{SERVICES}/web").json()["generation"] == "1"
    assert http.get(f"{SERVICES}/big").status_code == 404
    # Just under the limit the body is parsed as usual: the limit is not lower than stated.
    near = json.dumps({**service(), "bogus": "x" * (LIMIT - 1024)})
    refused(http.post(SERVICES, params={"serviceId": "near"}, content=near,
                      headers={"content-type": "application/json"}), 'no field named "bogus"')


# ---------------------------------------------------------------- negative counts


@pytest.mark.parametrize("body, field", [
    (service(scaling={"maxInstanceCount": -5}), "service.scaling.max_instance_count"),
    (service(scaling={"minInstanceCount": -1}), "service.scaling.min_instance_count"),
    (service(scaling={"minInstanceCount": 4, "maxInstanceCount": 2}),
     "service.scaling.min_instance_count (4)"),
    ({"template": {"scaling": {"maxInstanceCount": -5}, "containers": [{"image": "a"}]}},
     "service.template.scaling.max_instance_count"),
    ({"template": {"scaling": {"minInstanceCount": -2}, "containers": [{"image": "a"}]}},
     "service.template.scaling.min_instance_count"),
    ({"template": {"maxInstanceRequestConcurrency": -1, "containers": [{"image": "a"}]}},
     "service.template.max_instance_request_concurrency"),
    ({"template": {"containers": [{"image": "a", "resources": {"limits": {"cpu": "-1"}}}]}},
     "service.template.containers[0].resources.limits['cpu']"),
])
def test_negative_service_counts_are_refused_naming_the_field(http, body, field):
    refused(http.post(SERVICES, params={"serviceId": "web"}, json=body), field)
    assert http.get(f"{SERVICES}/web").status_code == 404
    assert http.post(SERVICES, params={"serviceId": "web"}, json=service()).status_code == 200
    refused(http.patch(f"{SERVICES}/web", json=body), field)
    assert http.get(f"{SERVICES}/web").json()["generation"] == "1"


@pytest.mark.parametrize("body, field", [
    (job(taskCount=-1), "job.template.task_count"),
    (job(parallelism=-2), "job.template.parallelism"),
    ({"template": {"template": {"maxRetries": -1, "containers": [{"image": "a"}]}}},
     "job.template.template.max_retries"),
    ({"template": {"template": {"containers": [{"image": "a", "resources": {"limits": {"memory": "-1Gi"}}}]}}},
     "job.template.template.containers[0].resources.limits['memory']"),
])
def test_negative_job_counts_are_refused_naming_the_field(http, body, field):
    refused(http.post(JOBS, params={"jobId": "batch"}, json=body), field)
    assert http.get(f"{JOBS}/batch").status_code == 404


def test_the_real_client_sees_the_refusal_as_a_bad_request(cloudrun_clients, fresh_cloudrun_emulator):
    body = run_v2.Service(scaling=run_v2.ServiceScaling(max_instance_count=-5),
                          template=run_v2.RevisionTemplate(containers=[run_v2.Container(image="img:1")]))
    with pytest.raises(gexc.BadRequest, match="service.scaling.max_instance_count: must not be negative"):
        cloudrun_clients.services.create_service(parent=PARENT, service_id="web", service=body)
    with pytest.raises(gexc.NotFound):
        cloudrun_clients.services.get_service(name=f"{PARENT}/services/web", retry=None)
