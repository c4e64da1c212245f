"""`gpuops cost-report`: a month's GPU and CPU cost from the Prefect API (flow cost-report), against a budget."""
from __future__ import annotations

from gpuops.errors import BadInput


def register(subparsers) -> None:
    p = subparsers.add_parser("cost-report", help="GPU and CPU seconds and their cost for a month, per deployment "
                                                  "and work pool, from the Prefect API (flow cost-report)")
    p.add_argument("--month", metavar="YYYY-MM", help="calendar month in UTC, or `previous` (default: this month)")
    p.add_argument("--budget", metavar="USD", help="compare the month's projection with this; over it: exit 1 "
                                                   "and notify through --notification-block")
    p.add_argument("--notification-block", metavar="TYPE/NAME",
                   help="a Prefect notification block told when over budget, e.g. custom-webhook/gpuops-alerts")
    p.add_argument("--pool-price", action="append", metavar="POOL=KEY",
                   help="price a work pool not in gpuops/data/prices.json, e.g. my-pool=ec2/g4dn.xlarge/spot "
                        "(repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (logs go to stderr)")
    p.set_defaults(run=_cost_report, uses_prefect=True)


def pool_prices(given: list[str] | None) -> dict[str, str] | None:
    if not given:
        return None
    pairs = [item.partition("=") for item in given]
    bad = next((item for item, (pool, eq, key) in zip(given, pairs) if not (pool and eq and key)), None)
    if bad is not None:
        raise BadInput(f"pool_price (--pool-price) {bad!r} is not POOL=KEY: pass e.g. "
                       "--pool-price my-pool=ec2/g4dn.xlarge/spot.")
    return {pool: key for pool, _, key in pairs}


def _cost_report(args):
    """The flow in this process; exit 1 when the projection is over the budget (the report is printed)."""
    from gpuops import monthly_cost

    # Refused here, naming the flag, before a flow run exists.
    prices = pool_prices(args.pool_price)
    _, budget = monthly_cost.check_request(args.month, args.budget, pool_prices=prices, cli=True)
    from flows.cost_report import cost_report

    result = cost_report(month=args.month, budget_usd=budget, notification_block=args.notification_block,
                         pool_prices=prices)
    over = bool(result.get("budget") and result["budget"]["over"])
    return (result, 1) if over else result
