"""Alerts as code, Cloud Monitoring half: the planned policies (filters, thresholds, durations), and `apply` through
google-cloud-monitoring's real client over gRPC against the AlertPolicyService emulation: it creates what is
missing, a second apply changes nothing, drift is reported and updated only when asked, someone else's policy
is never touched, a dry run writes nothing, a lost answer creates one policy. Then `gpuops alerts apply` with the
Prefect automations on the session's real Prefect server."""
from __future__ import annotations

import argparse
import json
import uuid

import pytest
from google.protobuf import field_mask_pb2

from gpuops import alert_policies as plans
from gpuops import monitoring_alerts as ma
from gpuops.emulator.alert_policies_api import AlertPolicyEmulator
from gpuops.errors import BadInput, CheckFailed

SERVICE = "no-code-architects-toolkit"
CHANNEL = "projects/{}/notificationChannels/4711"


@pytest.fixture(scope="module")
def emulator():
    with AlertPolicyEmulator() as emu:
        yield emu


@pytest.fixture
def emu(emulator, monkeypatch):
    emulator.reset()
    monkeypatch.setenv(ma.ENDPOINT_ENV, emulator.url)
    yield emulator
    emulator.reset()


@pytest.fixture
def project() -> str:
    return f"gpuops-{uuid.uuid4().hex[:8]}"


def writes(emu) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in emu.requests() if r.method != "GET"]


def by_key(policies: list[dict]) -> dict[str, dict]:
    return {p["userLabels"][plans.ALERT_LABEL]: p for p in policies}


# ---------------------------------------------------------------- the plan


def test_the_plan_holds_the_runbook_thresholds_on_cloud_runs_metrics(project):
    policies = by_key(plans.plan(plans.target(project, SERVICE, ["4711"])))
    expected = {  # key: (metric, threshold, aligner)
        "gpu-utilization": ("run.googleapis.com/container/gpu/utilizations", 0.95, "ALIGN_PERCENTILE_99"),
        "gpu-memory": ("run.googleapis.com/container/gpu/memory_utilizations", 0.90, "ALIGN_PERCENTILE_99"),
        "cpu": ("run.googleapis.com/container/cpu/utilizations", 0.90, "ALIGN_PERCENTILE_99"),
        "memory": ("run.googleapis.com/container/memory/utilizations", 0.90, "ALIGN_PERCENTILE_99"),
        "latency": ("run.googleapis.com/request_latencies", 30_000.0, "ALIGN_PERCENTILE_95"),
    }
    assert set(policies) == set(expected)
    for key, (metric, value, aligner) in expected.items():
        policy = policies[key]
        [condition] = policy["conditions"]
        threshold = condition["conditionThreshold"]
        assert threshold["filter"] == (f'resource.type = "cloud_run_revision" AND resource.labels.service_name = '
                                       f'"{SERVICE}" AND metric.type = "{metric}"')
        assert (threshold["comparison"], threshold["thresholdValue"], threshold["duration"]) == (
            "COMPARISON_GT", value, "300s")
        assert threshold["aggregations"] == [{"alignmentPeriod": "60s", "perSeriesAligner": aligner}]
        assert policy["displayName"].startswith(f"gpuops: {SERVICE} ")
        assert policy["userLabels"] == {"managed-by": "gpuops", "gpuops-alert": key, "gpuops-service": SERVICE}
        assert policy["notificationChannels"] == [CHANNEL.format(project)]
        assert policy["enabled"] is True and policy["combiner"] == "OR"
        ma.from_dict(policy)  # every field is one the AlertPolicy type has
    assert policies["gpu-utilization"]["displayName"] == f"gpuops: {SERVICE} GPU utilisation over 95% for 5 minutes"
    assert "5分継続" in policies["gpu-utilization"]["documentation"]["content"]
    assert policies["latency"]["displayName"].endswith("response time p95 over 30 s for 5 minutes")


