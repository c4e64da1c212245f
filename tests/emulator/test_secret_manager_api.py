"""The Secret Manager v1 emulation on the Cloud Run emulator's URL, through Google's own client over REST."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from google.api_core import exceptions as gexc

PROJECT = "nca-toolkit-438301"
PARENT = f"projects/{PROJECT}"


def client_for(url: str):
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import secretmanager_v1

    return secretmanager_v1.SecretManagerServiceClient(
        transport="rest", client_options=ClientOptions(api_endpoint=url), credentials=AnonymousCredentials())


@pytest.fixture
def sm(fresh_cloudrun_emulator):
    return client_for(fresh_cloudrun_emulator.url)


def create(sm, secret_id: str, labels: dict | None = None):
    return sm.create_secret(parent=PARENT, secret_id=secret_id,
                            secret={"replication": {"automatic": {}}, "labels": labels or {}})


def add(sm, secret_id: str, data: bytes):
    import google_crc32c

    return sm.add_secret_version(parent=f"{PARENT}/secrets/{secret_id}",
                                 payload={"data": data, "data_crc32c": int(google_crc32c.value(data))})


def raw(url: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_create_get_and_a_second_create_is_409_already_exists(sm, fresh_cloudrun_emulator):
    made = create(sm, "api-key", {"managed-by": "gpuops"})
    assert made.name == f"{PARENT}/secrets/api-key"
    assert dict(made.labels) == {"managed-by": "gpuops"} and "automatic" in made.replication
    assert made.create_time and made.etag

    got = sm.get_secret(name=made.name)
    assert got.name == made.name and dict(got.labels) == {"managed-by": "gpuops"}

    with pytest.raises(gexc.Conflict, match=r"Secret \[projects/.*/secrets/api-key\] already exists"):  # REST: by HTTP code
        create(sm, "api-key")
    status, body = raw(fresh_cloudrun_emulator.url, "POST", f"/v1/{PARENT}/secrets?secretId=api-key",
                       {"replication": {"automatic": {}}})
    assert status == 409 and body["error"]["status"] == "ALREADY_EXISTS" and body["error"]["code"] == 409


def test_versions_are_numbered_access_returns_the_data_and_latest_the_newest_enabled(sm, fresh_cloudrun_emulator):
    create(sm, "token")
    first, second = add(sm, "token", b"one"), add(sm, "token", b"two")
    assert first.name.endswith("/versions/1") and second.name.endswith("/versions/2")
    assert first.client_specified_payload_checksum and first.state.name == "ENABLED"

    latest = sm.access_secret_version(name=f"{PARENT}/secrets/token/versions/latest")
    assert latest.name == second.name and latest.payload.data == b"two"
    import google_crc32c
    assert latest.payload.data_crc32c == int(google_crc32c.value(b"two"))
    assert sm.access_secret_version(name=first.name).payload.data == b"one"
    listed = [v.name for v in sm.list_secret_versions(parent=f"{PARENT}/secrets/token")]
    assert listed == [second.name, first.name]  # newest first
    assert sm.get_secret_version(name=f"{PARENT}/secrets/token/versions/latest").name == second.name

    sm.disable_secret_version(name=second.name)
    with pytest.raises(gexc.BadRequest, match="is in DISABLED state"):
        sm.access_secret_version(name=second.name)
    status, body = raw(fresh_cloudrun_emulator.url, "GET", f"/v1/{second.name}:access")
    assert status == 400 and body["error"]["status"] == "FAILED_PRECONDITION"
    assert sm.access_secret_version(name=f"{PARENT}/secrets/token/versions/latest").payload.data == b"one"
    sm.enable_secret_version(name=second.name)
    sm.destroy_secret_version(name=second.name)
    with pytest.raises(gexc.BadRequest, match="DESTROYED"):
        sm.access_secret_version(name=second.name)
    with pytest.raises(gexc.BadRequest):
        sm.enable_secret_version(name=second.name)
    assert add(sm, "token", b"three").name.endswith("/versions/3")  # numbers are never reused


def test_refusals_name_the_problem_never_the_data(sm, fresh_cloudrun_emulator):
    create(sm, "s")
    with pytest.raises(gexc.BadRequest, match="Checksum mismatch") as err:
        sm.add_secret_version(parent=f"{PARENT}/secrets/s", payload={"data": b"hidden-data", "data_crc32c": 1})
    assert "hidden-data" not in str(err.value)
    with pytest.raises(gexc.BadRequest, match="no larger than 65536"):
        sm.add_secret_version(parent=f"{PARENT}/secrets/s", payload={"data": b"x" * (64 * 1024 + 1)})
    with pytest.raises(gexc.NotFound, match=r"Secret \[.*/secrets/missing\] not found"):
        sm.get_secret(name=f"{PARENT}/secrets/missing")
    with pytest.raises(gexc.NotFound):
        add(sm, "missing", b"x")
    with pytest.raises(gexc.NotFound, match="not found or has no versions"):
        sm.access_secret_version(name=f"{PARENT}/secrets/s/versions/latest")
    with pytest.raises(gexc.NotFound, match=r"Secret Version \[.*/versions/7\] not found"):
        sm.access_secret_version(name=f"{PARENT}/secrets/s/versions/7")
    with pytest.raises(gexc.BadRequest):
        create(sm, "bad id!")
    with pytest.raises(gexc.BadRequest, match="label"):
        create(sm, "upper", {"Managed-By": "gpuops"})
    url = fresh_cloudrun_emulator.url
    status, body = raw(url, "POST", f"/v1/{PARENT}/secrets/s:addVersion", {"payload": {"data": "eA=="}, "oops": 1})
    assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT" and "oops" in body["error"]["message"]
    status, body = raw(url, "GET", f"/v1/{PARENT}/secrets?bogus=1")
    assert status == 400 and "bogus" in body["error"]["message"]
    status, body = raw(url, "PUT", f"/v1/{PARENT}/secrets/s")
    assert status == 404 and body["error"]["status"] == "NOT_FOUND"


def test_list_pages_delete_and_reset(sm, fresh_cloudrun_emulator):
    for name in ("a", "b", "c"):
        create(sm, name)
    pager = sm.list_secrets(request={"parent": PARENT, "page_size": 2})
    assert [s.name.rsplit("/", 1)[-1] for s in pager] == ["a", "b", "c"]
    assert [len(page.secrets) for page in sm.list_secrets(request={"parent": PARENT, "page_size": 2}).pages] == [2, 1]
    assert not list(sm.list_secrets(parent="projects/other-project"))

    sm.delete_secret(name=f"{PARENT}/secrets/b")
    with pytest.raises(gexc.NotFound):
        sm.get_secret(name=f"{PARENT}/secrets/b")
    fresh_cloudrun_emulator.reset()
    assert not list(sm.list_secrets(parent=PARENT))


def test_faults_and_the_request_log_cover_secret_manager_paths(sm, fresh_cloudrun_emulator):
    create(sm, "s")
    fresh_cloudrun_emulator.add_fault(method="POST", path=r":addVersion$", status=503)
    with pytest.raises(gexc.ServiceUnavailable):
        sm.add_secret_version(parent=f"{PARENT}/secrets/s", payload={"data": b"v"}, retry=None)
    assert not list(sm.list_secret_versions(parent=f"{PARENT}/secrets/s"))  # "before": nothing changed
    logged = fresh_cloudrun_emulator.requests(method="POST", path=":addVersion")
    assert [(r.status, r.fault) for r in logged] == [(503, "before")]


def test_a_workload_reads_an_existing_secret_and_sees_a_placeholder_for_a_missing_one(fresh_workload_emulator):
    import sys

    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import run_v2

    emu = fresh_workload_emulator
    sm = client_for(emu.url)
    create(sm, "job-key")
    add(sm, "job-key", b"first")
    add(sm, "job-key", b"second")
    script = "import os; print('|'.join(os.environ[k] for k in ('A', 'B', 'C')))"
    env = [{"name": "A", "valueSource": {"secretKeyRef": {"secret": "job-key", "version": "1"}}},
           {"name": "B", "valueSource": {"secretKeyRef": {"secret": f"{PARENT}/secrets/job-key",
                                                          "version": "latest"}}},
           {"name": "C", "valueSource": {"secretKeyRef": {"secret": "absent", "version": "2"}}}]
    name = f"{PARENT}/locations/us-central1/jobs/reader"
    emu.seed({"jobs": [{"name": name, "template": {"template": {
        "containers": [{"image": "img", "command": [sys.executable, "-c", script], "env": env}]}}}]})
    jobs = run_v2.JobsClient(transport="rest", client_options=ClientOptions(api_endpoint=emu.url),
                             credentials=AnonymousCredentials())
    execution = jobs.run_job(name=name).result(timeout=60)
    deadline = time.monotonic() + 30
    while "first|" not in emu.logs(execution.name) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "first|second|emulated-secret:absent:2" in emu.logs(execution.name)
