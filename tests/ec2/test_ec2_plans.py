"""The EC2 migration's pure parts: the request check, the security audit, the cost table, the report, the state tag."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from gpuops import ec2_cost, ec2_report, ec2_request, security_audit
from gpuops.errors import BadInput
from gpuops.rollout.elastic_ip import TAG_VALUE_MAX, state_tag_value
from gpuops.traffic import CanaryState

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


def group(*rules: dict, group_id="sg-0123456789abcdef0") -> dict:
    return {"GroupId": group_id, "GroupName": "app", "IpPermissions": list(rules)}


def tcp(low: int, high: int, v4: str | None = "0.0.0.0/0", v6: str | None = None) -> dict:
    return {"IpProtocol": "tcp", "FromPort": low, "ToPort": high,
            "IpRanges": [{"CidrIp": v4}] if v4 else [], "Ipv6Ranges": [{"CidrIpv6": v6}] if v6 else []}


# --- the audit ----------------------------------------------------------------------------------


def test_world_open_ssh_is_a_finding_with_the_command_that_fixes_it():
    [finding] = security_audit.audit([group(tcp(22, 22), tcp(443, 443))])
    assert finding.ports == (22,) and finding.source == "0.0.0.0/0"
    assert ("aws ec2 revoke-security-group-ingress --group-id sg-0123456789abcdef0 --ip-permissions "
            "'IpProtocol=tcp,FromPort=22,ToPort=22,IpRanges=[{CidrIp=0.0.0.0/0}]'") in finding.fix
    assert "--cidr <your-ip>/32" in finding.fix and "Session Manager" in finding.fix


def test_ipv6_ranges_all_traffic_and_internal_ports_are_findings_and_an_admin_cidr_is_not():
    groups = [group(tcp(22, 22, v4="203.0.113.7/32", v6="::/0"), tcp(5000, 6000),
                    {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, tcp(50021, 50021))]
    findings = security_audit.audit(groups, internal_ports=(5432, 50021))
    assert [(f.source, f.ports) for f in findings] == [
        ("::/0", (22,)), ("0.0.0.0/0", (5432,)), ("0.0.0.0/0", (22, 5432, 50021)), ("0.0.0.0/0", (50021,))]
    assert "Ipv6Ranges=[{CidrIpv6=::/0}]" in findings[0].fix and "FromPort" not in findings[2].fix
    assert security_audit.audit([group(tcp(22, 22, v4="10.0.0.0/16"), tcp(443, 443))]) == []
    assert "--security-findings report" in security_audit.refusal(findings)


# --- the request --------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, flag", [
    ("elastic_ip", "3.115.141", "--elastic-ip"), ("region", "tokyo", "--region"),
    ("instance_type", "g4dn", "--instance-type"), ("ami_id", "ami-xyz", "--ami-id"),
    ("security_group_ids", ["sg-1"], "--security-group-ids"), ("tags", {"gpuops:rollout": "x"}, "--tags"),
    ("app_port", 70000, "--app-port"), ("latency_samples", 0, "--latency-samples"),
    ("latency_target_ms", 0, "--latency-target-ms"), ("internal_ports", ["ssh"], "--internal-ports"),
    ("security_findings", "ignore", "--security-findings"), ("rollback_to", "web-1", "--rollback-to"),
    ("min_compute_cap", "seven", "--min-compute-cap")])
def test_each_bad_parameter_is_refused_by_name(field, value, flag):
    with pytest.raises(BadInput, match=flag):
        ec2_request.check(**{"elastic_ip": "3.115.141.166", field: value})


def test_a_good_request_is_typed_and_watches_the_database_ports_too():
    request = ec2_request.check(elastic_ip="eipalloc-0123456789abcdef0", app_port="55433", internal_ports=["8001"],
                                rollback_to="i-0123456789abcdef0", tags={"team": "ml"})
    assert request.app_port == 55433 and request.internal_ports == (3306, 5432, 6379, 8001, 27017)
    assert request.rollback and request.ami_ssm_parameter.startswith("/aws/service/deeplearning/ami/x86_64/")


# --- the cost table -----------------------------------------------------------------------------


def history(*rows) -> list[dict]:
    return [{"instance_type": t, "zone": z, "usd_per_hour": p, "at": at} for t, z, p, at in rows]


def test_a_recent_spot_price_from_the_api_is_used_in_the_instances_zone():
    rows = history(("g4dn.xlarge", "ap-northeast-1a", 0.20, "2026-11-23T10:00:00+00:00"),
                   ("g4dn.xlarge", "ap-northeast-1a", 0.18, "2026-11-23T11:00:00+00:00"),
                   ("g4dn.xlarge", "ap-northeast-1c", 0.15, "2026-11-23T11:30:00+00:00"))
    table = ec2_cost.cost_table(("t3.large", "g4dn.xlarge"), rows, NOW, "EC2 API (test)", zone="ap-northeast-1a")
    spot = next(r for r in table["rows"] if r["instance_type"] == "g4dn.xlarge" and r["market"] == "spot")
    assert (spot["usd_per_hour"], spot["usd_per_month"], spot["from"]) == (0.18, 131.4, "api")
    assert spot["as_of"] == "2026-11-23T11:00:00+00:00" and "ap-northeast-1a" in spot["basis"]
    cheapest = ec2_cost.latest_spot(rows, "g4dn.xlarge", NOW)  # no zone given: the cheapest zone's latest
    assert cheapest["zone"] == "ap-northeast-1c"


def test_without_recent_api_prices_the_table_answers_with_its_source_and_date():
    stale = history(("g4dn.xlarge", "ap-northeast-1a", 0.00001, "2006-01-02T15:04:05+00:00"))  # what moto gives
    table = ec2_cost.cost_table(("t3.large", "g4dn.xlarge"), stale, NOW, "moto")
    by = {(r["instance_type"], r["market"]): r for r in table["rows"]}
    assert by[("g4dn.xlarge", "on-demand")]["usd_per_month"] == 383.98
    assert by[("g4dn.xlarge", "spot")]["from"] == "table" and by[("g4dn.xlarge", "spot")]["as_of"] == "2025-09-09"
    assert by[("t3.large", "spot")]["usd_per_month"] is None and "no spot price" in by[("t3.large", "spot")]["basis"]
    assert all(r["kind"] == "estimate" for r in table["rows"])
    assert any("older than 90 days" in note for note in table["notes"])
    unknown = ec2_cost.cost_table(("g6.xlarge",), None, NOW, "moto")
    assert unknown["rows"][0]["usd_per_month"] is None and any("not read" in n for n in unknown["notes"])


# --- the report and the state tag ---------------------------------------------------------------


def test_the_report_holds_measured_figures_with_how_and_labels_the_estimates():
    window = {"when": "after the switch", "url": "http://3.115.141.166:55433/healthz", "how": "5 sequential GET",
              "samples_ms": [26.5, 25.4, 19.0, 26.1, 19.1], "mean_ms": 23.2, "min_ms": 19.0, "max_ms": 26.5,
              "target_ms": 50.0, "failed": []}
    facts = {"elastic_ip": "3.115.141.166", "outcome": "migrated", "api": "EC2 API (test)", "windows": [window],
             "gpu": {"gpus": [{"name": "Tesla T4", "memory_total_mib": 15360, "compute_cap": "7.5"}],
                     "verdict": "pass", "reasons": [], "emulated": True, "how": "the probe"},
             "cost": ec2_cost.cost_table(("g4dn.xlarge",), None, NOW, "test"),
             "timings": [{"what": "launch to running", "seconds": 41.0, "how": "the flow's clock"}]}
    text = ec2_report.markdown(facts)
    assert "| 23.2 ms | 19.0 ms | 26.5 ms | < 50 ms (mean) | pass |" in text and "How: 5 sequential GET." in text
    assert "**EMULATED**" in text and "**Estimates**" in text and "launch to running: 41.0 s (the flow's clock)" in text
    assert "87%" not in text and "Figures not in this report were not measured" in text


def test_the_state_fits_an_ec2_tag_value_however_long_its_failed_checks():
    state = CanaryState(stable="i-0123456789abcdef0", candidate="i-0fedcba9876543210", steps=(0, 100), step=0,
                        phase="rolled-back", failed_checks=("health latency mean 120.0 ms " * 20, "second " * 40),
                        updated="2026-11-23T12:00:00Z", flow_run_id="0f3c9a52-1111-2222-3333-444455556666")
    value = state_tag_value(state)
    assert len(value) <= TAG_VALUE_MAX
    kept = CanaryState.from_json(value)
    assert (kept.stable, kept.candidate, kept.phase, kept.flow_run_id) == (state.stable, state.candidate,
                                                                           state.phase, state.flow_run_id)


def test_report_wording_two_windows_one_how_no_glued_origin_and_a_row_without_price_has_no_date():
    windows = [{"when": w, "url": f"http://{ip}:55433/healthz", "samples_ms": [5.0], "mean_ms": 5.0, "min_ms": 5.0,
                "max_ms": 5.0, "target_ms": 50.0, "failed": [],
                "how": f"5 sequential GET http://{ip}:55433/healthz after one unmeasured warm-up request"}
               for w, ip in (("before", "10.0.0.5"), ("after", "3.115.141.166"))]
    facts = {"elastic_ip": "3.115.141.166", "outcome": "migrated", "api": "EC2 API (test)", "windows": windows,
             "new": {"id": "i-1", "origin": "launched by this run", "image_from": "SSM parameter /p (ami-1)"},
             "cost": ec2_cost.cost_table(("t3.large",), None, NOW, "test")}
    text = ec2_report.markdown(facts)
    assert text.count("How: 5 sequential GET the row's URL after one unmeasured warm-up request.") == 1
    assert "The new instance: launched by this run; its AMI from SSM parameter /p (ami-1)." in text
    assert "). launched" not in text
    spot = next(r for r in facts["cost"]["rows"] if r["market"] == "spot")
    assert spot["as_of"] == "no price" and spot["usd_per_month"] is None
