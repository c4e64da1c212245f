"""`make demo`, part three: runbook 002's EC2 GPU migration (t3.large -> g4dn.xlarge behind an Elastic IP) on
moto, its instances reached through the network stand-in as emulated hosts (the g4dn one with a recorded T4).

The security audit refuses the runbook's world-open group and the demo fixes it as an operator would; a GPU
instance whose health is too slow is rolled back with the Elastic IP left on the old instance; then the
migration switches the address, and the demo approves stopping the old instance through the Prefect API.
"""
from __future__ import annotations

import logging
import os
import threading
from contextlib import ExitStack, contextmanager
from pathlib import Path

from gpuops_cli.demo_output import DemoFailed, expect, say, step

REGION = "ap-northeast-1"
FLOW = "ec2-gpu-migration"
ADMIN_CIDR = "203.0.113.7/32"  # the operator's address (a documentation range)
INTERNAL_PORTS = [8001, 50021]  # runbook 002's GPU service and TTS engine: callers are in the VPC


def start_ec2_stack(workdir: Path, cleanup: ExitStack) -> dict:
    """moto (EC2, SSM) and the network stand-in on 127.0.0.1, seeded with the runbook's starting point."""
    from moto.server import ThreadedMotoServer

    from gpuops.emulator.ec2_network import LABEL, Ec2Network, seed_app_host
    from gpuops.emulator.gpu_hosts import GpuHostFleet

    step("Starting the EC2 stand-ins (127.0.0.1)")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    cleanup.callback(moto.stop)
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    network = Ec2Network(endpoint, REGION, fleet=GpuHostFleet(workdir / "ec2-hosts")).start()
    cleanup.callback(network.stop)
    world = seed_app_host(endpoint, REGION)
    network.boot(world["instance_id"])
    say(f"   EC2 and SSM: moto at {endpoint} (not AWS), region {REGION}")
    say(f"   hosts: {LABEL} at {network.url} (GPUOPS_HOST_PROXY)")
    say(f"   seeded: {world['instance_id']} (t3.large, the app on :55433) behind Elastic IP {world['elastic_ip']}; "
        f"group {world['security_group_id']} open as the runbook's (22, 55433, 55434, 8001, 50021 from 0.0.0.0/0)")
    return {**world, "endpoint": endpoint, "network": network}


@contextmanager
def pointed_at(stack: dict):
    """boto3's EC2 and SSM endpoints and the host proxy, for the EC2 steps only (others reach hosts directly)."""
    wanted = {"AWS_ENDPOINT_URL_EC2": stack["endpoint"], "AWS_ENDPOINT_URL_SSM": stack["endpoint"],
              "GPUOPS_HOST_PROXY": stack["network"].url,
              "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "demo"),
              "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "demo")}
    before = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


RUNBOOK_TARGET_MS = 50.0  # runbook 002's mean health latency target
SLOW_MS = 120  # the slow GPU instance's injected health latency: any target used must stay under it


def latency_target(stack: dict) -> float:
    """The runbook's 50 ms, raised on a machine where the stand-in itself is slower: four times the live app's
    measured mean through the Elastic IP (after a warm-up), capped well below the slow instance's 120 ms so
    that a real regression still fails. Printed with its reason."""
    from gpuops.host_checks import HostClient

    with HostClient(f"http://{stack['elastic_ip']}:55433", proxy=stack["network"].url) as host:
        baseline = host.latency(5, warmup=True)
    target = min(max(RUNBOOK_TARGET_MS, round(4 * baseline.mean_ms)), SLOW_MS * 0.75)
    why = ("the runbook's" if target == RUNBOOK_TARGET_MS else
           f"raised from the runbook's {RUNBOOK_TARGET_MS:g} ms to 4x the live app's mean on this machine's stand-in, "
           f"capped at {SLOW_MS * 0.75:g} ms so the {SLOW_MS} ms instance still fails")
    say(f"   latency target {target:g} ms ({why}; the live t3.large measured mean {baseline.mean_ms} ms over "
        f"{len(baseline.samples_ms)} samples through the Elastic IP)")
    return target


def client(stack: dict):
    import boto3

    return boto3.session.Session(aws_access_key_id="demo", aws_secret_access_key="demo",
                                 region_name=REGION).client("ec2", endpoint_url=stack["endpoint"])


def migrate(stack: dict, **overrides) -> dict:
    from flows.ec2_gpu_migration import ec2_gpu_migration

    return ec2_gpu_migration(**{"elastic_ip": stack["elastic_ip"], "region": REGION,
                                "latency_target_ms": stack.get("target_ms", RUNBOOK_TARGET_MS),
                                "ami_ssm_parameter": stack["ami_parameter"], "internal_ports": INTERNAL_PORTS,
                                "running_within_s": 60, "answering_within_s": 30, **overrides})


def serving(stack: dict) -> str:
    return client(stack).describe_addresses(AllocationIds=[stack["allocation_id"]])["Addresses"][0]["InstanceId"]


def run_audit(stack: dict) -> None:
    from gpuops.errors import CheckFailed
    from gpuops_cli.demo import quiet

    step("Runbook 002  ec2-gpu-migration: the security audit runs before anything is launched")
    try:
        with quiet("prefect.flow_runs"):  # the refusal is expected: no traceback on screen
            migrate(stack)
        raise DemoFailed("the world-open group was not refused")
    except CheckFailed as exc:
        findings = exc.details
    for finding in findings:
        say(f"   finding: {finding['what']}")
    expect(len(findings) == 3, "SSH, 8001 and 50021 open to 0.0.0.0/0 refused; nothing launched")
    ec2 = client(stack)
    group = stack["security_group_id"]
    vpc = ec2.describe_subnets(SubnetIds=[stack["subnet_id"]])["Subnets"][0]["CidrBlock"]
    for finding in findings:  # the fix each finding names, as an operator applies it
        port = finding["from_port"]
        ec2.revoke_security_group_ingress(GroupId=group, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": port, "ToPort": port, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
        ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": port, "ToPort": port,
             "IpRanges": [{"CidrIp": ADMIN_CIDR if port == 22 else vpc}]}])
    say(f"   the operator applied the fixes: SSH from {ADMIN_CIDR} only, 8001 and 50021 from the subnet {vpc}")


