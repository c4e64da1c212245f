"""Cloud Monitoring alert policies for a Cloud Run GPU service (runbook 000 phase 4-B, 001 §4-1), and what to change.

Pure: AlertPolicy documents as Cloud Monitoring's v3 REST JSON spells them (camelCase), planned from a project,
a service and notification channels; `reconcile` compares them with the policies a project has. The adapter
(gpuops/monitoring_alerts.py) reads and writes them.

Metric types (Google Cloud metrics list, run.googleapis.com): the utilisations are DISTRIBUTION metrics of
ratios 0..1 across a revision's instances (a dashboard multiplies them by 100 to show percent), request
latencies a distribution in milliseconds.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from gpuops import params
from gpuops.dicts import is_subset

GPU_UTILIZATION = "run.googleapis.com/container/gpu/utilizations"
GPU_MEMORY_UTILIZATION = "run.googleapis.com/container/gpu/memory_utilizations"
CPU_UTILIZATION = "run.googleapis.com/container/cpu/utilizations"
MEMORY_UTILIZATION = "run.googleapis.com/container/memory/utilizations"
REQUEST_LATENCIES = "run.googleapis.com/request_latencies"
RESOURCE_TYPE = "cloud_run_revision"

DISPLAY_PREFIX = "gpuops: "
MANAGED_BY = "managed-by"  # user label: gpuops touches only policies carrying managed-by=gpuops
MANAGER = "gpuops"
ALERT_LABEL = "gpuops-alert"  # which rule of RULES a policy is
SERVICE_LABEL = "gpuops-service"  # which Cloud Run service it watches
ALIGNMENT_PERIOD = "60s"  # Cloud Run samples these metrics every 60 s; Monitoring refuses less
# The fields gpuops writes. `enabled` is left out on purpose: an operator may pause a noisy alert
# (runbook 000 8-B, アラート停止) and a later apply must not switch it back on.
MANAGED_FIELDS = ("displayName", "documentation", "userLabels", "conditions", "combiner", "notificationChannels",
                  "severity")
UPDATE_MASK = ("display_name", "documentation", "user_labels", "conditions", "combiner", "notification_channels",
               "severity")

PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
CHANNEL_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
CHANNEL_NAME = re.compile(r"^projects/(?P<project>[^/]+)/notificationChannels/(?P<id>[A-Za-z0-9_-]{1,128})$")


@dataclass(frozen=True)
class Rule:
    """One alert: a metric of the service above a threshold for a while, and where the figures come from."""

    key: str  # the policy's gpuops-alert label
    title: str  # said in the display name, after the service
    metric: str
    threshold: float  # in the metric's unit: a ratio 0..1 for utilisations, milliseconds for latency
    duration_s: int
    aligner: str
    severity: str
    source: str
    fix: str


RULES: tuple[Rule, ...] = (
    Rule("gpu-utilization", "GPU utilisation over 95% for 5 minutes", GPU_UTILIZATION, 0.95, 300,
         "ALIGN_PERCENTILE_99", "WARNING",
         "runbook 000 phase 4-B and 001 4-1: GPU使用率 95%以上 (5分継続)",
         "the GPU is saturated: raise max instances, or send batch work to the GPU job or GKE"),
    Rule("gpu-memory", "GPU memory over 90% for 5 minutes", GPU_MEMORY_UTILIZATION, 0.90, 300,
         "ALIGN_PERCENTILE_99", "WARNING",
         "gpuops' figure (the runbooks give none for VRAM): 90% as for the container's memory, 5 minutes as for the GPU",
         "the model and its batches nearly fill the VRAM: smaller batches, or a card with more memory"),
    Rule("cpu", "CPU over 90% for 5 minutes", CPU_UTILIZATION, 0.90, 300, "ALIGN_PERCENTILE_99", "WARNING",
         "runbook 000 phase 4-B: CPU使用率 90%以上 (no duration given: 5 minutes, as for the GPU)",
         "pre- or post-processing is CPU-bound: more CPU per instance (--cpu) or more instances"),
    Rule("memory", "memory over 90% for 5 minutes", MEMORY_UTILIZATION, 0.90, 300, "ALIGN_PERCENTILE_99",
         "WARNING", "runbook 000 phase 4-B: メモリ使用率 90%以上 (no duration given: 5 minutes, as for the GPU)",
         "the container is close to being killed for memory: raise --memory"),
    Rule("latency", "response time p95 over 30 s for 5 minutes", REQUEST_LATENCIES, 30_000.0, 300,
         "ALIGN_PERCENTILE_95", "ERROR",
         "runbook 000 phase 4-B: レスポンス時間 30秒以上 (p95 of a minute's requests; 5 minutes, as for the GPU)",
         "requests queue or the model is slow: check the GPU alerts, concurrency and max instances"),
)


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Target:
    """What the policies watch and whom they tell."""

    project: str
    service: str
    channels: tuple[str, ...] = ()


def project_id(value: Any) -> str:
    if not isinstance(value, str) or not PROJECT_ID.match(value):
        raise params.bad("project", value, "is not a Google Cloud project ID",
                         "use the project's ID (6 to 30 lowercase letters, digits and hyphens, starting with a letter)")
    return value


def channel_names(project: str, values: Iterable[Any] | None) -> tuple[str, ...]:
    """Full notification channel names; a bare ID is one of `project`'s. Sorted, each once."""
    names = set()
    for value in values or ():
        if isinstance(value, str) and CHANNEL_ID.match(value):
            value = f"projects/{project}/notificationChannels/{value}"
        if not isinstance(value, str) or not CHANNEL_NAME.match(value):
            raise params.bad("notification_channel", value, "is not a notification channel",
                             "give projects/PROJECT/notificationChannels/ID or the ID alone "
                             "(`gcloud beta monitoring channels list` shows them)")
        names.add(value)
    return tuple(sorted(names))


