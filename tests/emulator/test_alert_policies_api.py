"""The AlertPolicyService emulation, through google-cloud-monitoring's real client over gRPC: it stores, names,
pages, updates with and without a mask, deletes, refuses what Google refuses (INVALID_ARGUMENT naming the
field, NOT_FOUND), logs each call as its REST mapping, injects faults, and labels its answers."""
from __future__ import annotations

import copy
import json
import re

import grpc
import pytest
from google.api_core import exceptions as gexc
from google.cloud import monitoring_v3
from google.cloud.monitoring_v3.services.alert_policy_service.transports import AlertPolicyServiceGrpcTransport
from google.protobuf import field_mask_pb2

from gpuops.emulator.alert_policies_api import HEADER, SERVICE, AlertPolicyEmulator

P = "alerts-emu-test"
PARENT = f"projects/{P}"
BODY = {
    "displayName": "gpu busy",
    "conditions": [{"displayName": "gpu over 95%", "conditionThreshold": {
        "filter": 'resource.type = "cloud_run_revision" AND resource.labels.service_name = "svc" AND '
                  'metric.type = "run.googleapis.com/container/gpu/utilizations"',
        "aggregations": [{"alignmentPeriod": "60s", "perSeriesAligner": "ALIGN_PERCENTILE_99"}],
        "comparison": "COMPARISON_GT", "thresholdValue": 0.95, "duration": "300s"}}],
    "combiner": "OR",
    "userLabels": {"managed-by": "gpuops"},
    "notificationChannels": [f"{PARENT}/notificationChannels/42"],
    "documentation": {"content": "# GPU busy", "mimeType": "text/markdown"},
}


@pytest.fixture(scope="module")
def emulator():
    with AlertPolicyEmulator() as emu:
        yield emu


@pytest.fixture
def emu(emulator):
    emulator.reset()
    yield emulator
    emulator.reset()


@pytest.fixture(scope="module")
def client(emulator):
    channel = grpc.insecure_channel(emulator.url.removeprefix("http://"))
    return monitoring_v3.AlertPolicyServiceClient(transport=AlertPolicyServiceGrpcTransport(channel=channel))


def policy(**changes) -> monitoring_v3.AlertPolicy:
    body = copy.deepcopy(BODY)
    body.update(changes)
    return monitoring_v3.AlertPolicy.from_json(json.dumps(body))


def threshold(**changes) -> list[dict]:
    condition = copy.deepcopy(BODY["conditions"][0])
    condition["conditionThreshold"].update(changes)
    return [condition]


def create(client, **changes) -> monitoring_v3.AlertPolicy:
    return client.create_alert_policy(name=PARENT, alert_policy=policy(**changes))


def test_create_names_the_policy_and_its_conditions_and_get_and_list_return_it(emu, client):
    made = create(client, name=f"{PARENT}/alertPolicies/mine")  # a name in the request is ignored, as on Google
    assert re.fullmatch(rf"{PARENT}/alertPolicies/\d{{20}}", made.name)
    assert made.conditions[0].name.startswith(made.name + "/conditions/")
    assert made.enabled is True  # unset means enabled, and reads back so
    assert made.creation_record.mutate_time == made.mutation_record.mutate_time
    assert client.get_alert_policy(name=made.name) == made
    others = [create(client, displayName=f"p{i}") for i in range(4)]
    pager = client.list_alert_policies(request={"name": PARENT, "page_size": 2})
    assert [p.name for p in pager] == [made.name] + [p.name for p in others]
    assert [(r.method, r.path) for r in emu.requests("GET", "alertPolicies$")] == [("GET", f"/v3/{PARENT}/alertPolicies")] * 3
    assert list(client.list_alert_policies(name="projects/another-project")) == []


REFUSALS = [
    (dict(conditions=threshold(filter='metric.type = "run.googleapis.com/container/gpu/utilisation"')),
     "conditions[0].condition_threshold.filter", "Cannot find metric"),
    (dict(conditions=threshold(filter='metric.type = "run.googleapis.com/request_latencies" OR resource.type = "x"')),
     "condition_threshold.filter", "joined by AND"),
    (dict(conditions=threshold(filter='resource.type = "cloud_run_revision"')), "filter", "metric.type is required"),
    (dict(conditions=threshold(duration="90s")), "condition_threshold.duration", "whole minutes"),
    (dict(conditions=threshold(aggregations=[{"alignmentPeriod": "30s", "perSeriesAligner": "ALIGN_MEAN"}])),
     "aggregations[0].alignment_period", "at least 60 seconds"),
    (dict(conditions=threshold(aggregations=[{"alignmentPeriod": "60s", "perSeriesAligner": "ALIGN_MAX"}])),
     "aggregations[0].per_series_aligner", "cannot align DELTA DISTRIBUTION"),
    (dict(conditions=threshold(aggregations=[{"perSeriesAligner": "ALIGN_MEAN"}])), "alignment_period is required", ""),
    (dict(conditions=threshold(comparison="COMPARISON_UNSPECIFIED")), "comparison is required", ""),
    (dict(conditions=[]), "alert_policy.conditions must hold 1 to 6", ""),
    (dict(conditions=BODY["conditions"] * 2, combiner="COMBINE_UNSPECIFIED"), "alert_policy.combiner is required", ""),
    (dict(displayName=" "), "alert_policy.display_name is required", ""),
    (dict(userLabels={"Managed-By": "gpuops"}), "alert_policy.user_labels", "lowercase"),
    (dict(notificationChannels=["slack-alerts"]), "alert_policy.notification_channels", "notificationChannels/ID"),
    (dict(documentation={"content": "x", "mimeType": "text/html"}), "documentation.mime_type", "text/markdown"),
]


