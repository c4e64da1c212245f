"""Flow ec2-gpu-migration against moto over real HTTP, its hosts reached through the network stand-in, on the
session's Prefect server: launch, checks, the Elastic IP switched only after health passes, the audit, the
approval before stopping the old instance, and resuming or rolling back from the tags after a crash."""
from __future__ import annotations

import json
import threading

import httpx
import pytest

from gpuops.errors import BadInput, CheckFailed, CouldNotRun
from gpuops.traffic import CanaryState

from tests.flows.approvals import answer

FLOW = "ec2-gpu-migration"
FAIL_TAG, LATENCY_TAG = "gpuops-emulator:app-fail", "gpuops-emulator:app-latency-ms"


@pytest.fixture(autouse=True)
def prefect(prefect_api):
    return prefect_api


def migrate(world, **overrides) -> dict:
    from flows.ec2_gpu_migration import ec2_gpu_migration

    params = {"elastic_ip": world.elastic_ip, "ami_ssm_parameter": world.ami_parameter, "latency_target_ms": 1000.0,
              "running_within_s": 30, "answering_within_s": 20, "ask_to_stop_old": False}
    return ec2_gpu_migration(**{**params, **overrides})


def approving(prefect_api, note="the T4 instance serves; stop the old one", approve=True) -> threading.Thread:
    """An approver answering the paused run through the Prefect API, as from the UI's Resume form."""
    thread = threading.Thread(target=answer, args=(prefect_api, FLOW, {"approve": approve, "note": note}),
                              daemon=True)
    thread.start()
    return thread


def address(world) -> dict:
    return world.ec2.describe_addresses(AllocationIds=[world.allocation_id])["Addresses"][0]


def instance(world, instance_id: str) -> dict:
    return world.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def gpu_instances(world) -> list[dict]:
    """The instances launched to take over this world's Elastic IP."""
    mine = [{"Name": "tag:gpuops:migration-of", "Values": [world.allocation_id]}]
    answer = world.ec2.describe_instances(Filters=mine)
    return [i for r in answer["Reservations"] for i in r["Instances"]]


def recorded(world) -> CanaryState:
    tags = {t["Key"]: t["Value"] for t in address(world).get("Tags", [])}
    return CanaryState.from_json(tags["gpuops:rollout"])


def through_the_elastic_ip(world, path="/healthz") -> httpx.Response:
    with httpx.Client(proxy=world.network.url, trust_env=False, timeout=20) as client:
        return client.get(f"http://{world.elastic_ip}:55433{path}")


def test_the_migration_switches_the_ip_after_the_checks_and_stops_the_old_instance_on_approval(world, prefect_api,
                                                                                                 artifact_text):
    assert through_the_elastic_ip(world).json()["revision"] == world.instance_id  # the t3.large serves
    approver = approving(prefect_api)
    result = migrate(world, ask_to_stop_old=True, need_vram_gib=12, tags={"team": "ml"})
    approver.join(30)
    new_id = result["new"]["id"]
    assert result["outcome"] == "migrated" and new_id != world.instance_id
    new = instance(world, new_id)
    assert new["InstanceType"] == "g4dn.xlarge" and new["ImageId"] == world.image_id  # the AMI from the parameter
    assert {"Key": "team", "Value": "ml"} in new["Tags"] and new["KeyName"] == world.key_name
    assert address(world)["InstanceId"] == new_id and recorded(world).phase == "promoted"
    # Verified through the address: the stand-in routes it to the new instance's emulated T4 host.
    assert through_the_elastic_ip(world).json()["revision"] == new_id
    assert through_the_elastic_ip(world, "/gpu-probe").json()["gpus"][0]["name"] == "Tesla T4"
    windows = result["latency"]
    assert [w["percent"] for w in windows] == [0, 100] and all(len(w["samples_ms"]) == 5 for w in windows)
    assert world.elastic_ip in windows[1]["url"] and world.elastic_ip not in windows[0]["url"]
    assert result["gpu"]["emulated"] and result["gpu"]["gpus"][0]["memory_total_mib"] == 15360
    assert result["availability"]["requests"] > 0 and result["availability"]["failed"] == 0
    assert instance(world, world.instance_id)["State"]["Name"] == "stopped"  # approved, then stopped
    assert "stopped on approval" in result["old_instance"]
    report = artifact_text(result["report_artifact"])
    for measured in ("mean", "How: 5 sequential GET", "EMULATED", "failed of", "SSM parameter"):
        assert measured in report
    assert "**Estimates**" in report and "ap-northeast-1" in report
    assert "gpuops ec2-migrate" not in json.dumps(result["history"])  # a clean run needs no instructions


