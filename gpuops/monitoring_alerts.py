"""Adapter: Cloud Monitoring alert policies through google-cloud-monitoring's AlertPolicyServiceClient (gRPC).

One function per remote call, REST-shaped JSON dicts in and out (what gpuops/alert_policies.py plans), and
`apply`: read the project's policies, create the planned ones that are missing, report the drift of gpuops'
own (updated only when asked), never touch a policy without the label managed-by=gpuops.

google-cloud-monitoring has no REST transport (googleapis/google-cloud-python#16852): the client speaks gRPC to
monitoring.googleapis.com with Application Default Credentials, or, for an `http://HOST:PORT` endpoint (the
local emulator, gpuops/emulator/alert_policies_api.py), over an insecure channel with no credentials.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from google.api_core import exceptions as gexc

from gpuops import alert_policies, retry
from gpuops.errors import CouldNotRun

ENDPOINT_ENV = "GPUOPS_ALERT_POLICY_API"
GOOGLE_ENDPOINT = "monitoring.googleapis.com"
CALL_TIMEOUT_S = 60.0
EDITOR_ROLE = "roles/monitoring.alertPolicyEditor"


class BodyError(ValueError):
    """A policy that Cloud Monitoring's AlertPolicy type cannot hold; raised before any call."""


@dataclass
class AlertPolicies:
    """The client of one endpoint and the bounds every call keeps."""

    endpoint: str | None
    client: Any  # monitoring_v3.AlertPolicyServiceClient
    backoff: retry.Backoff = field(default_factory=retry.Backoff.from_env)

    @property
    def is_emulator(self) -> bool:
        return bool(self.endpoint and self.endpoint.startswith("http://"))

    def describe(self) -> str:
        if self.is_emulator:
            return f"gpuops Cloud Monitoring alert policy emulation at {self.endpoint}, not Google"
        return self.endpoint or GOOGLE_ENDPOINT


def connect(endpoint: str | None = None, credentials: Any = None) -> AlertPolicies:
    """A client for `GPUOPS_ALERT_POLICY_API` (wins), else `endpoint`, else Google with ADC."""
    from google.api_core.client_options import ClientOptions
    from google.cloud import monitoring_v3

    endpoint = (os.environ.get(ENDPOINT_ENV) or endpoint or "").rstrip("/") or None
    if endpoint and endpoint.startswith("http://"):
        import grpc
        from google.cloud.monitoring_v3.services.alert_policy_service.transports import (
            AlertPolicyServiceGrpcTransport)

        # A local emulator: plain gRPC, no Google credentials.
        transport = AlertPolicyServiceGrpcTransport(channel=grpc.insecure_channel(endpoint[len("http://"):]))
        return AlertPolicies(endpoint, monitoring_v3.AlertPolicyServiceClient(transport=transport))
    host = endpoint.removeprefix("https://") if endpoint else None
    options = ClientOptions(api_endpoint=host) if host else None
    return AlertPolicies(endpoint, monitoring_v3.AlertPolicyServiceClient(client_options=options,
                                                                          credentials=credentials))


# ---------------------------------------------------------------- conversions


def to_dict(message: Any) -> dict:
    """A proto-plus message as the REST JSON Google sends (camelCase, defaults left out)."""
    from google.protobuf import json_format

    return json_format.MessageToDict(type(message).pb(message))


