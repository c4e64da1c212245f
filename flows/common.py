"""What every Cloud Run flow needs: which service, through which endpoint."""
from __future__ import annotations

import re
from dataclasses import dataclass

from blocks.cloud_run_blocks import CloudRunTarget
from gpuops import cloudrun
from gpuops.errors import BadInput

_ID = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_PROJECT = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
_WHAT = {
    "project": "Google Cloud project ID (6-30 lowercase letters, digits, hyphens)",
    "region": "region name",
    "service": "Cloud Run service name (lowercase letters, digits, hyphens)",
}


@dataclass(frozen=True)
class Target:
    project: str
    region: str
    service: str
    endpoint: str | None = None

    @property
    def service_name(self) -> str:
        return cloudrun.service_name(self.project, self.region, self.service)

    def job_name(self, job: str) -> str:
        return cloudrun.job_name(self.project, self.region, job)


def resolve_target(project: str | None, region: str | None, service: str | None,
                   block: CloudRunTarget | None = None) -> tuple[Target, object]:
    """Explicit parameters win over the block; every missing or malformed field is named."""
    project = project or (block.project if block else None)
    region = region or (block.region if block else None)
    service = service or (block.service if block else None)
    for field, value, pattern, example in (
        ("project", project, _PROJECT, "nca-toolkit-438301"),
        ("region", region, _ID, "us-central1"),
        ("service", service, _ID, "no-code-architects-toolkit"),
    ):
        if not value:
            raise BadInput(f"{field} is required: pass --{field} (e.g. {example}) or a CloudRunTarget block.")
        if not pattern.match(value):
            raise BadInput(f"{field} {value!r} is not a valid {_WHAT[field]} (e.g. --{field} {example}).")
    credentials = block.google_credentials() if block else None
    return Target(project, region, service, block.endpoint if block else None), credentials


def connect(target: Target, credentials=None) -> cloudrun.CloudRun:
    return cloudrun.connect(target.endpoint, credentials)


def where(cr: cloudrun.CloudRun) -> str:
    """How a report names the API it talked to: an emulator is always labelled as one."""
    if cr.is_emulator:
        return f"gpuops Cloud Run emulator at {cr.endpoint} (not Google)"
    return cr.endpoint or "Google Cloud Run Admin API (run.googleapis.com)"


def notify(block_name: str | None, subject: str, body: str) -> None:
    """Tell people: always in the flow log, and through a Prefect notification block when named.

    A canary that rolls back silently is a known failure of such tools (Flagger #1816): every
    rollback and every hold goes through here.
    """
    from prefect import get_run_logger
    from prefect.blocks.core import Block

    get_run_logger().warning("%s: %s", subject, body)
    if block_name:
        Block.load(block_name).notify(body=body, subject=subject)


def notification_block(name: str):
    """A saved notification block named `<block-type-slug>/<name>`; BadInput (a ValueError) saying why not.

    Checked before a flow does its work, so a report is never made only to fail at the end.
    """
    from prefect.blocks.core import Block

    if "/" not in name:
        raise BadInput(f"notification_block (--notification-block) {name!r}: give it as <block-type-slug>/<name>, "
                       "e.g. slack-webhook/gpuops-alerts or custom-webhook/gpuops-alerts.")
    try:
        block = Block.load(name)
    except ValueError as exc:
        raise BadInput(f"notification_block (--notification-block) {name!r} is not saved on this Prefect API "
                       f"({exc}): save it, or name one that is.") from None
    if "notify" not in block.get_block_capabilities():
        raise BadInput(f"notification_block (--notification-block) {name!r} cannot notify: use a notification "
                       "block (Slack, custom webhook ...).")
    return block
