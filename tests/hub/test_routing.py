"""The hub's pure request logic: task bodies, routing, GitHub deliveries and Pub/Sub envelopes."""
from __future__ import annotations

import base64
import json

import pytest

from gpuops.errors import BadInput
from gpuops.hub.routing import (
    MAX_PARAMS_BYTES,
    MAX_PARAMS_DEPTH,
    MAX_URI_CHARS,
    BadRequest,
    GitHubOutcome,
    check_task_body,
    destination_of,
    github_push,
    pubsub_envelope,
    route_of,
)
from gpuops.uris import shown_uri


def refused(call, *args) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        call(*args)
    return caught.value


@pytest.mark.parametrize("uri, shown", [
    ("gs://b/videos/clip.mp4", "gs://b/videos/clip.mp4"),
    ("https://s3.example.com/b/a.wav?X-Amz-Signature=abc&X-Amz-Credential=AKIA",
     "https://s3.example.com/b/a.wav?[query withheld]"),
    ("https://acct.blob.core.windows.net/c/a.mov?sv=2024&sig=abc#frag", "https://acct.blob.core.windows.net/c/a.mov?[query withheld]"),
    ("https://host/a.mp4#only-a-fragment", "https://host/a.mp4?[query withheld]"),
])
def test_a_uri_is_shown_without_its_query_string(uri, shown):
    assert shown_uri(uri) == shown


# --- check_task_body --------------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["gs://bucket/path/file.mp4", "s3://my.bucket/a.wav", "https://example.com/v/x.mov",
                                 "http://127.0.0.1:9000/b/clip.txt", "gs://b_k/a"])
def test_a_task_with_an_object_uri_is_accepted_and_params_default_to_an_empty_object(uri):
    assert check_task_body({"input_uri": uri}) == {"input_uri": uri, "params": {}}
    assert check_task_body({"input_uri": uri, "params": None})["params"] == {}


def test_params_come_back_as_sent():
    params = {"language": "ja", "steps": [1, 2.5, {"x": None, "on": True}]}
    assert check_task_body({"input_uri": "gs://bucket/f.mp4", "params": params})["params"] == params


@pytest.mark.parametrize("uri, says", [
    (None, "non-empty string"), ("", "non-empty string"), (7, "non-empty string"),
    ("ftp://host/file.mp4", "must start with gs://"), ("/local/file.mp4", "must start with gs://"),
    ("gs:/bucket/file.mp4", "must start with gs://"), ("file.mp4", "must start with gs://"),
    ("gs://bucket", "no object"), ("gs://bucket/", "no object"), ("https://example.com/", "no object"),
    ("gs:///file.mp4", "no bucket or host"), ("gs://Bad_Bucket!/f.mp4", "not a valid bucket name"),
    ("gs://ab/f.mp4", "not a valid bucket name"), (" gs://bucket/f.mp4", "surrounding spaces"),
    ("gs://bucket/f\n.mp4", "control characters"),
])
def test_a_bad_input_uri_is_refused_naming_the_field_and_the_fix(uri, says):
    error = refused(check_task_body, {"input_uri": uri})
    assert error.field == "input_uri" and says in error.message
    assert "e.g. gs://bucket/path/file.mp4" in error.message or "bucket name" in error.message
    assert isinstance(error, BadInput) and str(error).startswith("input_uri: ")


def test_an_overlong_uri_is_refused_with_the_limit():
    error = refused(check_task_body, {"input_uri": "gs://bucket/" + "a" * MAX_URI_CHARS})
    assert error.field == "input_uri" and f"over the {MAX_URI_CHARS} allowed" in error.message


def test_a_uri_carrying_a_password_is_refused_without_repeating_it():
    error = refused(check_task_body, {"input_uri": "https://user:hunter2-secret@example.com/f.mp4"})
    assert error.field == "input_uri" and "hunter2" not in str(error) and "not shown" in error.message


def test_a_missing_uri_an_unknown_key_and_a_non_object_body_are_each_named():
    assert refused(check_task_body, {"params": {}}).field == "input_uri"
    unknown = refused(check_task_body, {"input_uri": "gs://bucket/f.mp4", "priority": 1})
    assert unknown.field == "priority" and "input_uri and params" in unknown.message
    assert refused(check_task_body, ["gs://bucket/f.mp4"]).field == "body"


@pytest.mark.parametrize("params, says", [
    ([1, 2], "must be a JSON object"), ("x", "must be a JSON object"),
    ({"x": float("nan")}, "NaN or Infinity"), ({"x": float("inf")}, "NaN or Infinity"),
    ({"x": {1, 2}}, "not JSON"), ({1: "a"}, "not a string"),
    ({"blob": "x" * MAX_PARAMS_BYTES}, f"over the {MAX_PARAMS_BYTES} allowed"),
])
def test_bad_params_are_refused_on_the_params_field(params, says):
    error = refused(check_task_body, {"input_uri": "gs://bucket/f.mp4", "params": params})
    assert error.field == "params" and says in error.message


