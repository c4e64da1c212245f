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
