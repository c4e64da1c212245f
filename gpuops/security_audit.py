"""Security-group audit (pure): ingress open to the whole internet on SSH or on an internal service's port.

Runbook 002's group opened SSH (22), the GPU service (8001) and the TTS engine (50021) to 0.0.0.0/0 and
its report called that "vulnerabilities: zero". Here each such rule is a finding naming the group, the
rule, the ports it exposes and the commands that fix it. What a finding does to a run is the caller's
choice (`MODES`): the migration flow refuses by default, before it launches anything.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

SSH_PORT = 22
# Database and cache ports no internet client should reach; the app's own internal services are added by the caller.
DEFAULT_INTERNAL_PORTS = (3306, 5432, 6379, 27017)
PORT_NAMES = {22: "SSH", 3306: "MySQL", 5432: "PostgreSQL", 6379: "Redis", 27017: "MongoDB"}
WORLD_V4, WORLD_V6 = "0.0.0.0/0", "::/0"
# "refuse": a finding fails the audit check and the run stops before its first write.
# "report": the run goes on; findings are in its result, its report and its notification.
MODES = ("refuse", "report")


@dataclass(frozen=True)
class Finding:
    """One ingress rule open to the world on a watched port."""

    group_id: str
    group_name: str
    protocol: str
    from_port: int | None
    to_port: int | None
    source: str  # 0.0.0.0/0 or ::/0
    ports: tuple[int, ...]  # the watched ports the rule exposes
    what: str
    fix: str

    def as_dict(self) -> dict:
        return {**asdict(self), "ports": list(self.ports)}


def _port_name(port: int) -> str:
    return f"{port} ({PORT_NAMES[port]})" if port in PORT_NAMES else str(port)


def covered(rule: dict, watched: tuple[int, ...]) -> tuple[int, ...]:
    """The watched ports a rule lets in: TCP within its range, or every port for protocol -1 (all traffic)."""
    protocol = str(rule.get("IpProtocol", ""))
    if protocol == "-1":
        return tuple(watched)
    if protocol not in ("tcp", "6"):
        return ()  # SSH and the services watched here are TCP
    low, high = rule.get("FromPort"), rule.get("ToPort")
    if low is None or high is None:
        return ()
    return tuple(p for p in watched if low <= p <= high)


def world_sources(rule: dict) -> list[str]:
    """The rule's sources that are the whole internet (IPv4 and IPv6 ranges are listed apart)."""
    found = [r["CidrIp"] for r in rule.get("IpRanges") or [] if r.get("CidrIp") == WORLD_V4]
    return found + [r["CidrIpv6"] for r in rule.get("Ipv6Ranges") or [] if r.get("CidrIpv6") == WORLD_V6]


def fix_for(group_id: str, rule: dict, source: str, ports: tuple[int, ...]) -> str:
    """The command that removes exactly this rule's world-open source, and what to allow instead."""
    protocol = str(rule.get("IpProtocol"))
    ranges = f"IpRanges=[{{CidrIp={source}}}]" if source == WORLD_V4 else f"Ipv6Ranges=[{{CidrIpv6={source}}}]"
    span = "" if protocol == "-1" else f",FromPort={rule.get('FromPort')},ToPort={rule.get('ToPort')}"
    revoke = (f"aws ec2 revoke-security-group-ingress --group-id {group_id} "
              f"--ip-permissions 'IpProtocol={protocol}{span},{ranges}'")
    if SSH_PORT in ports:
        instead = ("then allow SSH only from your admin address (aws ec2 authorize-security-group-ingress "
                   f"--group-id {group_id} --protocol tcp --port 22 --cidr <your-ip>/32), or open no SSH at all "
                   "and use SSM Session Manager or EC2 Instance Connect")
    else:
        instead = ("then allow those ports only from the groups that call them (aws ec2 "
                   f"authorize-security-group-ingress --group-id {group_id} --protocol tcp --port <port> "
                   "--source-group <caller's group>) or the VPC's CIDR")
    return f"{revoke}; {instead}"


def audit(groups: list[dict], internal_ports: tuple[int, ...] = DEFAULT_INTERNAL_PORTS) -> list[Finding]:
    """Every ingress rule of `groups` (as EC2 describes them) open to 0.0.0.0/0 or ::/0 on SSH or on an
    internal port; in the groups' order, then the rules'."""
    watched = tuple(sorted({SSH_PORT, *internal_ports}))
    findings = []
    for group in groups:
        for rule in group.get("IpPermissions") or []:
            ports = covered(rule, watched)
            if not ports:
                continue
            for source in world_sources(rule):
                names = ", ".join(_port_name(p) for p in ports)
                scope = "all traffic" if str(rule.get("IpProtocol")) == "-1" else \
                    f"TCP {rule.get('FromPort')}-{rule.get('ToPort')}"
                what = (f"{group.get('GroupId')} ({group.get('GroupName', '')}) lets {source} in on {scope}: "
                        f"port {names} open to the whole internet")
                findings.append(Finding(group.get("GroupId", ""), group.get("GroupName", ""),
                                        str(rule.get("IpProtocol")), rule.get("FromPort"), rule.get("ToPort"),
                                        source, ports, what, fix_for(group.get("GroupId", ""), rule, source, ports)))
    return findings


def refusal(findings: list[Finding]) -> str:
    """The audit check's failure message: each finding with its fix, and the way to go on anyway."""
    lines = [f"security audit: {len(findings)} rule(s) open to the whole internet; nothing was launched or changed:"]
    for finding in findings:
        lines += [f"  - {finding.what}", f"    fix: {finding.fix}"]
    lines.append("Fix the rules and run again, or pass security_findings=report (--security-findings report) to "
                 "migrate anyway with the findings in the report.")
    return "\n".join(lines)