@pytest.mark.parametrize("changes, field, why", REFUSALS, ids=[r[1] for r in REFUSALS])
def test_a_policy_google_refuses_is_invalid_argument_naming_the_field_and_nothing_is_stored(emu, client, changes,
                                                                                            field, why):
    with pytest.raises(gexc.InvalidArgument) as refused:
        create(client, **changes)
    assert field in refused.value.message and why in refused.value.message
    assert list(client.list_alert_policies(name=PARENT)) == []
    assert [r.status for r in emu.requests("POST")] == [400]


def test_update_with_a_mask_sets_only_those_fields_and_without_one_replaces_the_policy(emu, client):
    made = create(client)
    paused = monitoring_v3.AlertPolicy(name=made.name, enabled=False)
    client.update_alert_policy(alert_policy=paused, update_mask=field_mask_pb2.FieldMask(paths=["enabled"]))
    mask = field_mask_pb2.FieldMask(paths=["display_name", "conditions"])
    got = client.update_alert_policy(alert_policy=policy(name=made.name, displayName="renamed"), update_mask=mask)
    assert (got.display_name, got.enabled) == ("renamed", False)  # enabled was not in the mask
    assert got.conditions[0].name != made.conditions[0].name  # a condition sent without a name is a new one
    assert got.creation_record == made.creation_record and got.mutation_record != made.mutation_record

    own = [{**BODY["conditions"][0], "name": got.conditions[0].name}]
    replaced = client.update_alert_policy(alert_policy=policy(name=made.name, displayName="replaced", conditions=own))
    assert replaced.conditions[0].name == got.conditions[0].name  # one of the policy's own keeps its name
    assert (replaced.display_name, replaced.enabled) == ("replaced", True)  # no mask: unset enabled is enabled
    assert replaced.creation_record == made.creation_record


def test_update_refuses_an_unknown_policy_a_foreign_condition_name_and_a_bad_mask(emu, client):
    made = create(client)
    with pytest.raises(gexc.NotFound):
        client.update_alert_policy(alert_policy=policy(name=f"{PARENT}/alertPolicies/404"))
    foreign = [{**BODY["conditions"][0], "name": f"{PARENT}/alertPolicies/1/conditions/2"}]
    with pytest.raises(gexc.InvalidArgument, match="is no condition of"):
        client.update_alert_policy(alert_policy=policy(name=made.name, conditions=foreign))
    with pytest.raises(gexc.InvalidArgument, match="update_mask"):
        client.update_alert_policy(alert_policy=policy(name=made.name),
                                   update_mask=field_mask_pb2.FieldMask(paths=["no_such_field"]))
    with pytest.raises(gexc.InvalidArgument, match="duration"):  # the result is checked like a new policy
        client.update_alert_policy(alert_policy=policy(name=made.name, conditions=threshold(duration="61s")),
                                   update_mask=field_mask_pb2.FieldMask(paths=["conditions"]))
    assert client.get_alert_policy(name=made.name) == made


def test_delete_then_get_is_not_found_and_list_filters_are_refused(emu, client):
    made = create(client)
    client.delete_alert_policy(name=made.name)
    with pytest.raises(gexc.NotFound):
        client.get_alert_policy(name=made.name)
    with pytest.raises(gexc.NotFound):
        client.delete_alert_policy(name=made.name)
    with pytest.raises(gexc.InvalidArgument, match="filter"):
        list(client.list_alert_policies(request={"name": PARENT, "filter": 'user_labels."managed-by" = "gpuops"'}))
    assert [(r.method, r.path.split("/")[-2]) for r in emu.requests("DELETE")] == [("DELETE", "alertPolicies")] * 2


def test_faults_before_change_nothing_and_after_lose_only_the_answer(emu, client):
    emu.faults.add(method="POST", path="alertPolicies$", status=503, mode="before")
    with pytest.raises(gexc.ServiceUnavailable):
        create(client)
    assert list(client.list_alert_policies(name=PARENT)) == []
    emu.faults.add(method="POST", path="alertPolicies$", status=429, mode="after")
    with pytest.raises(gexc.TooManyRequests):
        create(client)
    assert [p.display_name for p in client.list_alert_policies(name=PARENT)] == ["gpu busy"]
    assert [(r.status, r.fault) for r in emu.requests("POST")] == [(503, "before"), (429, "after")]


def test_every_answer_says_it_comes_from_the_emulator(emu):
    channel = grpc.insecure_channel(emu.url.removeprefix("http://"))
    call = channel.unary_unary(f"/{SERVICE}/ListAlertPolicies",
                               request_serializer=monitoring_v3.ListAlertPoliciesRequest.serialize,
                               response_deserializer=monitoring_v3.ListAlertPoliciesResponse.deserialize)
    answer, details = call.with_call(monitoring_v3.ListAlertPoliciesRequest(name=PARENT))
    assert HEADER in details.initial_metadata() and list(answer.alert_policies) == []
    channel.close()