def test_a_failing_health_check_leaves_the_ip_on_the_old_instance(world):
    # The new instance answers, but slower than the target: the gate at 0% fails before any switch.
    with pytest.raises(CheckFailed, match="above the 50 ms target") as failed:
        migrate(world, latency_target_ms=50, tags={LATENCY_TAG: "120"})
    assert address(world)["InstanceId"] == world.instance_id
    state = recorded(world)
    assert state.phase == "rolled-back" and state.stable == world.instance_id
    assert f"stays on {world.instance_id}" in str(failed.value) and "terminate-instances" in str(failed.value)
    assert through_the_elastic_ip(world).json()["revision"] == world.instance_id  # users still reach the old app
    assert instance(world, world.instance_id)["State"]["Name"] == "running"  # nothing stopped
    [candidate] = gpu_instances(world)
    assert instance(world, candidate["InstanceId"])["State"]["Name"] == "running"  # left for inspection


def test_an_app_that_never_answers_healthy_is_given_up_without_touching_the_ip(world, artifact_text):
    with pytest.raises(CouldNotRun, match="did not answer") as stopped:
        migrate(world, tags={FAIL_TAG: "all"}, answering_within_s=2)
    assert address(world)["InstanceId"] == world.instance_id and "gpuops:rollout" not in json.dumps(address(world))
    assert "run the same command again to resume" in str(stopped.value).lower()
    # The report names the launched instance and how to go on, not "stopped before any change".
    [candidate] = gpu_instances(world)
    report = artifact_text(f"ec2-migration-{world.allocation_id}")
    assert "stopped before any change" not in report and "stopped part-way" in report
    assert "## Next" in report and f"resume: `gpuops ec2-migrate --elastic-ip {world.elastic_ip}" in report
    assert f"terminate-instances --instance-ids {candidate['InstanceId']}" in report


def test_a_card_short_of_vram_fails_the_gpu_probe_before_the_switch(world):
    with pytest.raises(CheckFailed, match="GPU probe on i-.* failed") as failed:
        migrate(world, need_vram_gib=20)  # a T4 reads 15360 MiB
    assert ".." not in str(failed.value)
    assert address(world)["InstanceId"] == world.instance_id


def test_the_world_open_ssh_rule_is_flagged_and_nothing_is_launched(runbook_world, artifact_text):
    with pytest.raises(CheckFailed, match="security audit") as refused:
        migrate(runbook_world)
    finding = refused.value.details[0]
    assert finding["ports"] == [22] and finding["source"] == "0.0.0.0/0"
    assert f"revoke-security-group-ingress --group-id {runbook_world.security_group_id}" in finding["fix"]
    assert gpu_instances(runbook_world) == []  # refused before the first write
    assert address(runbook_world)["InstanceId"] == runbook_world.instance_id
    assert "refused by the security audit" in artifact_text(f"ec2-migration-{runbook_world.allocation_id}")


def test_report_mode_migrates_with_the_findings_and_internal_ports_are_watched(runbook_world):
    result = migrate(runbook_world, security_findings="report", internal_ports=[8001, 50021])
    assert result["outcome"] == "migrated"
    ports = sorted(p for f in result["security_findings"] for p in f["ports"])
    assert ports == [22, 8001, 50021]  # the runbook's GPU service and TTS engine, open to the world


def test_no_answer_to_the_approval_leaves_the_old_instance_running(world, artifact_text):
    result = migrate(world, ask_to_stop_old=True, stop_approval_timeout_s=2)
    assert "left running: no answer in time" in result["old_instance"]
    assert instance(world, world.instance_id)["State"]["Name"] == "running"
    again = migrate(world, ask_to_stop_old=False)  # a re-run finds the migration done, launches nothing
    assert again["outcome"] == "already-migrated" and len(gpu_instances(world)) == 1
    # Its report is its own: the measured report of the run that migrated stays.
    assert again["report_artifact"] == f"ec2-migration-{world.allocation_id}-rerun"
    measured, rerun = artifact_text(result["report_artifact"]), artifact_text(again["report_artifact"])
    assert "Not measured" not in measured and "mean" in measured
    assert "already migrated at" in rerun and "changed no traffic" in rerun


