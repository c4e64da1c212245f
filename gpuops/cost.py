"""Cost figures: measured GPU seconds or stated monthly hours, times a dated price table (pure)."""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

HOURS_PER_MONTH = 730  # Google's billing month


@lru_cache(maxsize=1)
def price_table() -> dict:
    return json.loads(resources.files("gpuops.data").joinpath("prices.json").read_text())


def hourly(gpu_type: str, table: dict | None = None) -> dict:
    table = table or price_table()
    entry = table["cloud_run"].get(gpu_type)
    if entry is None:
        raise ValueError(f"no Cloud Run price for {gpu_type!r}; known: {', '.join(table['cloud_run'])}")
    return {"gpu": entry["gpu_per_hour"], "instance": entry["instance_per_hour"]["usd"],
            "total": round(entry["gpu_per_hour"] + entry["instance_per_hour"]["usd"], 4)}


def estimate(gpu_type: str, job_hours: float, service_hours: float, min_instances: int = 0,
             table: dict | None = None) -> dict:
    """A monthly estimate from stated hours (the runbook's table, with today's prices)."""
    table = table or price_table()
    rate = hourly(gpu_type, table)
    idle_hours = min_instances * HOURS_PER_MONTH  # min instances are billed even when idle
    rows = [
        {"item": "GPU job", "hours": job_hours},
        {"item": "GPU service (on demand)", "hours": service_hours},
        {"item": f"GPU service min instances ({min_instances} x {HOURS_PER_MONTH} h)", "hours": idle_hours},
    ]
    for row in rows:
        row["usd_per_hour"] = rate["total"]
        row["usd"] = round(row["hours"] * rate["total"], 2)
    return {
        "kind": "estimate",
        "inputs": {"gpu_type": gpu_type, "job_hours_per_month": job_hours,
                   "service_hours_per_month": service_hours, "min_instances": min_instances},
        "rate": rate, "rows": rows, "usd_per_month": round(sum(r["usd"] for r in rows), 2),
        "price_source": f"{table['source']} (as of {table['as_of']})",
    }


def measured(gpu_type: str, gpu_seconds: float, table: dict | None = None) -> dict:
    """What GPU time this run really used costs (GPU billed per second)."""
    rate = hourly(gpu_type, table)
    return {"kind": "measured", "gpu_seconds": round(gpu_seconds, 1),
            "usd": round(gpu_seconds / 3600 * rate["total"], 4), "rate": rate}


# --- price keys: what a run on a work pool costs per hour (the cost report) -------------------------
# "cloud_run/<gpu>", "ec2/<instance type>/<on_demand|spot>", "vast_ai" (per run, from the instance record).
VAST_AI = "vast_ai"


def price_keys(table: dict | None = None) -> list[str]:
    table = table or price_table()
    keys = [f"cloud_run/{gpu}" for gpu in table["cloud_run"]]
    keys += [f"ec2/{kind}/{market}" for kind, entry in table["ec2"].items() if isinstance(entry, dict)
             for market in ("on_demand", "spot") if market in entry]
    return keys + [VAST_AI]


def rate(key: str, table: dict | None = None) -> dict:
    """The hourly price a key names, with its basis, source and date; `usd_per_hour` None: no price recorded."""
    table = table or price_table()
    parts = key.split("/") if isinstance(key, str) else []
    if len(parts) == 2 and parts[0] == "cloud_run" and parts[1] in table["cloud_run"]:
        return _cloud_run_rate(key, parts[1], table)
    if len(parts) == 3 and parts[0] == "ec2" and isinstance(table["ec2"].get(parts[1]), dict) \
            and parts[2] in table["ec2"][parts[1]]:
        return _ec2_rate(key, table["ec2"], parts[1], parts[2])
    if key == VAST_AI:
        entry = table["vast_ai"]
        return {"key": key, "kind": entry["kind"], "usd_per_hour": None, "source": entry["source"],
                "as_of": entry["as_of"], "basis": "per run: the instance's dph_total"}
    raise ValueError(f"no price {key!r}; known: {', '.join(price_keys(table))}")


def _cloud_run_rate(key: str, gpu_type: str, table: dict) -> dict:
    entry, each = table["cloud_run"][gpu_type], hourly(gpu_type, table)
    size = entry["instance_per_hour"]
    return {"key": key, "kind": "gpu", "usd_per_hour": each["total"], "source": table["source"],
            "as_of": table["as_of"],
            "basis": f"GPU ${each['gpu']}/h + its instance's CPU and memory ({size['cpu']} vCPU / "
                     f"{size['memory_gib']} GiB) ${each['instance']}/h, {entry['billing']}"}


def _ec2_rate(key: str, ec2: dict, instance_type: str, market: str) -> dict:
    """EC2 figures are monthly, as the source gives them: the hourly rate is that over the billing month's hours."""
    instance, hours = ec2[instance_type], ec2["hours_per_month"]
    entry = instance[market]
    monthly, said = entry["usd_per_month"], market.replace("_", "-")
    basis = (f"{'about ' if entry.get('approximate') else ''}${monthly}/month {said} / {hours} h"
             if monthly is not None else f"no {said} price recorded")
    return {"key": key, "kind": instance["kind"], "usd_per_hour": None if monthly is None else monthly / hours,
            "source": entry["source"], "as_of": entry["as_of"], "basis": basis}


def check_pool_prices(pool_prices, field: str = "pool_prices", table: dict | None = None) -> dict | None:
    """Work pool -> price key overrides, each key one this table prices; else BadInput naming `field`."""
    from gpuops import params

    if pool_prices is None:
        return None
    if not isinstance(pool_prices, dict):
        raise params.bad(field, pool_prices, "is not a mapping of work pool to price key",
                         'pass e.g. {"my-gpu-pool": "cloud_run/nvidia-l4"}')
    known = price_keys(table)
    for pool, key in pool_prices.items():
        if key not in known:
            raise params.bad(field, f"{pool}={key}", "names no price", "use one of " + ", ".join(known))
    return pool_prices


def pool_price(pool: str | None, table: dict | None = None, overrides: dict | None = None) -> dict:
    """Which price applies to runs on a work pool: {"pool", "price" (a key or None), "kind", "why"}."""
    table = table or price_table()
    if pool is None:
        return {"pool": None, "price": None, "kind": None,
                "why": "ran outside a work pool (in the caller's process): no infrastructure price"}
    entry = (overrides or {}).get(pool, table["work_pools"].get(pool))
    if isinstance(entry, str):
        entry = {"price": entry}
    if not isinstance(entry, dict):
        return {"pool": pool, "price": None, "kind": None,
                "why": f"work pool {pool} has no entry in gpuops/data/prices.json work_pools (or pool_prices)"}
    key = entry.get("price")
    kind = entry.get("kind") or (rate(key, table)["kind"] if key else None)
    why = entry.get("why") or (None if key else f"no price for work pool {pool}")
    return {"pool": pool, "price": key, "kind": kind, "why": why}
