"""`gpuops ec2-migrate`: the EC2 GPU migration (flow ec2-gpu-migration) from the shell, with the flow's parameters."""
from __future__ import annotations

import argparse
from contextlib import contextmanager

from gpuops.errors import BadInput

DLAMI_HELP = "the Deep Learning Base OSS Nvidia Driver GPU AMI (Amazon Linux 2023) parameter"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "ec2-migrate", help="move an app behind an Elastic IP from its CPU instance to a new GPU instance "
                            "(flow ec2-gpu-migration): launch, check, switch, verify; stop the old one on approval")
    p.add_argument("--elastic-ip", required=True, help="the Elastic IP's address or allocation ID (eipalloc-...)")
    p.add_argument("--region", help="AWS region (default AWS_DEFAULT_REGION)")
    p.add_argument("--instance-type", default="g4dn.xlarge", help="GPU instance type (default g4dn.xlarge, one T4)")
    p.add_argument("--ami-id", help="AMI to launch (default: the one --ami-ssm-parameter holds)")
    p.add_argument("--ami-ssm-parameter", help=f"SSM parameter holding the AMI ID (default: {DLAMI_HELP})")
    p.add_argument("--key-name", help="key pair (default: the old instance's)")
    p.add_argument("--subnet-id", help="subnet (default: the old instance's)")
    p.add_argument("--security-group-ids", nargs="+", metavar="SG", help="security groups (default: the old one's)")
    p.add_argument("--tags", nargs="+", metavar="KEY=VALUE", help="extra tags for the new instance")
    p.add_argument("--app-port", default=55433, help="the app's port (default 55433)")
    p.add_argument("--health-path", default="/healthz", help="the app's health endpoint (default /healthz)")
    p.add_argument("--latency-samples", default=5, help="health requests per check (default 5)")
    p.add_argument("--latency-target-ms", default=50.0, help="mean health latency each check must stay under (50)")
    p.add_argument("--need-vram-gib", help="VRAM the app needs, checked against the card's nvidia-smi reading")
    p.add_argument("--min-compute-cap", default="7.0", help="lowest CUDA compute capability (default 7.0)")
    p.add_argument("--internal-ports", nargs="+", metavar="PORT",
                   help="internal services' ports that must not be open to the internet (SSH and database "
                        "ports are always checked)")
    p.add_argument("--security-findings", default="refuse", choices=["refuse", "report"],
                   help="refuse (default): a world-open SSH or internal port stops the run before launching; "
                        "report: migrate anyway, findings in the report")
    p.add_argument("--running-within-s", default=600.0, help="bound for the new instance to run (default 600)")
    p.add_argument("--answering-within-s", default=600.0, help="bound for its app to answer (default 600)")
    p.add_argument("--ask-to-stop-old", action=argparse.BooleanOptionalAction, default=True,
                   help="after the switch, ask for an approval to stop the old instance (default: ask)")
    p.add_argument("--stop-approval-timeout-s", default=3600, help="how long to wait for it (default 3600)")
    p.add_argument("--rollback", action="store_true", help="move the Elastic IP back to the recorded old instance")
    p.add_argument("--rollback-to", metavar="INSTANCE", help="with --rollback: the instance to move it to")
    p.add_argument("--notification-block", metavar="TYPE/NAME", help="a Prefect notification block to tell")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (logs go to stderr)")
    p.set_defaults(run=_ec2_migrate, uses_prefect=True)


def tags(given: list[str] | None) -> dict[str, str] | None:
    if not given:
        return None
    pairs = [item.partition("=") for item in given]
    bad = next((item for item, (key, eq, _) in zip(given, pairs) if not (key and eq)), None)
    if bad is not None:
        raise BadInput(f"tags (--tags) {bad!r} is not KEY=VALUE: pass e.g. --tags Name=app-gpu team=ml.")
    return {key: value for key, _, value in pairs}


def flow_parameters(args) -> dict:
    """The flow's parameters from the command line, checked whole before a flow run exists."""
    from gpuops import ec2_request

    given = dict(
        elastic_ip=args.elastic_ip, region=args.region, instance_type=args.instance_type, ami_id=args.ami_id,
        ami_ssm_parameter=args.ami_ssm_parameter, key_name=args.key_name, subnet_id=args.subnet_id,
        security_group_ids=args.security_group_ids, tags=tags(args.tags), app_port=args.app_port,
        health_path=args.health_path, latency_samples=args.latency_samples, latency_target_ms=args.latency_target_ms,
        need_vram_gib=args.need_vram_gib, min_compute_cap=args.min_compute_cap, internal_ports=args.internal_ports,
        security_findings=args.security_findings, running_within_s=args.running_within_s,
        answering_within_s=args.answering_within_s, ask_to_stop_old=args.ask_to_stop_old,
        stop_approval_timeout_s=args.stop_approval_timeout_s, rollback=args.rollback, rollback_to=args.rollback_to,
        notification_block=args.notification_block)
    checked = ec2_request.check(**{k: v for k, v in given.items() if k != "notification_block"})
    # The flow gets typed values (the checked ones), so its own check passes on what was checked here.
    return {**given, "app_port": checked.app_port, "latency_samples": checked.latency_samples,
            "latency_target_ms": checked.latency_target_ms, "need_vram_gib": checked.need_vram_gib,
            "internal_ports": list(checked.internal_ports) if args.internal_ports else None,
            "running_within_s": checked.running_within_s, "answering_within_s": checked.answering_within_s,
            "stop_approval_timeout_s": checked.stop_approval_timeout_s,
            "ami_ssm_parameter": checked.ami_ssm_parameter}


def _ec2_migrate(args):
    """The flow in this process. Exit 0 migrated (or rolled back as asked), 1 a check said no, 2 bad input,
    3 could not run (the message says what was left and how to resume or roll back)."""
    parameters = flow_parameters(args)
    from flows.ec2_gpu_migration import ec2_gpu_migration

    with sigterm_as_interrupt():
        return ec2_gpu_migration(**parameters)


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM (a `kill`, a supervisor's stop) answered like Ctrl-C: one JSON object and exit 3 saying what was
    left, instead of a silent death mid-migration. Inside the flow Prefect's own bridge turns it into
    TerminationSignal, which the flow answers the same way; this covers the moments around the flow."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        before = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)