@pytest.mark.parametrize("project, service, channels, flag", [
    ("My_Project", SERVICE, [], "--project"),
    ("abc", SERVICE, [], "--project"),
    ("good-project", "Bad_Service", [], "--service"),
    ("good-project", SERVICE, ["projects/p/topics/t"], "--notification-channel"),
    ("good-project", SERVICE, ["slack alerts"], "--notification-channel"),
])
def test_bad_input_names_the_flag_and_the_fix(project, service, channels, flag):
    with pytest.raises(BadInput) as refused:
        plans.target(project, service, channels)
    assert flag in str(refused.value) and ": " in str(refused.value)


def test_a_bare_channel_id_is_the_projects_and_channels_are_kept_once_in_order():
    where = plans.target("good-project", SERVICE, ["9", CHANNEL.format("other-project"), "9"])
    assert where.channels == ("projects/good-project/notificationChannels/9",
                              "projects/other-project/notificationChannels/4711")


# ---------------------------------------------------------------- apply against the emulation


def _apply(project: str, *, channels=("4711",), update: bool = False, dry_run: bool = False) -> dict:
    ap = ma.connect()
    return ma.apply(ap, ma.prepare(ap, plans.target(project, SERVICE, channels)), update=update, dry_run=dry_run)


def test_apply_creates_what_is_missing_and_a_second_apply_changes_nothing(emu, project):
    first = _apply(project)
    assert first["counts"] == {"created": 5} and first["ok"] and first["emulator"]
    assert "not Google" in first["endpoint"]
    assert len(writes(emu)) == 5 and {m for m, _ in writes(emu)} == {"POST"}
    stored = ma.list_policies(ma.connect(), project)
    assert by_key(stored).keys() == by_key(plans.plan(plans.target(project, SERVICE))).keys()
    assert sorted(p["policy"] for p in first["policies"]) == sorted(p["name"] for p in stored)

    emu.faults.clear_requests()
    second = _apply(project)
    assert second["counts"] == {"in-sync": 5} and second["ok"]
    assert writes(emu) == [] and [r.method for r in emu.requests()] == ["GET"]
    assert ma.list_policies(ma.connect(), project) == stored


def test_drift_is_reported_and_updated_only_with_update_keeping_a_pause_and_others_labels(emu, project):
    _apply(project)
    ap = ma.connect()
    gpu = by_key(ma.list_policies(ap, project))["gpu-utilization"]
    gpu["conditions"][0]["conditionThreshold"]["thresholdValue"] = 0.5  # someone edits it in the console
    gpu["enabled"] = False  # and pauses it
    gpu["userLabels"]["team"] = "ml-ops"
    mask = field_mask_pb2.FieldMask(paths=["conditions", "enabled", "user_labels"])
    ap.client.update_alert_policy(alert_policy=ma.from_dict(gpu), update_mask=mask)
    emu.faults.clear_requests()

    drift = _apply(project)
    [item] = [p for p in drift["policies"] if p["alert"] == "gpu-utilization"]
    assert item["action"] == "differs" and not drift["ok"]
    assert item["differences"] == ["conditions[0].conditionThreshold.thresholdValue: 0.5 -> 0.95"]
    assert "paused" in item["disabled"]
    assert drift["counts"] == {"differs": 1, "in-sync": 4} and writes(emu) == []

    assert _apply(project, dry_run=True, update=True)["counts"] == {"in-sync": 4, "would-update": 1}
    assert writes(emu) == []
    updated = _apply(project, update=True)
    assert updated["counts"] == {"in-sync": 4, "updated": 1} and updated["ok"]
    assert writes(emu) == [("PATCH", f"/v3/{gpu['name']}")]
    now = by_key(ma.list_policies(ap, project))["gpu-utilization"]
    assert now["conditions"][0]["conditionThreshold"]["thresholdValue"] == 0.95
    assert now["enabled"] is False and now["userLabels"]["team"] == "ml-ops"  # left paused, their label kept
    assert _apply(project)["counts"] == {"in-sync": 5}


def test_a_changed_channel_list_is_drift_too(emu, project):
    _apply(project)
    moved = _apply(project, channels=("4711", "4712"))
    assert moved["counts"] == {"differs": 5}
    assert all("notificationChannels" in p["differences"][0] for p in moved["policies"])