def target(project: Any, service: Any, channels: Iterable[Any] | None = None) -> Target:
    """The whole request checked before anything is read or written (BadInput names the flag and the fix)."""
    project = project_id(project)
    return Target(project, params.resource_name("service", service), channel_names(project, channels))


# ---------------------------------------------------------------- planning


def metric_filter(metric: str, service: str) -> str:
    return (f'resource.type = "{RESOURCE_TYPE}" AND resource.labels.service_name = "{service}" AND '
            f'metric.type = "{metric}"')


def display_name(rule: Rule, service: str) -> str:
    return f"{DISPLAY_PREFIX}{service} {rule.title}"


def labels(rule: Rule, service: str) -> dict[str, str]:
    return {MANAGED_BY: MANAGER, ALERT_LABEL: rule.key, SERVICE_LABEL: service}


def said(rule: Rule) -> str:
    """The threshold as a person says it."""
    if rule.metric == REQUEST_LATENCIES:
        return f"{rule.threshold / 1000:g} s"
    return f"{rule.threshold * 100:g}%"


def policy(rule: Rule, where: Target) -> dict:
    """One AlertPolicy: one threshold condition on the service's revisions, each revision judged on its own."""
    name = display_name(rule, where.service)
    condition = {
        "displayName": f"{where.service}: {rule.metric.split('/', 1)[1]} {rule.aligner[6:].lower()} over {said(rule)}",
        "conditionThreshold": {
            "filter": metric_filter(rule.metric, where.service),
            "aggregations": [{"alignmentPeriod": ALIGNMENT_PERIOD, "perSeriesAligner": rule.aligner}],
            "comparison": "COMPARISON_GT",
            "thresholdValue": rule.threshold,
            "duration": f"{rule.duration_s}s",
            "trigger": {"count": 1},
            # A GPU service scaled to zero sends no data: that is quiet, not an incident.
            "evaluationMissingData": "EVALUATION_MISSING_DATA_INACTIVE",
        },
    }
    content = (f"Cloud Run service `{where.service}` (project `{where.project}`): {rule.title} "
               f"(`{rule.metric}`, {rule.aligner}).\n\nLikely cause and fix: {rule.fix}.\n\n"
               f"Threshold: {rule.source}.\n\nManaged by gpuops (`gpuops alerts apply`): edit the plan, not this policy.")
    return {
        "displayName": name,
        "documentation": {"content": content, "mimeType": "text/markdown", "subject": name},
        "userLabels": labels(rule, where.service),
        "conditions": [condition],
        "combiner": "OR",
        "enabled": True,
        "notificationChannels": list(where.channels),
        "severity": rule.severity,
    }