def nested(levels: int) -> dict:
    tree: dict = {}
    for _ in range(levels - 1):
        tree = {"a": tree}
    return tree


def test_params_may_nest_to_the_limit_and_no_deeper():
    assert check_task_body({"input_uri": "gs://bkt/f.mp4", "params": nested(MAX_PARAMS_DEPTH)})
    assert "deeper than" in refused(check_task_body, {"input_uri": "gs://bkt/f.mp4",
                                                      "params": nested(MAX_PARAMS_DEPTH + 1)}).message
    # Far deeper than Python's recursion limit: refused, not a RecursionError.
    assert refused(check_task_body, {"input_uri": "gs://bkt/f.mp4", "params": nested(5000)}).field == "params"


# --- route_of, destination_of -----------------------------------------------------------------


@pytest.mark.parametrize("uri, route", [
    ("gs://b/a.mp4", "gpu"), ("gs://b/A.MOV", "gpu"), ("s3://b/x/y.Wav", "gpu"), ("gs://b/a.tar.mp4", "gpu"),
    ("https://h/v.mp4?sig=abc.txt", "gpu"), ("https://h/v.mp4#t=3", "gpu"), ("https://h/v.txt?f=a.mp4", "cpu"),
    ("gs://b/a.mp3", "cpu"), ("gs://b/mp4", "cpu"), ("gs://b/a.mp4.json", "cpu"), ("gs://b/dir.mp4/x", "cpu"),
])
def test_the_route_is_the_extension_of_the_uris_path(uri, route):
    assert route_of(uri) == route


def test_without_the_header_gpu_work_goes_to_cloud_run_and_overflows_only_when_gke_is_on_and_over_threshold():
    assert destination_of(None, "gpu", False, 10_000, 100) == "cloud-run"
    assert destination_of(None, "gpu", True, 100, 100) == "cloud-run"  # at the threshold: not past it
    assert destination_of(None, "gpu", True, 101, 100) == "gke"
    assert destination_of(None, "gpu", True, None, 100) == "cloud-run"  # backlog unknown: no overflow


def test_the_header_picks_the_gpu_destination_over_overflow_and_the_gke_flag():
    assert destination_of("cloud-run", "gpu", True, 10_000, 100) == "cloud-run"
    assert destination_of("gke", "gpu", False, 0, 100) == "gke"


@pytest.mark.parametrize("value", ["GKE", "cloudrun", "", " gke", "gke,cloud-run"])
def test_any_other_header_value_is_refused_on_either_route(value):
    for route in ("gpu", "cpu"):
        error = refused(destination_of, value, route, True, 0, 100)
        assert error.field == "X-Destination" and "cloud-run or gke" in error.message


def test_the_cpu_route_has_no_destination_whatever_valid_header_comes():
    assert {destination_of(h, "cpu", True, 10_000, 1) for h in (None, "gke", "cloud-run")} == {None}


# --- github_push ------------------------------------------------------------------------------

SHA = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"


def push(**changes) -> dict:
    payload = {"ref": "refs/heads/main", "after": SHA, "deleted": False,
               "repository": {"clone_url": "https://github.com/owner/app.git", "default_branch": "main"}}
    return {**payload, **changes}


def test_a_push_to_the_default_branch_gives_repo_ref_and_sha():
    assert github_push("push", push()) == GitHubOutcome(
        "push", push={"repo": "https://github.com/owner/app.git", "ref": "main", "sha": SHA})


def test_a_configured_default_branch_wins_over_the_payloads():
    payload = push(ref="refs/heads/release")
    assert github_push("push", payload).kind == "ignored"
    assert github_push("push", payload, default_branch="release").push["ref"] == "release"
    assert "not the default branch release" in github_push("push", push(), default_branch="release").reason


def test_a_ping_is_a_ping():
    assert github_push("ping", {"zen": "Keep it logically awesome.", "hook_id": 1}) == GitHubOutcome("ping")


@pytest.mark.parametrize("event, payload, says", [
    ("issues", push(), "'issues' is not a push"),
    ("push", push(ref="refs/heads/feature"), "branch feature is not the default branch main"),
    ("push", push(ref="refs/tags/v1.0"), "refs/tags/v1.0 is not a branch"),
    ("push", push(after="0" * 40, deleted=True), "deleted branch main"),
    ("push", push(after="0" * 40), "deleted branch main"),
])
def test_other_events_branches_tags_and_deletions_are_ignored_with_a_reason(event, payload, says):
    outcome = github_push(event, payload)
    assert outcome.kind == "ignored" and outcome.push is None and says in outcome.reason