class Crash(BaseException):
    """The process dying after the switch, before the check through the Elastic IP."""


def crash_after_the_switch(world) -> str:
    """A run of the rollout engine with the Elastic IP backend whose process dies right after the switch."""
    from prefect import flow

    from gpuops import ec2
    from gpuops.rollout.elastic_ip import ElasticIpBackend
    from gpuops.rollout.engine import Observation, Plan, Rollout
    from gpuops.traffic import Gates, Window

    api = ec2.Ec2()
    spec = ec2.LaunchSpec("g4dn.xlarge", world.image_id, world.subnet_id, (world.security_group_id,), None,
                          {ec2.MIGRATION_TAG: world.allocation_id})
    candidate = ec2.launch(api, spec, f"crash-{world.allocation_id}")

    def observe(urls, state):
        if state.percent == 100:
            raise Crash()
        return Observation(Window(requests=5, errors=0, latencies_ms=(5.0,) * 5))

    @flow(name="crashing-ec2-switch")
    def crashing():
        backend = ElasticIpBackend(api, world.allocation_id, 55433, candidate.id)
        Rollout(backend, Plan(steps=(100,), gates=Gates(min_requests=5), window_s=0), observe=observe,
                notify=lambda *a: None, api=api.label(), flow_run_id="crashed-run").run()

    with pytest.raises(Crash):
        crashing()
    return candidate.id


def test_a_crash_after_the_switch_resumes_from_the_tags(world):
    candidate = crash_after_the_switch(world)
    state = recorded(world)
    assert (state.percent, state.live, address(world)["InstanceId"]) == (100, True, candidate)
    result = migrate(world)  # the same command again: resumes, verifies through the address, promotes
    assert result["outcome"] == "migrated" and result["new"]["id"] == candidate
    assert [w["percent"] for w in result["latency"]] == [100]  # only the check the crash skipped
    assert recorded(world).phase == "promoted" and len(gpu_instances(world)) == 1  # nothing launched again


def test_a_rollback_after_a_crash_moves_the_ip_back_and_refuses_stale_records(world):
    candidate = crash_after_the_switch(world)
    result = migrate(world, rollback=True)
    assert result["serving"] == world.instance_id and address(world)["InstanceId"] == world.instance_id
    assert "answers healthy through the Elastic IP" in result["verified"]
    assert recorded(world).phase == "rolled-back"
    assert through_the_elastic_ip(world).json()["revision"] == world.instance_id
    # Someone moves the address by hand: a plain rollback refuses; naming the instance moves it.
    world.ec2.associate_address(AllocationId=world.allocation_id, InstanceId=candidate, AllowReassociation=True)
    other = world.ec2.run_instances(ImageId=world.image_id, InstanceType="t3.large", MinCount=1, MaxCount=1)
    stranger = other["Instances"][0]["InstanceId"]
    world.ec2.associate_address(AllocationId=world.allocation_id, InstanceId=stranger, AllowReassociation=True)
    with pytest.raises(CheckFailed, match="never set"):
        migrate(world, rollback=True)
    assert address(world)["InstanceId"] == stranger
    assert migrate(world, rollback_to=world.instance_id)["serving"] == world.instance_id


def test_a_write_refuses_when_the_address_changed_since_this_runs_last_write(world):
    from gpuops import ec2
    from gpuops.rollout.elastic_ip import ElasticIpBackend

    api = ec2.Ec2()
    backend = ElasticIpBackend(api, world.allocation_id, 55433, candidate_id="i-0123456789abcdef0")
    backend.read()
    state = backend.deploy_candidate((0, 100), "run-1")
    world.ec2.create_tags(Resources=[world.allocation_id], Tags=[{"Key": "gpuops:rollout", "Value": "{}"}])
    with pytest.raises(CheckFailed, match="changed since this run last wrote it"):
        backend.set_split(state.__class__(**{**state.__dict__, "step": 1}))
    assert address(world)["InstanceId"] == world.instance_id  # not moved


