"""Flow `cost-report`: a month's GPU and CPU seconds per deployment and work pool from the Prefect API, priced,
projected and compared with a budget; CSV and markdown artifacts; a notification when the projection is over."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Optional

from prefect import flow, get_run_logger

from flows.common import notification_block, notify
from gpuops import monthly_cost
from gpuops.errors import BadInput, CouldNotRun


def check_notification_block(name: Optional[str]) -> None:
    """A named block must be a saved notification block: said before the report is made, not after."""
    if name:
        notification_block(name)


def publish(report: dict) -> list[str]:
    """The report as a markdown artifact, its rows as a table artifact, and the same rows as CSV.

    The CSV is a markdown artifact holding one fenced `csv` block: Prefect artifacts have no file type, a
    link artifact would need somewhere to host the file (the cost report needs no bucket otherwise), and a
    fenced block shows verbatim in the UI, ready to copy into a spreadsheet. One row per deployment and work
    pool keeps it small whatever the number of runs.
    """
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = f"cost-report-{report['month']}"
    create_markdown_artifact(key=key, markdown=monthly_cost.render_markdown(report),
                             description=f"GPU and CPU cost, {report['month']}")
    create_table_artifact(key=f"{key}-table", table=report["by_deployment"] or [{"deployment": "no runs"}],
                          description=f"seconds and cost per deployment and work pool, {report['month']}")
    create_markdown_artifact(key=f"{key}-csv", markdown=monthly_cost.fenced(monthly_cost.render_csv(report), "csv"),
                             description=f"the per-deployment rows as CSV, {report['month']}")
    return [key, f"{key}-table", f"{key}-csv"]


@flow(name="cost-report")
def cost_report(month: Optional[str] = None, budget_usd: Optional[float] = None, now: Optional[datetime] = None,
                notification_block: Optional[str] = None, pool_prices: Optional[dict[str, str]] = None) -> dict:
    """GPU and CPU seconds and their cost for a calendar month (UTC), from every flow run that ran in it.

    Args:
        month: YYYY-MM, or `previous` (the month before the report time's, for a schedule on the 1st);
            default the current month.
        budget_usd: compare the month's projection with this; over it: notify and say so.
        now: the report time (default now): figures stop there and the projection scales from it.
        notification_block: a Prefect notification block (`custom-webhook/n8n`, `slack-webhook/ops`) told when the
            projection is over the budget; empty: the flow log only.
        pool_prices: work pool -> price key (`cloud_run/nvidia-l4`, `ec2/g4dn.xlarge/spot`, `vast_ai` ...), over
            the table in gpuops/data/prices.json, for pools named otherwise.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    window, budget = monthly_cost.check_request(month, budget_usd, now or datetime.now(timezone.utc), pool_prices)
    check_notification_block(notification_block)
    tally = monthly_cost.Tally(window, pool_prices=pool_prices)
    pages = 0
    with get_client(sync_client=True) as client:
        for page in monthly_cost.read_runs(client, window, tally.needs_record):
            pages += 1
            for run in page:
                tally.add(run)
    report = tally.report(budget)
    logger = get_run_logger()
    logger.info("%s: %d runs in %d pages; month to date $%.2f", window.month, tally.runs_seen, pages,
                report["usd_month_to_date"])
    failed = None
    if report["budget"] and report["budget"]["over"]:
        try:
            notify(notification_block, *monthly_cost.notification(report))
            report["budget"]["notified"] = notification_block
        except Exception as exc:  # the report still goes out, then the run fails saying so
            # The type only: an HTTP error's text holds the webhook URL, a secret for Slack.
            failed = f"through {notification_block}: {type(exc).__name__}"
            report["budget"]["notification_error"] = failed
    report["artifacts"] = publish(report)
    report["prefect_api"] = PREFECT_API_URL.value()
    if failed:
        raise CouldNotRun(f"the projection is over the budget and the notification failed ({failed}); "
                          f"the report is in artifact {report['artifacts'][0]}")
    return report
