"""`gpuops hub`: the intake hub (CONTRACTS §5) — FastAPI + uvicorn, the outbox and its dispatcher."""
from __future__ import annotations

import logging

from gpuops.errors import BadInput, CouldNotRun
from gpuops.hub.dispatcher import CLOUD_RUN_GPU_POOL


def register(subparsers) -> None:
    p = subparsers.add_parser("hub", help="serve the intake hub: tasks, GitHub and Pub/Sub push -> Prefect runs")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--db", metavar="URL", help="the outbox: a SQLite path or sqlite:///PATH (default under "
                                               "GPUOPS_STATE_DIR), or postgresql://... (GPUOPS_HUB_DB)")
    p.add_argument("--enable-gke-route", action="store_true", default=None,
                   help="overflow GPU work to GKE when the Cloud Run GPU pool's backlog passes the threshold "
                        "(ENABLE_GKE_ROUTE=true)")
    p.add_argument("--gke-backlog-threshold", type=int, help="backlog (late + scheduled runs) that overflows (default 20)")
    p.add_argument("--cloud-run-pool", default=CLOUD_RUN_GPU_POOL, metavar="NAME",
                   help=f"the work pool whose backlog decides the overflow, read every 10 s while the GKE route is on "
                        f"(default {CLOUD_RUN_GPU_POOL})")
    p.add_argument("--rate-per-s", type=float, default=10.0, help="flow runs created per second at most (default 10)")
    for setting, flag in (("api_key", "--api-key-block"), ("github_secret", "--github-secret-block"),
                          ("pubsub_token", "--pubsub-token-block")):
        p.add_argument(flag, dest=f"{setting}_block", metavar="NAME",
                       help=f"a Prefect Secret block holding the {setting.replace('_', ' ')} (its variable wins)")
    p.add_argument("--lease-s", type=float, default=60.0,
                   help="how long a claimed task stays this hub's before another replica (or this one, restarted) "
                        "may take it (default 60)")
    p.set_defaults(run=serve)


def serve(args) -> dict:
    import os

    import uvicorn

    from gpuops.hub.dispatcher import DispatchSettings, Dispatcher
    from gpuops.hub.intake_app import IntakeSettings, create_app
    from gpuops.hub.outbox import OutboxError, open_outbox

    if not 0 < args.port < 65536:
        raise BadInput(f"port (--port) {args.port} is not a TCP port: pass 1-65535")
    if args.lease_s <= 0:
        raise BadInput(f"lease_s (--lease-s) {args.lease_s} must be above 0: pass e.g. --lease-s 60")
    if args.gke_backlog_threshold is not None and args.gke_backlog_threshold < 0:
        raise BadInput(f"gke_backlog_threshold (--gke-backlog-threshold) {args.gke_backlog_threshold} is below 0: "
                       "pass the number of waiting runs that overflows, e.g. 20")
    if args.rate_per_s <= 0:
        raise BadInput(f"rate_per_s (--rate-per-s) {args.rate_per_s} must be above 0: pass e.g. --rate-per-s 10")
    blocks = {name: getattr(args, f"{name}_block") for name in ("api_key", "github_secret", "pubsub_token")
              if getattr(args, f"{name}_block")}
    settings = IntakeSettings.from_env(blocks=blocks, enable_gke_route=args.enable_gke_route,
                                    gke_backlog_threshold=args.gke_backlog_threshold)
    db = args.db or os.environ.get("GPUOPS_HUB_DB")
    if db and "://" not in db:
        db = f"sqlite:///{os.path.abspath(db)}"  # a plain path is a SQLite file
    try:
        outbox = open_outbox(db)
    except OutboxError as exc:  # a database that does not answer: could not run (exit 3)
        raise CouldNotRun(f"the hub's outbox could not be opened: {exc}") from None
    except ValueError as exc:
        raise BadInput(f"db (--db / GPUOPS_HUB_DB): {exc}") from None
    # The backlog is read only while it decides something: with the GKE route off nothing overflows.
    dispatch = DispatchSettings(rate_per_s=args.rate_per_s, lease_s=args.lease_s,
                                backlog_pool=args.cloud_run_pool if settings.enable_gke_route else None)
    dispatcher = Dispatcher(outbox, dispatch).start()
    logging.getLogger("gpuops.hub").info("hub %s on %s:%s", dispatcher.owner, args.host, args.port)
    try:
        # Access logs off: a request line can carry a Pub/Sub push token in its query.
        uvicorn.run(create_app(outbox, dispatcher, settings), host=args.host, port=args.port,
                    log_level="warning", access_log=False)
    finally:
        dispatcher.stop()
        outbox.close()
    return {"stopped": True, "owner": dispatcher.owner}
