"""What a live Cloud Run service runs, summarized from its REST JSON, with the findings a GPU move needs."""
from __future__ import annotations

import re

from gpuops.dicts import dig

# Names whose plaintext values are likely credentials (runbook phase 5: move to Secret Manager).
SECRET_NAME = re.compile(r"(^|_)KEY$|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE", re.IGNORECASE)

ENVIRONMENTS = {
    "EXECUTION_ENVIRONMENT_GEN1": "gen1",
    "EXECUTION_ENVIRONMENT_GEN2": "gen2",
}


def short(name: str) -> str:
    return name.rsplit("/", 1)[-1] if name else name


def execution_environment(template: dict) -> str:
    return ENVIRONMENTS.get(template.get("executionEnvironment", ""), "unspecified")


def split_env(env: list[dict]) -> tuple[list[str], list[dict], list[str]]:
    """(all names, secret references, plaintext names that look like secrets). Never a value."""
    names = [e["name"] for e in env]
    secrets = [
        {"name": e["name"], "secret": dig(e, "valueSource", "secretKeyRef", "secret"),
         "version": dig(e, "valueSource", "secretKeyRef", "version", default="latest")}
        for e in env if dig(e, "valueSource", "secretKeyRef")
    ]
    suspects = [
        e["name"] for e in env
        if not e.get("valueSource") and e.get("value") and SECRET_NAME.search(e["name"])
    ]
    return names, secrets, suspects


def traffic(service: dict) -> list[dict]:
    """Traffic as served (`trafficStatuses`), else as asked; LATEST resolved to its revision."""
    targets = service.get("trafficStatuses") or service.get("traffic") or []
    latest = short(service.get("latestReadyRevision", ""))
    rows = []
    for t in targets:
        is_latest = t.get("type") == "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
        rows.append({
            "revision": latest if is_latest and not t.get("revision") else short(t.get("revision", "")),
            "percent": int(t.get("percent", 0)),
            "tag": t.get("tag") or None,
            "latest": is_latest,
        })
    return rows


def findings(summary: dict) -> list[dict]:
    """What must change before (or while) this service moves onto GPUs, each with its fix."""
    out = []
    for name in summary["plaintext_secret_suspects"]:
        out.append({
            "severity": "warning", "code": "plaintext-secret", "subject": name,
            "message": f"{name} is set as a plaintext environment variable and looks like a secret.",
            "fix": f"store it in Secret Manager and reference it (`--set-secrets={name}=SECRET:latest`).",
        })
    env = summary["execution_environment"]
    if env != "gen2":
        out.append({
            "severity": "error" if env == "gen1" else "warning", "code": "not-gen2", "subject": env,
            "message": f"execution environment is {env}; Cloud Run GPUs need gen2.",
            "fix": "the GPU jobs and service are planned with gen2; check the app runs there.",
        })
    if not summary["service_account"]:
        out.append({
            "severity": "warning", "code": "default-service-account", "subject": "serviceAccount",
            "message": "no service account is set: the revision runs as the Compute Engine default one.",
            "fix": "create a dedicated least-privilege service account and set it.",
        })
    serving = {t["revision"]: t["percent"] for t in summary["traffic"]}
    if serving.get(summary["revision"], 0) == 0 and serving:
        out.append({
            "severity": "info", "code": "latest-not-serving", "subject": summary["revision"],
            "message": f"the latest ready revision {summary['revision']} serves no traffic; "
                       f"traffic goes to {', '.join(r for r, p in serving.items() if p)}.",
            "fix": "the GPU jobs are planned from the latest ready revision: check that is the release you want.",
        })
    if summary["containers"] > 1:
        out.append({
            "severity": "warning", "code": "sidecars", "subject": "containers",
            "message": f"{summary['containers']} containers; the GPU plan carries the first (ingress) one only.",
            "fix": "add the sidecars to the GPU service by hand or drop them.",
        })
    return out


def summarize(service: dict, revision: dict) -> dict:
    """The contract's `describe` object (CONTRACTS.md §3) from a Service and its ready Revision."""
    container = (revision.get("containers") or [{}])[0]
    limits = dig(container, "resources", "limits", default={})
    names, secrets, suspects = split_env(container.get("env", []))
    summary = {
        "service": short(service["name"]),
        "service_name": service["name"],
        "uri": service.get("uri"),
        "generation": service.get("generation"),
        "revision": short(revision["name"]),
        "image": container.get("image"),
        "execution_environment": execution_environment(revision),
        "service_account": revision.get("serviceAccount", ""),
        "cpu": limits.get("cpu"),
        "memory": limits.get("memory"),
        # The API: with `resources` set, CPU idles only when cpuIdle is explicitly true.
        "cpu_always_allocated": bool(container.get("resources")) and not dig(container, "resources", "cpuIdle"),
        "concurrency": revision.get("maxInstanceRequestConcurrency"),
        "timeout": revision.get("timeout"),
        "scaling": {
            "min_instances": dig(revision, "scaling", "minInstanceCount", default=0),
            "max_instances": dig(revision, "scaling", "maxInstanceCount"),
        },
        "gpu": {
            "type": dig(revision, "nodeSelector", "accelerator"),
            "count": limits.get("nvidia.com/gpu"),
        },
        "containers": len(revision.get("containers") or []),
        "env_names": names,
        "secret_env": secrets,
        "plaintext_secret_suspects": suspects,
        "traffic": traffic(service),
    }
    summary["findings"] = findings(summary)
    return summary


def summary_markdown(summary: dict, api: str) -> str:
    lines = [
        f"# Live revision of `{summary['service']}`",
        f"Read from: {api}, at {summary['captured_at']}.",
        "",
        "| field | value |", "|---|---|",
        *(f"| {k} | `{summary[k]}` |" for k in (
            "revision", "image", "execution_environment", "service_account", "cpu", "memory",
            "concurrency", "timeout")),
        f"| scaling | min {summary['scaling']['min_instances']}, max {summary['scaling']['max_instances']} |",
        f"| env names ({len(summary['env_names'])}) | {', '.join(summary['env_names'])} |",
        f"| secret references | {', '.join(s['name'] for s in summary['secret_env']) or 'none'} |",
        "",
        "## Traffic",
        *(f"- {t['percent']}% → `{t['revision']}`" + (f" (tag `{t['tag']}`)" if t["tag"] else "")
          for t in summary["traffic"]),
        "",
        "## Findings",
        *(f"- **{f['severity']}** `{f['code']}` {f['message']} Fix: {f['fix']}" for f in summary["findings"]),
    ]
    if not summary["findings"]:
        lines.append("- none")
    return "\n".join(lines)


def env_kind(name: str, summary: dict) -> str:
    if any(s["name"] == name for s in summary["secret_env"]):
        return "secret reference"
    if name in summary["plaintext_secret_suspects"]:
        return "plaintext, looks like a secret"
    return "plaintext"