def from_dict(policy: dict) -> Any:
    """Parse with the AlertPolicy type, so a policy Google would not parse fails here, before any call."""
    from google.cloud import monitoring_v3
    from google.protobuf import json_format

    try:
        return monitoring_v3.AlertPolicy.from_json(json.dumps(policy), ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise BodyError(f"AlertPolicy {policy.get('displayName', '')!r} is invalid: {exc}") from exc


# ---------------------------------------------------------------- one function per call


def list_policies(ap: AlertPolicies, project: str) -> list[dict]:
    """Every alert policy of the project, all pages."""
    def read():
        pager = ap.client.list_alert_policies(name=f"projects/{project}", retry=None, timeout=CALL_TIMEOUT_S)
        return [to_dict(policy) for policy in pager]

    return retry.call(f"list alert policies of {project}", read, backoff=ap.backoff)


def get_policy(ap: AlertPolicies, name: str) -> dict | None:
    def read():
        try:
            return to_dict(ap.client.get_alert_policy(name=name, retry=None, timeout=CALL_TIMEOUT_S))
        except gexc.NotFound:
            return None

    return retry.call(f"get alert policy {name}", read, backoff=ap.backoff)


def create_policy(ap: AlertPolicies, project: str, policy: dict) -> dict:
    """Create; not idempotent (Google names each new policy), so after a lost answer a read-back looks for the
    managed policy with these labels and this content before sending it again."""
    message = from_dict(policy)

    def send():
        return to_dict(ap.client.create_alert_policy(name=f"projects/{project}", alert_policy=message, retry=None,
                                                     timeout=CALL_TIMEOUT_S))

    def guard():
        for change in alert_policies.reconcile(list_policies(ap, project), [policy]):
            return change.current if change.action == "in-sync" else None
        return None

    return retry.call(f"create alert policy {policy.get('displayName', '')!r}", send, backoff=ap.backoff,
                      read_back=guard)


def update_policy(ap: AlertPolicies, name: str, policy: dict,
                  paths: Iterable[str] = alert_policies.UPDATE_MASK) -> dict:
    """Set the fields named by `paths` (the others, `enabled` among them, stay); idempotent, so safely resent."""
    from google.protobuf import field_mask_pb2

    message = from_dict({**policy, "name": name})
    mask = field_mask_pb2.FieldMask(paths=list(paths))

    def send():
        return to_dict(ap.client.update_alert_policy(alert_policy=message, update_mask=mask, retry=None,
                                                     timeout=CALL_TIMEOUT_S))

    return retry.call(f"update alert policy {name}", send, backoff=ap.backoff)


# ---------------------------------------------------------------- apply


@dataclass
class Prepared:
    """What `prepare` read and decided: the plan, the project's policies, and each planned policy's change."""

    where: alert_policies.Target
    desired: list[dict]
    existing: list[dict]
    changes: list[alert_policies.Change]

    @property
    def refused(self) -> bool:
        return any(c.action in ("blocked", "duplicate") for c in self.changes)


def prepare(ap: AlertPolicies, where: alert_policies.Target,
            rules: Iterable[alert_policies.Rule] = alert_policies.RULES) -> Prepared:
    """Plan, parse every body, read the project's policies and decide; no write."""
    desired = alert_policies.plan(where, rules)
    for policy in desired:
        from_dict(policy)
    existing = _guarded(lambda: list_policies(ap, where.project), where.project, "read")
    return Prepared(where, desired, existing, alert_policies.reconcile(existing, desired))


def apply(ap: AlertPolicies, prepared: Prepared, *, update: bool = False, dry_run: bool = False) -> dict:
    """Write what is missing (and, with `update`, what drifted); say what happened to each policy.

    A planned policy blocked by someone else's policy of the same display name, or by duplicates, refuses the
    whole apply before its first write. `ok` is False when a policy was refused, or differs and was left so.
    """
    where, refused = prepared.where, prepared.refused
    outcomes = [_outcome(c, _act(ap, where.project, c, update=update, dry_run=dry_run or refused))
                for c in prepared.changes]
    counts = Counter(o["action"] for o in outcomes)
    result = {
        "endpoint": ap.describe(), "emulator": ap.is_emulator, "project": where.project, "service": where.service,
        "notification_channels": list(where.channels), "policies": outcomes, "counts": dict(sorted(counts.items())),
        "foreign_left_alone": sum(1 for p in prepared.existing if not alert_policies.is_managed(p)),
        "ok": not refused and not counts.get("differs"),
    }
    if refused:
        result["refused"] = "nothing was written: a planned policy is blocked (see its reason)"
    if dry_run:
        result["plan"] = prepared.desired
    return result


def _act(ap: AlertPolicies, project: str, change: alert_policies.Change, *, update: bool, dry_run: bool) -> str:
    if change.action in ("blocked", "duplicate"):
        return "refused"
    if change.action == "in-sync":
        return "in-sync"
    if change.action == "update" and not update:
        return "differs"
    if dry_run:
        return f"would-{change.action}"
    if change.action == "create":
        change.current = _guarded(lambda: create_policy(ap, project, change.desired), project, "create")
        return "created"
    _guarded(lambda: update_policy(ap, change.name, alert_policies.update_body(change)), project, "update")
    return "updated"


def _outcome(change: alert_policies.Change, action: str) -> dict:
    outcome = {"alert": change.key, "display_name": change.display_name, "action": action, "policy": change.name,
               "differences": change.differences}
    if change.reason:
        outcome["reason"] = change.reason
    if change.disabled:
        outcome["disabled"] = "paused by someone (enabled: false): gpuops leaves it paused"
    return outcome


def _guarded(call, project: str, what: str):
    """Google's refusals of the caller, said with the fix; anything else goes up as it is."""
    try:
        return call()
    except (gexc.PermissionDenied, gexc.Unauthenticated) as exc:
        raise CouldNotRun(f"Cloud Monitoring refused to {what} alert policies of project {project} "
                          f"({type(exc).__name__}: {exc.message}): the caller needs {EDITOR_ROLE} "
                          "(list needs roles/monitoring.alertPolicyViewer). Nothing more was written.") from None
