"""`gpuops migrate-secrets`: plaintext secrets into Secret Manager (runbook phase 5-A); a dry run unless --execute."""
from __future__ import annotations

import argparse

from gpuops_cli.migration_cli import _auth, _probe_auth_args


def register(subparsers) -> None:
    p = subparsers.add_parser("migrate-secrets", help="move plaintext env secrets of a service and its jobs "
                                                      "into Secret Manager (phase 5-A)")
    p.add_argument("--project", required=True, help="Google Cloud project ID")
    p.add_argument("--region", required=True, help="Cloud Run region, e.g. us-central1")
    p.add_argument("--service", required=True, help="the Cloud Run service whose plaintext secrets move")
    p.add_argument("--prefix", help="name prefix create-jobs used (default: the service name)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", dest="execute", action="store_false",
                      help="list what would change, names only, and change nothing (the default)")
    mode.add_argument("--execute", dest="execute", action="store_true",
                      help="create the secrets, switch to references once the new revision serves")
    p.add_argument("--adopt", action="store_true",
                   help="use secrets of those names, and switch jobs or a GPU service, that gpuops did not create")
    p.add_argument("--probe-path", default="/healthz",
                   help="GET path the new revision must answer before traffic moves to it (default /healthz)")
    p.add_argument("--probe-requests", type=int, default=3, help="probe requests, each must pass (default 3)")
    p.add_argument("--ready-timeout-s", type=float, default=300.0,
                   help="how long the new revision may take to become ready (default 300)")
    _probe_auth_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (logs go to stderr)")
    p.set_defaults(run=_migrate_secrets, execute=False, uses_prefect=True)


def _migrate_secrets(args: argparse.Namespace) -> dict:
    from flows.common import resolve_target
    from flows.migrate_secrets import migrate_secrets
    from gpuops import params

    resolve_target(args.project, args.region, args.service)  # bad names fail before a flow run starts
    params.prefix(args.prefix)
    auth = _auth(args)
    params.probe_auth(**auth)
    return migrate_secrets(args.project, args.region, args.service, execute=args.execute, adopt=args.adopt,
                           prefix=args.prefix, probe_path=args.probe_path, probe_requests=args.probe_requests,
                           ready_timeout_s=args.ready_timeout_s, **auth)
