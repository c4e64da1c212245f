"""The EC2 GPU migration report (pure markdown): runbook 002's report, with measured figures only.

Runbook 002's report mixed measurements with estimates (a 7.5x speed-up nobody timed, a yearly saving
from a rough spot price). Here every figure says how it was measured; the cost table is the only
estimate and says so, with its inputs; what a run did not measure is not in the report.
"""
from __future__ import annotations

from gpuops.markdown import cell


def _latency_rows(windows: list[dict]) -> list[str]:
    rows = ["| when | reached at | samples (ms) | mean | min | max | target | verdict |",
            "|---|---|---|---|---|---|---|---|"]
    for w in windows:
        verdict = "pass" if not w["failed"] else "fail: " + "; ".join(w["failed"])
        rows.append(f"| {cell(w['when'])} | {cell(w['url'])} | {cell(', '.join(f'{s:g}' for s in w['samples_ms']))} | "
                    f"{w['mean_ms']} ms | {w['min_ms']} ms | {w['max_ms']} ms | < {w['target_ms']:g} ms (mean) | "
                    f"{cell(verdict)} |")
    # Each window's URL is in its row: the method, said once, in the windows' order.
    how = dict.fromkeys(w["how"].replace(w["url"], "the row's URL") for w in windows)
    return rows + [""] + [f"How: {h}." for h in how]


def _gpu_lines(gpu: dict | None) -> list[str]:
    if not gpu:
        return ["Not probed (the run stopped before the probe)."]
    lines = ["| GPU | memory total | compute capability | driver |", "|---|---|---|---|"]
    for card in gpu.get("gpus") or []:
        lines.append(f"| {cell(card.get('name'))} | {cell(card.get('memory_total_mib'))} MiB | "
                     f"{cell(card.get('compute_cap'))} | {cell(card.get('driver_version'))} |")
    if not gpu.get("gpus"):
        lines.append("| none listed | - | - | - |")
    verdict = gpu.get("verdict")
    lines += ["", f"Verdict: **{verdict}**" + (": " + "; ".join(gpu["reasons"]) if gpu.get("reasons") else ""),
              f"How: {gpu['how']}."]
    if gpu.get("emulated"):
        lines.append("**EMULATED**: the host's nvidia-smi printed a recorded reading of that card; no GPU was present.")
    return lines


def _cost_lines(cost: dict | None) -> list[str]:
    if not cost:
        return ["Not computed."]
    lines = ["**Estimates**, not measurements: an hourly price x "
             f"{cost['hours_per_month']} h.", "",
             "| instance type | market | USD/hour | USD/month (estimate) | source | as of | basis |",
             "|---|---|---|---|---|---|---|"]
    for row in cost["rows"]:
        lines.append(f"| {row['instance_type']} | {row['market']} | {cell(row['usd_per_hour'])} | "
                     f"{cell(row['usd_per_month'])} | {cell(row['source'])} | {cell(row['as_of'])} | "
                     f"{cell(row['basis'])} |")
    return lines + [""] + [f"- {note}" for note in cost["notes"]]


def _findings_lines(findings: list[dict], mode: str) -> list[str]:
    if not findings:
        return ["No ingress rule opens SSH or an internal port to 0.0.0.0/0 or ::/0."]
    effect = ("a finding fails the audit check: nothing is launched" if mode == "refuse"
              else "findings are reported; the migration went on (security_findings=report)")
    lines = [f"{len(findings)} finding(s); {effect}.", ""]
    for finding in findings:
        lines += [f"- {finding['what']}", f"  - fix: `{finding['fix']}`"]
    return lines


def _steps_lines(facts: dict) -> list[str]:
    lines = []
    for row in facts.get("timings", []):
        lines.append(f"- {row['what']}: {row['seconds']} s ({row['how']})")
    availability = facts.get("availability")
    if availability:
        lines.append(f"- through the Elastic IP during the rollout: {availability['failed']} failed of "
                     f"{availability['requests']} requests from {availability['first']} to {availability['last']} "
                     f"({availability['how']})")
    switch = facts.get("switch")
    if switch:
        lines.append(f"- Elastic IP {switch['address']} moved from {switch['from']} to {switch['to']}, promoted at "
                     f"{switch['at']} (its state tag's time, written after the check through the address)")
    return lines or ["None: the run stopped before launching."]


def markdown(facts: dict) -> str:
    """The report: outcome, instances, measured health latency, GPU, switch, security, cost, next steps."""
    old, new = facts.get("old") or {}, facts.get("new") or {}
    lines = [f"# EC2 GPU migration of {facts['elastic_ip']}: {facts['outcome']}",
             f"API: {facts['api']}." + (f" Hosts reached through {facts['proxy']}." if facts.get("proxy") else ""),
             "",
             "| | instance | type | image |", "|---|---|---|---|",
             f"| before | {cell(old.get('id'))} | {cell(old.get('type'))} | {cell(old.get('image_id'))} |",
             f"| after | {cell(new.get('id'))} | {cell(new.get('type'))} | {cell(new.get('image_id'))} |"]
    if facts.get("rerun"):
        lines.append(f"\n{facts['rerun']}")
    if new.get("origin"):
        lines.append(f"\nThe new instance: {new['origin']}"
                     + (f"; its AMI from {new['image_from']}." if new.get("image_from") else "."))
    lines += ["", "## Steps, measured", *_steps_lines(facts)]
    lines += ["", "## Health latency (measured)", *(_latency_rows(facts["windows"]) if facts.get("windows")
                                                   else ["Not measured (the run stopped before the checks)."])]
    lines += ["", "## GPU (measured on the new instance)", *_gpu_lines(facts.get("gpu"))]
    lines += ["", "## Security groups", *_findings_lines(facts.get("findings", []), facts.get("findings_mode", ""))]
    lines += ["", "## Cost per month", *_cost_lines(facts.get("cost"))]
    if facts.get("old_instance"):
        lines += ["", "## The old instance", facts["old_instance"]]
    if facts.get("next"):
        lines += ["", "## Next", *(f"- {step}" for step in facts["next"])]
    lines += ["", "Figures not in this report were not measured by this run."]
    return "\n".join(lines)
