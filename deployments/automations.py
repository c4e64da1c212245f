"""Alerts as code: runbook Pattern B's alerts (§4: 4-2 backlog > 100, 4-3 job failures in a row) as Prefect
automations, applied to the Prefect API like deployments/apply.py applies the work pools: read what exists,
create what is missing, report drift (changed only with --update).

    python -m deployments.automations --dry-run
    python -m deployments.automations --notification-block custom-webhook/gpuops-alerts

Both notify through one Prefect notification block (`<block-type-slug>/<name>`: a Slack webhook, or a
custom webhook for the runbook's n8n), named by --notification-block or GPUOPS_ALERTS_BLOCK.

What Prefect's open-source server can express (prefect.server.events.schemas.automations, 3.8.8): event
triggers (reactive, proactive), compound and sequence triggers. Metric triggers are Prefect Cloud's only, and
no Prefect event carries a pool's backlog; so the backlog is measured by flow `watch-gpu-backlog`
(flows/hub_work.py, deployed every minute), which says `gpuops.work-pool.backlog.high` or `.normal`.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Sequence

from deployments.apply import EXIT_ERROR, EXIT_OK, EXIT_PENDING, _api_error, _Parser, with_api
from flows.hub_work import BACKLOG_HIGH, BACKLOG_NORMAL, BACKLOG_THRESHOLD
from gpuops.work_pool_backlog import GPU_POOLS

BLOCK_ENV = "GPUOPS_ALERTS_BLOCK"
BACKLOG_NAME = f"gpuops: GPU pool backlog over {BACKLOG_THRESHOLD} for 10 minutes"
FAILURES_NAME = "gpuops: GPU deployment failed 3 runs in a row"
BACKLOG_FOR = timedelta(minutes=10)
FAILURES_IN_A_ROW = 3
FAILURES_WITHIN = timedelta(hours=1)


@dataclass(frozen=True)
class Settings:
    block_document_id: Any
    gpu_pools: Sequence[str] = GPU_POOLS
    backlog_for: timedelta = BACKLOG_FOR
    failures_within: timedelta = FAILURES_WITHIN


def backlog_automation(settings: Settings):
    """A pool's backlog stays high: a `backlog.high` not followed by a `backlog.normal` within 10 minutes.

    A proactive trigger: the first `high` opens a 10-minute window per pool (for_each the pool's resource);
    a `normal` inside it closes the window quietly; a window that ends with no `normal` fires. While the pool
    stays high the next `high` opens the next window, so the alert repeats every 10 minutes.
    """
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    trigger = EventTrigger(
        match={"prefect.resource.id": "gpuops.work-pool.*"}, after={BACKLOG_HIGH}, expect={BACKLOG_NORMAL},
        for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1, within=settings.backlog_for)
    minutes = f"{settings.backlog_for.total_seconds() / 60:g} minutes"
    body = ("GPU work pool {{ event.resource['prefect.resource.name'] }}: {{ event.payload.backlog }} runs waiting "
            "(over {{ event.payload.threshold }}) and no lower reading for " + minutes + ". Start more workers "
            "or send GPU work to GKE (ENABLE_GKE_ROUTE=true).")
    return AutomationCore(
        name=BACKLOG_NAME, enabled=True,
        description=f"Runbook Pattern B 4-2: a GPU pool's backlog over the threshold for {minutes} "
                    "(measured every minute by watch-gpu-backlog).",
        trigger=trigger,
        actions=[SendNotification(block_document_id=settings.block_document_id,
                                  subject="gpuops: GPU backlog high", body=body)])


def failures_automation(settings: Settings):
    """A GPU deployment's runs end Failed 3 times in a row.

    A reactive trigger on `prefect.flow-run.Failed`, counted per deployment (for_each the related
    deployment), for runs on a GPU pool, threshold 3. Why this and not a sequence or compound trigger: none
    of Prefect's triggers can say "with no success in between" (no trigger resets on an event, and compound
    and sequence triggers have no negation), so every form counts failures in a window; this one counts them
    per deployment in one bucket, the plainest. The window (1 hour by default) is what "in a row" becomes:
    3 final failures of one deployment within it; a success in between does not reset the count. A run
    retried by its flow (process-file: 5 retries) counts once: an attempt that will be retried ends
    AwaitingRetry, only the last one Failed.
    """
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    trigger = EventTrigger(
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={"prefect.resource.role": "work-pool", "prefect.resource.name": list(settings.gpu_pools)},
        expect={"prefect.flow-run.Failed"}, for_each={"related:deployment:prefect.resource.id"},
        posture=Posture.Reactive, threshold=FAILURES_IN_A_ROW, within=settings.failures_within)
    body = ("Deployment {{ deployment.name }} on GPU pool {{ work_pool.name }} failed "
            f"{FAILURES_IN_A_ROW} runs in a row (within {settings.failures_within}); the last: "
            "{{ flow_run.name }} ({{ flow_run.state.message }}) {{ flow_run|ui_url }}")
    return AutomationCore(
        name=FAILURES_NAME, enabled=True,
        description=f"Runbook Pattern B 4-3: {FAILURES_IN_A_ROW} failed runs of one GPU deployment "
                    f"({', '.join(settings.gpu_pools)}) within {settings.failures_within}.",
        trigger=trigger,
        actions=[SendNotification(block_document_id=settings.block_document_id,
                                  subject="gpuops: GPU deployment failing", body=body)])


def desired_automations(settings: Settings) -> list:
    return [backlog_automation(settings), failures_automation(settings)]


def comparable(automation) -> dict:
    """What an automation says, without ids: trigger ids differ between the file and the API."""
    from prefect.events.schemas.automations import AutomationCore

    doc = AutomationCore.model_validate(automation.model_dump()).model_dump(
        mode="json", exclude={"trigger": {"id"}, "owner_resource": True, "tags": True})
    return _sorted_lists(doc)


def _sorted_lists(value):
    if isinstance(value, dict):
        return {k: _sorted_lists(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_sorted_lists(v) for v in value]
        return sorted(items) if all(isinstance(i, str) for i in items) else items
    return value


def _apply_one(client, desired, *, update: bool, dry_run: bool) -> str:
    name = desired.name
    try:
        found = client.read_automations_by_name(name)
    except Exception as exc:
        print(f"error        {name}: cannot read automations: {_api_error(exc)}")
        return "error"
    if len(found) > 1:
        print(f"error        {name}: {len(found)} automations have this name; delete all but one and apply again")
        return "error"
    current = found[0] if found else None
    if current is not None and comparable(current) == comparable(desired):
        print(f"in sync      {name}")
        return "ok"
    action = "create" if current is None else "update"
    if action == "update" and not update:
        print(f"differs      {name}: not updated, run with --update to apply this file")
        return "pending"
    if dry_run:
        print(f"would {action:<6} {name}")
        return "pending"
    try:
        if current is None:
            client.create_automation(desired)
        else:
            client.update_automation(current.id, desired)
    except Exception as exc:
        print(f"error        {name}: {action} refused: {_api_error(exc)}")
        return "error"
    print(f"{action + 'd':<12} {name}")
    return "ok"


def apply_automations(client, automations: list, *, update: bool = False, dry_run: bool = False) -> int:
    outcomes = [_apply_one(client, a, update=update, dry_run=dry_run) for a in automations]
    errors, pending = outcomes.count("error"), outcomes.count("pending")
    print(f"{len(automations)} automation(s): {errors} error(s), {pending} pending change(s)"
          + (" (dry run)" if dry_run else ""))
    if errors:
        return EXIT_ERROR
    return EXIT_PENDING if pending else EXIT_OK


def notification_block_id(name: str):
    """The block document id of a saved notification block (`<type-slug>/<name>`); ValueError saying why not."""
    from flows.common import notification_block

    return notification_block(name)._block_document_id


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m deployments.automations",
        description="Create gpuops' alert automations (GPU backlog high for 10 minutes; a GPU deployment failing "
                    "3 runs in a row) on the Prefect API at PREFECT_API_URL. An automation that exists and "
                    "differs is reported, and changed only with --update.",
        epilog="exit status: 0 every automation matches; 1 error (API unreachable or refusing, no such "
               "notification block); 2 changes pending (--dry-run found work, or drift without --update).")
    parser.add_argument("--notification-block", default=os.environ.get(BLOCK_ENV),
                        help=f"the notification block the alerts go through, <type-slug>/<name> (default ${BLOCK_ENV})")
    parser.add_argument("--gpu-pool", action="append", dest="gpu_pools",
                        help=f"a GPU work pool whose deployments' failures count (repeat; default {', '.join(GPU_POOLS)})")
    parser.add_argument("--backlog-minutes", type=float, default=BACKLOG_FOR.total_seconds() / 60,
                        help="how long a backlog stays high before the alert (default 10; at least 1/6: 10 s)")
    parser.add_argument("--failures-within-minutes", type=float, default=FAILURES_WITHIN.total_seconds() / 60,
                        help="the window the 3 failures fall in (default 60)")
    parser.add_argument("--update", action="store_true", help="update automations that differ")
    parser.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.backlog_minutes * 60 < 10:
        print("error: --backlog-minutes must be at least 1/6 (Prefect's proactive triggers need 10 s)", file=sys.stderr)
        return EXIT_ERROR
    settings = dict(gpu_pools=tuple(args.gpu_pools or GPU_POOLS), backlog_for=timedelta(minutes=args.backlog_minutes),
                    failures_within=timedelta(minutes=args.failures_within_minutes))
    if not args.notification_block:
        print(f"error: name the notification block the alerts go through: --notification-block <type-slug>/<name> "
              f"or {BLOCK_ENV} (e.g. custom-webhook/gpuops-alerts for the n8n webhook)", file=sys.stderr)
        return EXIT_ERROR

    def apply(client) -> int:
        try:
            block_id = notification_block_id(args.notification_block)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        automations = desired_automations(Settings(block_document_id=block_id, **settings))
        return apply_automations(client, automations, update=args.update, dry_run=args.dry_run)

    return with_api(apply)


if __name__ == "__main__":
    sys.exit(main())
