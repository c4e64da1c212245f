"""`gpuops cleanup`: list what the migration left behind; with --execute, delete what an approver names."""
from __future__ import annotations

import sys

EXIT_OK, EXIT_CHECK_FAILED = 0, 1


def register(subparsers) -> None:
    p = subparsers.add_parser("cleanup", help="list and, once approved, delete what the migration left (phase 8-A)")
    p.add_argument("--project", required=True, help="Google Cloud project ID")
    p.add_argument("--region", required=True, help="Cloud Run region, e.g. us-central1")
    p.add_argument("--service", required=True, help="the source Cloud Run service")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", dest="execute", action="store_false",
                      help="list what would be deleted and change nothing (the default)")
    mode.add_argument("--execute", dest="execute", action="store_true",
                      help="pause for an approval naming each resource, then delete only those")
    p.add_argument("--approval-timeout", type=int, default=3600, metavar="SECONDS",
                   help="how long --execute waits for the approval; no answer deletes nothing (default 3600)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (logs go to stderr)")
    p.set_defaults(run=_cleanup, execute=False, uses_prefect=True)


def _cleanup(args) -> tuple[dict, int]:
    from flows.cleanup import cleanup
    from flows.common import resolve_target

    resolve_target(args.project, args.region, args.service)  # bad names fail before a flow run starts
    if args.execute:
        # The flow blocks this process while paused; it logs the flow run id and the resume request.
        print("gpuops cleanup: --execute pauses for an approval; how to answer (Prefect UI or "
              "POST /api/flow_runs/{id}/resume) is printed below once the flow run pauses.", file=sys.stderr)
    result = cleanup(args.project, args.region, args.service, execute=args.execute,
                     approval_timeout_s=args.approval_timeout)
    timed_out = bool(result["approval"] and result["approval"]["timed_out"])
    return result, EXIT_CHECK_FAILED if result["refused"] or timed_out else EXIT_OK