def test_a_policy_without_the_label_is_never_touched_and_one_with_our_name_blocks_every_write(emu, project):
    ap = ma.connect()
    theirs = ma.create_policy(ap, project, {**plans.plan(plans.target(project, "their-service"))[2],
                                            "userLabels": {"team": "web"}})
    result = _apply(project)
    assert result["counts"] == {"created": 5} and result["foreign_left_alone"] == 1
    assert ma.get_policy(ap, theirs["name"]) == theirs
    assert not [w for w in writes(emu) if theirs["name"] in w[1]]

    other = f"gpuops-{uuid.uuid4().hex[:8]}"
    mine = plans.plan(plans.target(other, SERVICE, ["4711"]))[0]
    squatter = ma.create_policy(ap, other, {**mine, "userLabels": {}})  # our display name, not our label
    emu.faults.clear_requests()
    refused = _apply(other)
    assert not refused["ok"] and "nothing was written" in refused["refused"]
    assert refused["counts"] == {"refused": 1, "would-create": 4}
    [item] = [p for p in refused["policies"] if p["action"] == "refused"]
    assert squatter["name"] in item["reason"] and "managed-by=gpuops" in item["reason"]
    assert writes(emu) == [] and ma.get_policy(ap, squatter["name"]) == squatter


def test_a_dry_run_prints_the_policies_and_writes_nothing(emu, project):
    result = _apply(project, dry_run=True)
    assert result["counts"] == {"would-create": 5} and result["plan"] == plans.plan(
        plans.target(project, SERVICE, ["4711"]))
    assert writes(emu) == [] and ma.list_policies(ma.connect(), project) == []


def test_a_lost_create_answer_is_read_back_not_sent_twice_and_a_busy_list_is_retried(emu, project):
    emu.faults.add(method="GET", path="alertPolicies$", status=503, times=2)
    emu.faults.add(method="POST", path="alertPolicies$", status=503, mode="after")
    result = _apply(project)
    assert result["counts"] == {"created": 5}
    assert len(ma.list_policies(ma.connect(), project)) == 5  # the lost one was found, not created again
    assert [r.status for r in emu.requests("POST")] == [503, 200, 200, 200, 200]


def test_an_unreachable_api_is_a_transient_error_after_retries(monkeypatch, project):
    from google.api_core import exceptions as gexc

    monkeypatch.setenv(ma.ENDPOINT_ENV, "http://127.0.0.1:9")
    with pytest.raises(gexc.ServiceUnavailable):
        ma.prepare(ma.connect(), plans.target(project, SERVICE))


# ---------------------------------------------------------------- gpuops alerts apply


def _parser() -> argparse.ArgumentParser:
    from gpuops_cli import alerts_cli

    parser = argparse.ArgumentParser(prog="gpuops")
    alerts_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser


def _run(*argv: str):
    args = _parser().parse_args(["alerts", "apply", *argv])
    return args.run(args)


def test_the_command_without_automations_applies_the_policies(emu, project, capsys):
    result = _run("--project", project, "--service", SERVICE, "--notification-channel", "4711",
                  "--no-automations", "--json")
    assert result["ok"] and result["monitoring"]["counts"] == {"created": 5}
    assert result["automations"] == {"skipped": "--no-automations"}
    with pytest.raises(CheckFailed):  # no channel given this time: drift, reported, not applied
        _run("--project", project, "--service", SERVICE, "--no-automations", "--dry-run")  # text: the plan
    out = capsys.readouterr().out
    assert json.loads(out[:out.index("\n]\n") + 2])[0]["displayName"].startswith("gpuops: ")
    assert "differs" in out and "notificationChannels: ['projects/" in out
    with pytest.raises(CheckFailed) as drift:
        _run("--project", project, "--service", SERVICE, "--no-automations")
    assert "--update" in str(drift.value)
    assert {m for m, _ in writes(emu)} == {"POST"}