def plan(where: Target, rules: Iterable[Rule] = RULES) -> list[dict]:
    return [policy(rule, where) for rule in rules]


# ---------------------------------------------------------------- reconciling with what exists


@dataclass
class Change:
    """What one planned policy needs: create, update, nothing, or a refusal (`blocked`, `duplicate`)."""

    key: str
    display_name: str
    action: str  # "create" | "update" | "in-sync" | "blocked" | "duplicate"
    desired: dict
    current: dict | None = None
    differences: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def name(self) -> str | None:
        return (self.current or {}).get("name")

    @property
    def disabled(self) -> bool:
        return self.current is not None and self.current.get("enabled") is False


def is_managed(existing: dict) -> bool:
    return existing.get("userLabels", {}).get(MANAGED_BY) == MANAGER


def _identity(doc: dict) -> tuple[str | None, str | None]:
    found = doc.get("userLabels", {})
    return found.get(ALERT_LABEL), found.get(SERVICE_LABEL)


def reconcile(existing: list[dict], desired: list[dict]) -> list[Change]:
    """Pair each planned policy with the managed one carrying its labels and say what it needs.

    A policy without managed-by=gpuops is never touched; one that has the display name gpuops would use blocks
    that policy (two policies of one name alert twice and confuse whoever reads them).
    """
    changes = []
    for want in desired:
        key, name = want["userLabels"][ALERT_LABEL], want["displayName"]
        mine = [p for p in existing if is_managed(p) and _identity(p) == _identity(want)]
        foreign = [p for p in existing if not is_managed(p) and p.get("displayName") == name]
        if len(mine) > 1:
            changes.append(Change(key, name, "duplicate", want, mine[0], reason=(
                f"{len(mine)} policies carry the labels {MANAGED_BY}={MANAGER}, {ALERT_LABEL}={key}: "
                f"{', '.join(p.get('name', '?') for p in mine)}; delete all but one and apply again")))
        elif not mine and foreign:
            changes.append(Change(key, name, "blocked", want, None, reason=(
                f"{foreign[0].get('name', '?')} has this display name and is not gpuops' (no label "
                f"{MANAGED_BY}={MANAGER}); gpuops leaves it alone: rename it, delete it, or add the labels "
                f"{MANAGED_BY}={MANAGER}, {ALERT_LABEL}={key}, {SERVICE_LABEL}={want['userLabels'][SERVICE_LABEL]} "
                "to let gpuops manage it")))
        elif not mine:
            changes.append(Change(key, name, "create", want))
        else:
            current = mine[0]
            found = differences(managed_part(want), managed_part(current))
            changes.append(Change(key, name, "update" if found else "in-sync", want, current, found))
    return changes


def managed_part(doc: dict) -> dict:
    """The fields gpuops writes, without what the server adds (condition names, records)."""
    part = {k: doc[k] for k in MANAGED_FIELDS if k in doc}
    part["conditions"] = [{k: v for k, v in c.items() if k != "name"} for c in doc.get("conditions", [])]
    part["notificationChannels"] = sorted(doc.get("notificationChannels", []))
    return part


def differences(planned: Any, current: Any, path: str = "") -> list[str]:
    """Where `current` lacks or differs from `planned` (server-added fields are no difference), as readable lines."""
    if is_subset(planned, current):
        return []
    if isinstance(planned, dict) and isinstance(current, dict):
        return [line for key, value in planned.items()
                for line in differences(value, current.get(key), f"{path}.{key}" if path else key)]
    if isinstance(planned, list) and isinstance(current, list) and len(planned) == len(current):
        return [line for i, (p, c) in enumerate(zip(planned, current)) for line in differences(p, c, f"{path}[{i}]")]
    return [f"{path}: {_show(current)} -> {_show(planned)}"]


def _show(value: Any) -> str:
    text = "(none)" if value is None else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def update_body(change: Change) -> dict:
    """The policy to send with UPDATE_MASK: the plan, keeping user labels someone else added."""
    body = {k: v for k, v in change.desired.items() if k in MANAGED_FIELDS}
    body["userLabels"] = {**(change.current or {}).get("userLabels", {}), **change.desired["userLabels"]}
    return body
