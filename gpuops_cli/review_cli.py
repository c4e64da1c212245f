"""`gpuops weekly-review`: the weekly review flow from the shell (its summary; --json: the whole review)."""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("weekly-review", help="the last week of every GPU and CPU deployment's runs "
                                                    "(flow weekly-review): runs, failures, durations, backlog, cost")
    # A string, checked by gpuops.params: a bad value is bad input naming the flag (exit 2), --json or not.
    p.add_argument("--days", default="7", help="how many days back from now (1-90, default 7)")
    p.add_argument("--notification-block", metavar="TYPE/NAME",
                   help="a Prefect notification block sent the summary, e.g. slack-webhook/ops or custom-webhook/n8n")
    p.add_argument("--project", help="Google Cloud project for GPU utilisation from Cloud Monitoring "
                                     "(default: not configured)")
    p.add_argument("--status-bucket-block", metavar="NAME",
                   help="a gpuops-status-bucket block for dead letters (default: GPUOPS_STATUS_BUCKET)")
    p.add_argument("--json", action="store_true", help="print the whole review as one JSON object on stdout")
    p.set_defaults(run=run, uses_prefect=True)


def run(args) -> dict:
    """The flow in this process, after the request is checked; the summary, or with --json the review."""
    from flows.weekly_review import check_request, weekly_review

    days = check_request(args.days, None, args.project, None)
    review = weekly_review(days=days, notification_block=args.notification_block, project=args.project,
                           status_bucket_block=args.status_bucket_block)
    if args.json:
        return review
    return {"window": f"{review['window']['start']} to {review['window']['end']}",
            "artifact": review["artifact"], "summary": "\n" + review["summary"]}