def test_the_command_refuses_bad_input_before_reading(emu, monkeypatch):
    monkeypatch.delenv("GPUOPS_ALERTS_BLOCK", raising=False)
    with pytest.raises(BadInput, match="--notification-block"):
        _run("--project", "good-project", "--service", SERVICE)
    with pytest.raises(BadInput, match="TYPE/NAME"):
        _run("--project", "good-project", "--service", SERVICE, "--notification-block", "gpuops-alerts")
    with pytest.raises(BadInput, match="--project"):
        _run("--project", "X", "--service", SERVICE, "--no-automations")
    assert emu.requests() == []


def test_parse_automations_reads_each_line_of_deployments_automations():
    from gpuops_cli.alerts_cli import parse_automations

    out = ("Prefect API: http://127.0.0.1:1/api\n"
           "differs      gpuops: GPU deployment failed 3 runs in a row: not updated, run with --update\n"
           "would create gpuops: GPU pool backlog over 100 for 10 minutes\n"
           "2 automation(s): 0 error(s), 2 pending change(s) (dry run)\n")
    assert [(a["action"], a["name"]) for a in parse_automations(out)] == [
        ("differs", "gpuops: GPU deployment failed 3 runs in a row"),
        ("would-create", "gpuops: GPU pool backlog over 100 for 10 minutes")]


def test_a_refusal_of_deployments_automations_is_bad_input_or_could_not_run():
    from gpuops.errors import CouldNotRun
    from gpuops_cli.alerts_cli import refusal

    unset = refusal("custom-webhook/a", "PREFECT_API_URL is not set; point it at the Prefect API to apply to")
    assert isinstance(unset, BadInput) and "--no-automations" in str(unset)
    missing = refusal("custom-webhook/a", "notification block 'custom-webhook/a' is not saved on this Prefect API")
    assert isinstance(missing, BadInput) and "--notification-block" in str(missing)
    down = refusal("custom-webhook/a", "Prefect API at http://127.0.0.1:1/api is unreachable: refused")
    assert isinstance(down, CouldNotRun) and "unreachable" in str(down)


@pytest.fixture
def automations_server(prefect_api, monkeypatch):
    """The session's Prefect server with a notification block and none of gpuops' automations; cleaned after."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from deployments import automations as am

    def clear():
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            for name in (am.BACKLOG_NAME, am.FAILURES_NAME):
                for found in client.read_automations_by_name(name):
                    client.delete_automation(found.id)

    CustomWebhookNotificationBlock(name="gpuops-alerts", url="http://127.0.0.1:9/webhook/alerts").save("alerts-cli-test", overwrite=True)
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    clear()
    yield am
    clear()


def test_the_command_applies_the_prefect_automations_too_and_a_second_run_changes_nothing(
        emu, project, automations_server, capfd, monkeypatch):
    from gpuops_cli import cli

    common = ["--project", project, "--service", SERVICE, "--notification-block", "custom-webhook/alerts-cli-test"]
    if "gpuops_cli.alerts_cli" not in cli.COMMAND_MODULES:  # until the lead lists it
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "gpuops_cli.alerts_cli"))
    capfd.readouterr()
    assert cli.main(["alerts", "apply", *common, "--json"]) == 0
    first = json.loads(capfd.readouterr().out)  # exactly one JSON object on stdout
    assert first["monitoring"]["counts"] == {"created": 5}
    assert {(a["action"], a["name"]) for a in first["automations"]["automations"]} == {
        ("created", automations_server.BACKLOG_NAME), ("created", automations_server.FAILURES_NAME)}

    assert cli.main(["alerts", "apply", *common, "--json"]) == 0
    second = json.loads(capfd.readouterr().out)
    assert second["monitoring"]["counts"] == {"in-sync": 5}
    assert second["automations"]["counts"] == {"in-sync": 2} and second["ok"]

    assert cli.main(["alerts", "apply", *common, "--notification-block", "custom-webhook/no-such", "--json"]) == 2
    refused = json.loads(capfd.readouterr().out)
    assert refused["error"] == "bad-input" and "is not saved on this Prefect API" in refused["message"]
    assert {m for m, _ in writes(emu)} == {"POST"} and len(writes(emu)) == 5