def test_bad_input_is_refused_before_any_write(world):
    with pytest.raises(BadInput, match="instance_type .* has no GPU"):
        migrate(world, instance_type="t3.xlarge")
    with pytest.raises(BadInput, match="ami_ssm_parameter .* does not exist"):
        migrate(world, ami_ssm_parameter="/gpuops/none")
    with pytest.raises(BadInput, match="no such Elastic IP"):
        migrate(world, elastic_ip="198.51.100.1")
    with pytest.raises(BadInput, match="latency_target_ms"):
        migrate(world, latency_target_ms=-1)
    assert gpu_instances(world) == [] and "gpuops:rollout" not in json.dumps(address(world))


def test_a_launch_whose_answer_is_lost_makes_one_instance(world):
    from gpuops import ec2

    api = ec2.Ec2()
    spec = ec2.LaunchSpec("g4dn.xlarge", world.image_id, None, (), None, {ec2.MIGRATION_TAG: world.allocation_id})
    world.moto.fail_action("RunInstances", after=True)  # launched, and the answer lost
    first = ec2.launch(api, spec, f"lost-answer-{world.allocation_id}")
    assert world.moto.injected and ec2.launch(api, spec, f"lost-answer-{world.allocation_id}").id == first.id
    assert len(gpu_instances(world)) == 1


def test_the_network_stand_in_refuses_addresses_no_running_instance_holds(world):
    with httpx.Client(proxy=world.network.url, trust_env=False, timeout=20) as client:
        assert client.get("http://198.51.100.9:55433/healthz").status_code == 502
        assert client.get(f"http://{world.elastic_ip}:22/").status_code == 502  # only the app's port answers
        world.ec2.stop_instances(InstanceIds=[world.instance_id])
        refused = client.get(f"http://{world.elastic_ip}:55433/healthz")
    assert refused.status_code == 502 and "stopped" in refused.json()["error"]


def test_a_rerun_does_not_stop_the_old_instance_while_the_new_one_is_stopped(world):
    first = migrate(world)  # migrated, the old instance left running (ask_to_stop_old off)
    new_id = first["new"]["id"]
    world.ec2.stop_instances(InstanceIds=[new_id])  # the new instance stops: the Elastic IP answers 502
    with pytest.raises(CheckFailed, match=f"not stopping {world.instance_id}") as refused:
        migrate(world, ask_to_stop_old=True, stop_approval_timeout_s=30)  # no approver: refused before asking
    assert f"{new_id} is stopped" in str(refused.value) and "left running" in str(refused.value)
    assert instance(world, world.instance_id)["State"]["Name"] == "running"


def test_the_new_instance_is_checked_again_after_the_approval(world, prefect_api):
    new_id = migrate(world)["new"]["id"]

    def stop_new_then_approve():
        from tests.flows.approvals import paused_run

        paused_run(FLOW)
        world.ec2.stop_instances(InstanceIds=[new_id])  # it stops while the question waits
        answer(prefect_api, FLOW, {"approve": True, "note": "stop it"})

    approver = threading.Thread(target=stop_new_then_approve, daemon=True)
    approver.start()
    with pytest.raises(CheckFailed, match="after the approval"):
        migrate(world, ask_to_stop_old=True)
    approver.join(30)
    assert instance(world, world.instance_id)["State"]["Name"] == "running"


def test_a_rerun_after_a_rollback_checks_the_new_instance_at_its_own_address(world):
    candidate = crash_after_the_switch(world)
    migrate(world, rollback=True)
    stale = instance(world, candidate).get("PublicIpAddress")
    result = migrate(world)  # reuses the candidate: checked at its own address, not the Elastic IP's holder
    before = result["latency"][0]
    assert result["new"]["id"] == candidate and before["percent"] == 0
    assert world.elastic_ip not in before["url"], (stale, before["url"])
    assert instance(world, candidate)["PrivateIpAddress"] in before["url"] or stale != world.elastic_ip


def test_a_rollback_onto_an_app_that_does_not_answer_says_so(world):
    crash_after_the_switch(world)
    broken = world.ec2.run_instances(ImageId=world.image_id, InstanceType="t3.large", MinCount=1, MaxCount=1,
                                     TagSpecifications=[{"ResourceType": "instance",
                                                         "Tags": [{"Key": FAIL_TAG, "Value": "all"}]}])
    broken_id = broken["Instances"][0]["InstanceId"]  # it runs; its app answers 500
    with pytest.raises(CheckFailed, match="back on .* but its app does not answer healthy"):
        migrate(world, rollback=True, rollback_to=broken_id)
    assert address(world)["InstanceId"] == broken_id  # moved all the same, and said so
