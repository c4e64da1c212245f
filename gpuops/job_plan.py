"""Request bodies for the CPU job, GPU job and GPU service a migration creates (pure)."""
from __future__ import annotations

import copy
import json

from gpuops.dicts import dig
from gpuops.gpu_rules import GpuSpec, Violation, gpu_table

REDACTED = "<redacted>"
GEN2 = "EXECUTION_ENVIRONMENT_GEN2"

ROLES = ("cpu_job", "gpu_job", "gpu_service")
KIND = {"cpu_job": "job", "gpu_job": "job", "gpu_service": "service"}
MANAGED_BY = ("managed-by", "gpuops")  # the label that says gpuops created a resource


def resource_ids(prefix: str) -> dict[str, str]:
    """The runbook's three resources, named after the service (or a shorter prefix)."""
    return {"cpu_job": f"{prefix}-cpu-job", "gpu_job": f"{prefix}-gpu-job", "gpu_service": f"{prefix}-gpu"}


def managed_by_gpuops(resource: dict) -> bool:
    return (resource.get("labels") or {}).get(MANAGED_BY[0]) == MANAGED_BY[1]


def _labels(role: str, service: str) -> dict:
    return {MANAGED_BY[0]: MANAGED_BY[1], "gpuops-role": role.replace("_", "-"), "gpuops-source-service": service}


def _job_container(src: dict, limits: dict) -> dict:
    # Jobs take no ports or probes: carry only what a task needs.
    out = {k: copy.deepcopy(src[k]) for k in ("image", "command", "args", "env", "workingDir") if src.get(k)}
    if limits:
        out["resources"] = {"limits": limits}
    return out


def _gpu_limits(profile: dict) -> dict:
    return {"cpu": str(profile["cpu"]), "memory": str(profile["memory"]),
            "nvidia.com/gpu": str(profile["gpu_count"])}


def _gpu_placement(profile: dict) -> dict:
    return {"nodeSelector": {"accelerator": profile["gpu_type"]},
            "gpuZonalRedundancyDisabled": not profile["gpu_zonal_redundancy"]}


def _job(role, src, limits, profile, service, revision, gpu) -> dict:
    task = {
        "containers": [_job_container(src["container"], limits)],
        "maxRetries": profile["job_max_retries"],
        "timeout": f"{profile['timeout_seconds']}s",
        "executionEnvironment": GEN2,
    }
    if src["service_account"]:
        task["serviceAccount"] = src["service_account"]
    body = {"labels": _labels(role, service), "annotations": {"gpuops.dev/source-revision": revision},
            "template": {"taskCount": profile["job_task_count"], "template": task}}
    if gpu:
        task.update(_gpu_placement(profile))
        body["launchStage"] = gpu_table()["gpu_types"].get(profile["gpu_type"], {}).get("job_launch_stage", "GA")
    return body


def gpu_template(template: dict, profile: dict, revision_name: str | None = None) -> dict:
    """A service revision template moved onto the GPU: size, accelerator, no CPU throttling, gen2."""
    out = copy.deepcopy(template)
    container = out["containers"][0]
    # GPU instances need CPU always allocated: cpuIdle false, set explicitly.
    container["resources"] = {"limits": _gpu_limits(profile), "cpuIdle": False, "startupCpuBoost": True}
    out.update({
        "scaling": {"minInstanceCount": profile["min_instances"], "maxInstanceCount": profile["max_instances"]},
        "maxInstanceRequestConcurrency": profile["concurrency"],
        "timeout": f"{profile['timeout_seconds']}s",
        "executionEnvironment": GEN2,
        **_gpu_placement(profile),
    })
    if revision_name:
        out["revision"] = revision_name
    else:
        out.pop("revision", None)
    return out


TEMPLATE_FIELDS = ("labels", "annotations", "scaling", "vpcAccess", "timeout", "serviceAccount", "containers",
                   "volumes", "executionEnvironment", "encryptionKey", "maxInstanceRequestConcurrency",
                   "serviceMesh", "encryptionKeyRevocationAction", "encryptionKeyShutdownDuration",
                   "sessionAffinity", "healthCheckDisabled", "nodeSelector", "gpuZonalRedundancyDisabled")
SYSTEM_KEYS = ("run.googleapis.com/", "serving.knative.dev/", "cloud.googleapis.com/", "client.knative.dev/",
               "autoscaling.knative.dev/")


def template_from_revision(revision: dict) -> dict:
    """The revision template that would make this revision again (a new, auto-named one)."""
    out = {k: copy.deepcopy(revision[k]) for k in TEMPLATE_FIELDS if k in revision}
    for key in ("labels", "annotations"):  # the server's own keys are not the caller's to set
        if key in out:
            out[key] = {k: v for k, v in out[key].items() if not k.startswith(SYSTEM_KEYS)}
    return out


