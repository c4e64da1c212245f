"""The EC2 migration's cost table (pure): on-demand and spot per month for the old and the new instance type.

Every figure is an estimate, labelled with its inputs: an hourly price times the billing month's hours.
Spot prices come from the API's spot price history when it gives a recent one (the latest Linux/UNIX price
in the instance's zone, else the cheapest zone), else from gpuops/data/prices.json with its source and date.
On-demand prices always come from that table: the EC2 API does not publish them.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from gpuops import cost

# EC2 keeps 90 days of spot price history: an older record is not a price the API can give today.
SPOT_HISTORY_DAYS = 90
MARKETS = ("on_demand", "spot")


def _parse(at: str) -> datetime:
    return datetime.fromisoformat(at.replace("Z", "+00:00"))


def latest_spot(history: list[dict], instance_type: str, now: datetime, zone: str | None = None) -> dict | None:
    """The most recent price per zone within SPOT_HISTORY_DAYS; the one of `zone` when it has one, else the
    cheapest zone's. None when the history holds no recent price for the type."""
    oldest = now - timedelta(days=SPOT_HISTORY_DAYS)
    latest: dict[str, dict] = {}
    for row in history:
        if row["instance_type"] != instance_type or _parse(row["at"]) < oldest:
            continue
        seen = latest.get(row["zone"])
        if seen is None or _parse(row["at"]) > _parse(seen["at"]):
            latest[row["zone"]] = row
    if not latest:
        return None
    if zone in latest:
        return latest[zone]
    return min(latest.values(), key=lambda r: (r["usd_per_hour"], r["zone"] or ""))


def stale_note(history: list[dict], now: datetime) -> str | None:
    """Why records the API gave were not used (moto answers a fixed 2006 price, for one)."""
    oldest = now - timedelta(days=SPOT_HISTORY_DAYS)
    stale = [r for r in history if _parse(r["at"]) < oldest]
    if not stale:
        return None
    newest = max(stale, key=lambda r: _parse(r["at"]))
    return (f"{len(stale)} spot price record(s) from the API are older than {SPOT_HISTORY_DAYS} days (newest "
            f"{newest['at']}): not used, since EC2 keeps {SPOT_HISTORY_DAYS} days of history")


def _row(instance_type: str, market: str, usd_per_hour: float | None, hours: float, source: str, as_of: str,
         basis: str, origin: str) -> dict:
    monthly = None if usd_per_hour is None else round(usd_per_hour * hours, 2)
    return {"instance_type": instance_type, "market": market.replace("_", "-"), "kind": "estimate",
            "usd_per_hour": None if usd_per_hour is None else round(usd_per_hour, 4), "usd_per_month": monthly,
            "source": source, "as_of": as_of, "basis": basis, "from": origin}


def _from_table(instance_type: str, market: str, hours: float, table: dict) -> dict:
    try:
        rate = cost.rate(f"ec2/{instance_type}/{market}", table)
    except ValueError:
        return _row(instance_type, market, None, hours, "gpuops/data/prices.json has no price for this type", "-",
                    "no price recorded", "none")
    if rate["usd_per_hour"] is None:  # a date would read as a price checked that day
        return _row(instance_type, market, None, hours, rate["source"], "no price", rate["basis"], "none")
    return _row(instance_type, market, rate["usd_per_hour"], hours, rate["source"], rate["as_of"],
                f"{rate['basis']} (price table)", "table")


def cost_table(instance_types: tuple[str, ...], spot_history: list[dict] | None, now: datetime, api_label: str,
               zone: str | None = None, table: dict | None = None) -> dict:
    """Rows per type and market, each an estimate with its source and date; notes on what was not used."""
    table = table or cost.price_table()
    hours = table["ec2"]["hours_per_month"]
    rows, notes = [], []
    history = spot_history or []
    for instance_type in instance_types:
        rows.append(_from_table(instance_type, "on_demand", hours, table))
        spot = latest_spot(history, instance_type, now, zone)
        if spot is None:
            rows.append(_from_table(instance_type, "spot", hours, table))
            continue
        where = "the instance's zone" if spot["zone"] == zone else "the cheapest zone with a recent price"
        rows.append(_row(instance_type, "spot", spot["usd_per_hour"], hours,
                         f"DescribeSpotPriceHistory, {api_label}", spot["at"],
                         f"latest Linux/UNIX spot price in {spot['zone']} ({where}) x {hours} h", "api"))
    note = stale_note(history, now)
    if note:
        notes.append(note)
    if spot_history is None:
        notes.append("spot price history was not read (the API call failed): spot figures are the price table's")
    notes.append(f"every figure is an estimate: an hourly price x {hours} h (a month of continuous running); "
                 "spot prices move hourly")
    return {"kind": "estimate", "hours_per_month": hours, "rows": rows, "notes": notes}


def monthly(table: dict, instance_type: str, market: str) -> float | None:
    for row in table["rows"]:
        if row["instance_type"] == instance_type and row["market"] == market.replace("_", "-"):
            return row["usd_per_month"]
    return None
