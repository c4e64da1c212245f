"""The EC2 GPU migration's request, checked whole before anything is read or written (pure).

Every refusal names the parameter as the flow and `gpuops ec2-migrate` call it, the value, and the fix
(gpuops.params). What needs the API (does the AMI, the key, the subnet exist) is checked by the flow next,
still before its first write.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from gpuops import params, security_audit

REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")
ALLOCATION = re.compile(r"^eipalloc-[0-9a-f]{8,17}$")
AMI = re.compile(r"^ami-[0-9a-f]{8,17}$")
SUBNET = re.compile(r"^subnet-[0-9a-f]{8,17}$")
GROUP = re.compile(r"^sg-[0-9a-f]{8,17}$")
INSTANCE = re.compile(r"^i-[0-9a-f]{8,17}$")
SSM_NAME = re.compile(r"^/?[A-Za-z0-9_.\-/]{1,2047}$")
RESERVED_TAG_PREFIXES = ("aws:", "gpuops:")  # AWS's own, and the ones gpuops keeps its records in


@dataclass(frozen=True)
class MigrationRequest:
    """What the operator asked for, checked."""

    elastic_ip: str
    region: str | None
    instance_type: str
    ami_id: str | None
    ami_ssm_parameter: str
    key_name: str | None
    subnet_id: str | None
    security_group_ids: tuple[str, ...]
    tags: dict[str, str]
    app_port: int
    health_path: str
    latency_samples: int
    latency_target_ms: float
    need_vram_gib: float | None
    min_compute_cap: str
    internal_ports: tuple[int, ...]
    security_findings: str
    running_within_s: float
    answering_within_s: float
    ask_to_stop_old: bool
    stop_approval_timeout_s: int
    rollback: bool
    rollback_to: str | None


def _match(field: str, value: Any, pattern: re.Pattern, example: str, what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise params.bad(field, value, f"is not {what}", f"pass e.g. --{field.replace('_', '-')} {example}")
    return value


def parse_elastic_ip(value: Any) -> str:
    """An allocation ID (eipalloc-...) or a public IPv4 address."""
    if isinstance(value, str) and ALLOCATION.match(value):
        return value
    try:
        address = ipaddress.IPv4Address(value)
    except (ValueError, TypeError):
        address = None
    if address is None:
        raise params.bad("elastic_ip", value, "is neither an Elastic IP address nor an allocation ID",
                         "pass e.g. --elastic-ip 3.115.141.166 or --elastic-ip eipalloc-0123456789abcdef0")
    return str(address)


def _optional(field: str, value: Any, pattern: re.Pattern, example: str, what: str) -> str | None:
    return None if value in (None, "") else _match(field, value, pattern, example, what)


def _ids(field: str, values: Any, pattern: re.Pattern, example: str, what: str) -> tuple[str, ...]:
    if values in (None, ""):
        return ()
    items = values.split(",") if isinstance(values, str) else values
    if not isinstance(items, (list, tuple)):
        raise params.bad(field, values, f"is not a list of {what}s",
                         f"pass e.g. --{field.replace('_', '-')} {example}")
    return tuple(_match(field, v.strip() if isinstance(v, str) else v, pattern, example, what) for v in items)


def parse_ports(field: str, values: Any) -> tuple[int, ...]:
    if values is None:
        return ()
    items = values.split(",") if isinstance(values, str) else values
    if not isinstance(items, (list, tuple)):
        raise params.bad(field, values, "is not a list of ports",
                         f"pass e.g. --{field.replace('_', '-')} 8001 50021")
    return tuple(params.count(field, p, low=1, high=65535, example="8001") for p in items)


def parse_tags(values: Any) -> dict[str, str]:
    """Extra tags for the new instance: EC2's limits, and none in a namespace AWS or gpuops keeps."""
    if values in (None, {}):
        return {}
    if not isinstance(values, dict):
        raise params.bad("tags", values, "is not a mapping of tag key to value",
                         "pass e.g. --tags Name=app-gpu team=ml")
    for key, value in values.items():
        if not isinstance(key, str) or not 1 <= len(key) <= 128 or not isinstance(value, str) or len(value) > 256:
            raise params.bad("tags", f"{key}={value}", "breaks EC2's limits (key 1-128, value up to 256 characters)",
                             "shorten it")
        if key.lower().startswith(RESERVED_TAG_PREFIXES):
            raise params.bad("tags", key, f"is in a reserved namespace ({', '.join(RESERVED_TAG_PREFIXES)})",
                             "use another key")
    return dict(values)