def run_slow_candidate(stack: dict) -> None:
    from gpuops.errors import CheckFailed
    from gpuops_cli.demo import quiet

    step(f"A GPU instance whose health answers too slowly ({SLOW_MS} ms; the target is {stack['target_ms']:g} ms)")
    try:
        with quiet("prefect.flow_runs"):  # the refusal is expected: no traceback on screen
            migrate(stack, tags={"gpuops-emulator:app-latency-ms": str(SLOW_MS)}, ask_to_stop_old=False)
        raise DemoFailed("a slow instance was switched to")
    except CheckFailed as exc:
        say(f"   {str(exc).splitlines()[0][:300]}")
        rejected = exc.details[0]["history"][0]
        say(f"   window at 0% (its own address): {rejected['requests']} requests -> {rejected['verdict']}")
    expect(serving(stack) == stack["instance_id"], f"the Elastic IP stayed on {stack['instance_id']}")
    ec2 = client(stack)
    gone = [i["InstanceId"] for r in ec2.describe_instances(Filters=[
        {"Name": "tag:gpuops:migration-of", "Values": [stack["allocation_id"]]},
        {"Name": "instance-state-name", "Values": ["running"]}])["Reservations"] for i in r["Instances"]]
    ec2.terminate_instances(InstanceIds=gone)
    say(f"   the operator terminated the rejected instance {', '.join(gone)}")


def approve_when_paused(api_url: str, note: str) -> threading.Thread:
    """The operator: finds the paused run and answers its form through the Prefect API (POST .../resume)."""
    def answer() -> None:
        from gpuops.approvals import answer_paused

        answer_paused(api_url, FLOW, {"approve": True, "note": note}, timeout_s=120)
        say(f"   the operator approved through the Prefect API: {note!r}")

    thread = threading.Thread(target=answer, name="demo-operator", daemon=True)
    thread.start()
    return thread


def run_migration(stack: dict) -> dict:
    from prefect.settings import PREFECT_API_URL

    step("The migration: launch, health and GPU checks, switch the Elastic IP, verify through it, stop on approval")
    operator = approve_when_paused(PREFECT_API_URL.value(), "the T4 instance serves; stop the t3.large")
    result = migrate(stack, need_vram_gib=12)
    operator.join(30)
    new = result["new"]
    for row in result["timings"]:
        say(f"   {row['what']}: {row['seconds']} s ({row['how']})")
    for w in result["latency"]:
        say(f"   health {w['when']}: mean {w['mean_ms']} ms, min {w['min_ms']}, max {w['max_ms']} over "
            f"{len(w['samples_ms'])} samples (target < {w['target_ms']:g} ms)")
    gpu = result["gpu"]["gpus"][0]
    say(f"   GPU probe: {gpu['name']}, {gpu['memory_total_mib']} MiB, compute {gpu['compute_cap']} -> "
        f"{result['gpu']['verdict']} (EMULATED: a recorded nvidia-smi reading)")
    watch = result["availability"]
    say(f"   through the Elastic IP during the rollout: {watch['failed']} failed of {watch['requests']} requests")
    for row in result["cost"]["rows"]:
        figure = "no price" if row["usd_per_month"] is None else f"${row['usd_per_month']}/month"
        dated = "" if row["usd_per_month"] is None else f", {row['as_of']}"
        say(f"   cost ESTIMATE {row['instance_type']:12} {row['market']:9} {figure:16} ({row['source']}{dated})")
    say(f"   old instance: {result['old_instance']}")
    expect(serving(stack) == new["id"] and new["type"] == "g4dn.xlarge",
           f"the Elastic IP {stack['elastic_ip']} serves {new['id']} (g4dn.xlarge)")
    expect(watch["failed"] == 0, "no request through the Elastic IP failed during the switch")
    old_state = client(stack).describe_instances(InstanceIds=[stack["instance_id"]])
    expect(old_state["Reservations"][0]["Instances"][0]["State"]["Name"] == "stopped",
           f"{stack['instance_id']} stopped only after the approval")
    return result


def run(workdir: Path, cleanup: ExitStack) -> dict:
    stack = start_ec2_stack(workdir, cleanup)
    stack["target_ms"] = latency_target(stack)
    with pointed_at(stack):
        run_audit(stack)
        run_slow_candidate(stack)
        return run_migration(stack)


def report(result: dict) -> None:
    say(f"   EC2 migration:  artifacts {result['report_artifact']} (the report: measured figures, how, estimates "
        f"labelled), canary-{result['allocation_id']}, ec2-stop-approval-{result['allocation_id']}")