@pytest.mark.parametrize("event, payload, field", [
    (None, push(), "X-GitHub-Event"), ("", push(), "X-GitHub-Event"), ("push", [1], "body"),
    ("push", push(ref=None), "ref"), ("push", push(after="abc"), "after"), ("push", push(after=None), "after"),
    ("push", push(repository=None), "repository"),
    ("push", push(repository={"default_branch": "main"}), "repository.clone_url"),
    ("push", push(repository={"clone_url": "https://github.com/o/a.git"}), "repository.default_branch"),
])
def test_a_push_payload_missing_what_a_build_needs_is_a_bad_request(event, payload, field):
    assert refused(github_push, event, payload).field == field


# --- pubsub_envelope --------------------------------------------------------------------------


def envelope(event_type="OBJECT_FINALIZE", bucket="uploads", name="in/clip.MP4", data=None, **message) -> dict:
    attributes = {"notificationConfig": "projects/_/buckets/uploads/notificationConfigs/1",
                  "eventType": event_type, "payloadFormat": "JSON_API_V1", "bucketId": bucket, "objectId": name,
                  "objectGeneration": "1718870000000000", "eventTime": "2025-06-20T01:02:03.456Z"}
    if data is None:
        resource = {"kind": "storage#object", "bucket": bucket, "name": name, "size": "104857600"}
        data = base64.b64encode(json.dumps(resource).encode()).decode()
    body = {"attributes": attributes, "data": data, "messageId": "1234567890", "message_id": "1234567890",
            "publishTime": "2025-06-20T01:02:04.000Z", **message}
    return {"message": body, "subscription": "projects/p/subscriptions/gpu-sub"}


def test_a_finalize_notification_gives_the_message_id_and_the_objects_gs_uri():
    result = pubsub_envelope(envelope())
    assert result["message_id"] == "1234567890" and result["event_type"] == "OBJECT_FINALIZE"
    assert result["input_uri"] == "gs://uploads/in/clip.MP4" and result["ignored"] is None
    assert result["attributes"]["objectGeneration"] == "1718870000000000"
    assert route_of(result["input_uri"]) == "gpu"


def test_payload_format_none_and_the_emulators_single_spelling_of_the_id_are_read():
    body = envelope(data="")
    body["message"]["attributes"]["payloadFormat"] = "NONE"
    del body["message"]["messageId"]
    assert pubsub_envelope(body)["input_uri"] == "gs://uploads/in/clip.MP4"
    assert pubsub_envelope(body)["message_id"] == "1234567890"


@pytest.mark.parametrize("event_type", ["OBJECT_DELETE", "OBJECT_ARCHIVE", "OBJECT_METADATA_UPDATE"])
def test_other_storage_events_are_ignored_not_refused(event_type):
    result = pubsub_envelope(envelope(event_type))
    assert result["ignored"] and event_type in result["ignored"] and result["input_uri"] is None
    assert result["message_id"] == "1234567890"


def garbled(mutate) -> dict:
    body = envelope()
    mutate(body)
    return body


@pytest.mark.parametrize("body, field", [
    ([], "message"), ({"subscription": "s"}, "message"), (garbled(lambda b: b.update(message="x")), "message"),
    (garbled(lambda b: [b["message"].pop(k) for k in ("messageId", "message_id")]), "message.messageId"),
    (garbled(lambda b: b["message"].update(messageId="", message_id="")), "message.messageId"),
    (garbled(lambda b: b["message"].pop("attributes")), "message.attributes"),
    (garbled(lambda b: b["message"]["attributes"].update(size=5)), "message.attributes"),
    (garbled(lambda b: b["message"]["attributes"].pop("eventType")), "message.attributes.eventType"),
    (garbled(lambda b: b["message"]["attributes"].pop("bucketId")), "message.attributes.bucketId"),
    (garbled(lambda b: b["message"]["attributes"].update(objectId="")), "message.attributes.objectId"),
    (envelope(bucket="NO"), "message.attributes.bucketId"),
    (envelope(name="in/a\r\nb.mp4"), "message.attributes.objectId"),
    (garbled(lambda b: b["message"].update(data="%%not base64%%")), "message.data"),
    (garbled(lambda b: b["message"].update(data=base64.b64encode(b"not json").decode())), "message.data"),
    (garbled(lambda b: b["message"].update(data=base64.b64encode(b"[1]").decode())), "message.data"),
    (garbled(lambda b: b["message"].update(data=5)), "message.data"),
])
def test_a_malformed_envelope_is_a_bad_request_naming_the_field(body, field):
    assert refused(pubsub_envelope, body).field == field


def test_data_naming_another_object_than_the_attributes_is_refused():
    other = base64.b64encode(json.dumps({"bucket": "uploads", "name": "in/other.wav"}).encode()).decode()
    error = refused(pubsub_envelope, envelope(data=other))
    assert error.field == "message.data" and "another object" in error.message