def check(*, elastic_ip: Any, region: Any = None, instance_type: Any = "g4dn.xlarge", ami_id: Any = None,
          ami_ssm_parameter: Any = None, key_name: Any = None, subnet_id: Any = None, security_group_ids: Any = None,
          tags: Any = None, app_port: Any = 55433, health_path: Any = "/healthz", latency_samples: Any = 5,
          latency_target_ms: Any = 50.0, need_vram_gib: Any = None, min_compute_cap: Any = "7.0",
          internal_ports: Any = None, security_findings: Any = "refuse", running_within_s: Any = 600,
          answering_within_s: Any = 600, ask_to_stop_old: Any = True, stop_approval_timeout_s: Any = 3600,
          rollback: Any = False, rollback_to: Any = None) -> MigrationRequest:
    """The whole request, or BadInput naming the first parameter that is wrong."""
    from gpuops.ec2 import DLAMI_PARAMETER

    if region not in (None, "") and (not isinstance(region, str) or not REGION.match(region)):
        raise params.bad("region", region, "is not an AWS region", "pass e.g. --region ap-northeast-1")
    if key_name is not None and (not isinstance(key_name, str) or not 1 <= len(key_name) <= 255):
        raise params.bad("key_name", key_name, "is not a key pair name", "pass e.g. --key-name ops")
    if not isinstance(health_path, str) or not health_path.startswith("/"):
        raise params.bad("health_path", health_path, "is not a path", "pass e.g. --health-path /healthz")
    parameter = ami_ssm_parameter or DLAMI_PARAMETER
    _match("ami_ssm_parameter", parameter, SSM_NAME, DLAMI_PARAMETER, "an SSM parameter name")
    need = None if need_vram_gib is None else params.number("need_vram_gib", need_vram_gib, low=0, example="12")
    internal = parse_ports("internal_ports", internal_ports) if internal_ports is not None else ()
    return MigrationRequest(
        elastic_ip=parse_elastic_ip(elastic_ip), region=region or None,
        instance_type=_match("instance_type", instance_type, INSTANCE_TYPE, "g4dn.xlarge", "an EC2 instance type"),
        ami_id=_optional("ami_id", ami_id, AMI, "ami-0123456789abcdef0", "an AMI ID"), ami_ssm_parameter=parameter,
        key_name=key_name or None,
        subnet_id=_optional("subnet_id", subnet_id, SUBNET, "subnet-0123456789abcdef0", "a subnet ID"),
        security_group_ids=_ids("security_group_ids", security_group_ids, GROUP, "sg-0123456789abcdef0",
                                "security group ID"),
        tags=parse_tags(tags), app_port=params.count("app_port", app_port, low=1, high=65535, example="55433"),
        health_path=health_path,
        latency_samples=params.count("latency_samples", latency_samples, low=1, high=100, example="5"),
        latency_target_ms=float(params.number("latency_target_ms", latency_target_ms, low=0, low_open=True,
                                              unit="ms", example="50")),
        need_vram_gib=need, min_compute_cap=params.compute_cap("min_compute_cap", min_compute_cap),
        internal_ports=tuple(sorted(set(security_audit.DEFAULT_INTERNAL_PORTS) | set(internal))),
        security_findings=params.choice("security_findings", security_findings, security_audit.MODES),
        running_within_s=params.seconds("running_within_s", running_within_s, example="600"),
        answering_within_s=params.seconds("answering_within_s", answering_within_s, example="600"),
        ask_to_stop_old=_flag_value("ask_to_stop_old", ask_to_stop_old),
        stop_approval_timeout_s=params.count("stop_approval_timeout_s", stop_approval_timeout_s, low=1,
                                             example="3600"),
        rollback=_flag_value("rollback", rollback) or rollback_to not in (None, ""),  # --rollback-to implies it
        rollback_to=_optional("rollback_to", rollback_to, INSTANCE, "i-0123456789abcdef0", "an instance ID"))


def _flag_value(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise params.bad(field, value, "is not true or false", "pass true or false")
    return value