def _gpu_service(src, profile, service, revision) -> dict:
    container = _job_container(src["container"], {})
    for key in ("ports", "startupProbe", "livenessProbe"):
        if src["container"].get(key):
            container[key] = copy.deepcopy(src["container"][key])
    template = {"containers": [container]}
    if src["service_account"]:
        template["serviceAccount"] = src["service_account"]
    return {"labels": _labels("gpu_service", service),
            "annotations": {"gpuops.dev/source-revision": revision},
            "template": gpu_template(template, profile)}


def plan(source_revision: dict, service: str, profile: dict, prefix: str | None = None) -> dict:
    """{role: {"id", "kind", "body"}} for the three resources, from the live revision.

    `source_revision` is the Revision's REST JSON, env values included: they are copied into
    the bodies in memory and never stored; `redact` them before showing a body.
    """
    src = {
        "container": (source_revision.get("containers") or [{}])[0],
        "service_account": source_revision.get("serviceAccount", ""),
    }
    revision = source_revision["name"].rsplit("/", 1)[-1]
    source_limits = {k: v for k, v in dig(src["container"], "resources", "limits", default={}).items()
                     if k in ("cpu", "memory")}
    ids = resource_ids(prefix or service)
    bodies = {
        "cpu_job": _job("cpu_job", src, source_limits, profile, service, revision, gpu=False),
        "gpu_job": _job("gpu_job", src, _gpu_limits(profile), profile, service, revision, gpu=True),
        "gpu_service": _gpu_service(src, profile, service, revision),
    }
    return {role: {"id": ids[role], "kind": KIND[role], "body": bodies[role]} for role in ROLES}


def redact(body: dict) -> dict:
    """A copy with every plaintext env value replaced; secret references stay (they are names)."""
    out = copy.deepcopy(body)
    for container in _containers(out):
        for env in container.get("env", []):
            if "value" in env:
                env["value"] = REDACTED
    return out


def _containers(body: dict) -> list[dict]:
    template = body.get("template", {})
    return template.get("template", template).get("containers", [])


def gpu_spec_of(body: dict) -> GpuSpec:
    """Read back the GPU facts of a planned body, so the rules judge what is really sent."""
    template = body["template"].get("template", body["template"])
    container = template["containers"][0]
    limits = dig(container, "resources", "limits", default={})
    return GpuSpec(
        gpu_type=dig(template, "nodeSelector", "accelerator", default=""),
        gpu_count=int(limits.get("nvidia.com/gpu", 0)),
        cpu=limits.get("cpu", "1"),
        memory=limits.get("memory", "512Mi"),
        execution_environment="gen2" if template.get("executionEnvironment") == GEN2 else "gen1",
        cpu_always_allocated=not dig(container, "resources", "cpuIdle", default=False),
        max_instances=dig(template, "scaling", "maxInstanceCount"),
        min_instances=dig(template, "scaling", "minInstanceCount", default=0),
    )


def secret_findings(suspects: list[str], require_refs: bool) -> tuple[list[Violation], list[dict]]:
    """Plaintext secrets are carried with a finding, or refused with `require_refs`."""
    if require_refs and suspects:
        return [Violation(
            "secret-refs-required", "env",
            f"plaintext values that look like secrets: {', '.join(suspects)}.",
            "move them to Secret Manager and reference them, or run without --require-secret-refs.")], []
    return [], [{
        "severity": "warning", "code": "plaintext-secret-carried", "subject": name,
        "message": f"{name} is copied as plaintext into the new jobs and GPU service.",
        "fix": f"move {name} into Secret Manager; a later flow swaps it for a reference.",
    } for name in suspects]


def foreign(plan: dict, current: dict[str, dict | None]) -> list[Violation]:
    """Resources that exist under the planned names but were not created by gpuops."""
    return [Violation(
        "foreign-resource", role,
        f"{item['kind']} {item['id']} exists and gpuops did not create it (no label managed-by=gpuops).",
        "pass --adopt (adopt: true) to let gpuops update and label it, or choose another --prefix.")
        for role, item in plan.items() if current[role] is not None and not managed_by_gpuops(current[role])]


def dry_run_markdown(plan: dict, warnings: list[str], api: str) -> str:
    """The exact request bodies, env values redacted: what create-jobs would send."""
    parts = ["# create-jobs dry run (nothing changed)", f"API: {api}", ""]
    for warning in warnings:
        parts.append(f"- warning: {warning}")
    for role, item in plan.items():
        body = json.dumps(redact(item["body"]), indent=2)
        parts += ["", f"## {role}: {item['kind']} `{item['id']}`", "```json", body, "```"]
    return "\n".join(parts)
