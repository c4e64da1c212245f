"""The weekly review's figures (pure): flow runs tallied per deployment as they stream in, and the report.

Definitions, as the report states them:
- a run is a flow run of a deployment whose start time is in the window (runs that never started are the
  backlog, not runs); success = Completed; failure = Failed or Crashed; Cancelled and unfinished runs are
  neither;
- the longest failure streak is the most failures in a row by start time, a success ending a streak
  (Cancelled and unfinished runs neither extend nor end it);
- retries = run_count - 1 per run (each retry of a flow run is another attempt of the same run);
- duration = end - start of a finished run (wall time: retry waits included, as the instance stays up);
- p50/p95 are nearest-rank percentiles (the value at rank ceil(q x n) of the sorted values), exact;
- GPU hours = the sum of the durations of a GPU deployment's finished runs: what the runs held a GPU for,
  a lower bound of what an instance is billed (start-up and idle time before scale-down are not runs).

Memory: one Tally per deployment and one counter pair per day; the runs are not kept, only their
durations and processingTimes as 8-byte floats (needed for exact percentiles).
"""
from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable, Optional

from gpuops.markdown import cell
from gpuops.work_pool_backlog import GPU_POOLS

SUCCESS = frozenset({"COMPLETED"})
FAILURE = frozenset({"FAILED", "CRASHED"})
ENDED = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
DAY_S = 86400.0
NOT_CONFIGURED = "not configured"


@dataclass(frozen=True)
class Deployment:
    id: str
    name: str  # "flow/deployment"
    work_pool: Optional[str]
    gpu_type: Optional[str] = None  # the GPU the deployment's runs ask for (job variable or the pool's default)


@dataclass(frozen=True)
class RunRecord:
    """The fields of a flow run the review uses; times are epoch seconds."""

    id: str
    deployment_id: str
    state_type: str
    start: float
    end: Optional[float]
    run_count: int
    processing_s: tuple[float, ...] = ()


def percentile(values: Iterable[float], q: float) -> Optional[float]:
    """Nearest-rank percentile: the value at rank ceil(q x n) of the sorted values (None when empty)."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class Tally:
    """One deployment's runs in the window, added in start-time order."""

    runs: int = 0
    successes: int = 0
    failures: int = 0
    cancelled: int = 0
    unfinished: int = 0
    retries: int = 0
    retried_runs: int = 0
    streak: int = 0
    longest_streak: int = 0
    last_start: float = float("-inf")
    durations: array = field(default_factory=lambda: array("d"))
    processing: array = field(default_factory=lambda: array("d"))

    def add(self, run: RunRecord) -> None:
        if run.start < self.last_start:
            raise ValueError(f"run {run.id} starts before the run added last: runs must come in start-time order")
        self.last_start = run.start
        self.runs += 1
        attempts = max(1, run.run_count or 1)
        self.retries += attempts - 1
        self.retried_runs += attempts > 1
        if run.state_type in SUCCESS:
            self.successes += 1
            self.streak = 0
        elif run.state_type in FAILURE:
            self.failures += 1
            self.streak += 1
            self.longest_streak = max(self.longest_streak, self.streak)
        elif run.state_type == "CANCELLED":
            self.cancelled += 1
        if run.state_type not in ENDED:
            self.unfinished += 1
        elif run.end is not None:
            self.durations.append(max(0.0, run.end - run.start))
        self.processing.extend(run.processing_s)


class Review:
    """The streaming accumulator: `add` each run as pages arrive (in start-time order), then `report`."""

    def __init__(self, start: datetime, end: datetime, deployments: dict[str, Deployment],
                 gpu_pools: Iterable[str] = GPU_POOLS):
        if end <= start:
            raise ValueError("the window must end after it starts")
        self.start, self.end = start.astimezone(timezone.utc), end.astimezone(timezone.utc)
        self.deployments = dict(deployments)
        self.gpu_pools = tuple(gpu_pools)
        self.tallies: dict[str, Tally] = {}
        self.days = max(1, math.ceil((self.end - self.start).total_seconds() / DAY_S))
        self.daily = [[0, 0] for _ in range(self.days)]  # per 24 h from the window's start: runs, failures
        self.skipped = 0  # records outside the window (the adapter's filter makes this 0)

    def is_gpu(self, deployment: Deployment) -> bool:
        return deployment.work_pool in self.gpu_pools

    def add(self, run: RunRecord) -> None:
        t0, t1 = self.start.timestamp(), self.end.timestamp()
        if not t0 <= run.start <= t1:
            self.skipped += 1
            return
        if run.deployment_id not in self.deployments:  # deleted since it ran
            self.deployments[run.deployment_id] = Deployment(run.deployment_id, f"(deleted) {run.deployment_id}",
                                                             None)
        self.tallies.setdefault(run.deployment_id, Tally()).add(run)
        day = min(self.days - 1, int((run.start - t0) // DAY_S))
        self.daily[day][0] += 1
        self.daily[day][1] += run.state_type in FAILURE

    def add_all(self, runs: Iterable[RunRecord]) -> None:
        for run in runs:
            self.add(run)

    def daily_rows(self) -> list[dict]:
        return [{"day_start": _iso(self.start + timedelta(days=i)), "runs": runs, "failures": failures}
                for i, (runs, failures) in enumerate(self.daily)]

    def report(self, *, backlog: dict[str, int], dead_letters: Optional[dict] = None,
               gpu_utilisation: Optional[dict] = None, rates: Optional[dict[str, dict]] = None) -> dict:
        """The review as plain data.

        backlog: pool -> late + scheduled runs due now. dead_letters: {"where", "by_deployment": {id: n},
        "without_deployment": n} or None when no bucket is configured. gpu_utilisation: the adapter's reading,
        or None when no project is configured. rates: deployment id -> `deployment_rate` (GPU deployments).
        """
        rows = [self._row(dep_id, tally, backlog, dead_letters, (rates or {}).get(dep_id))
                for dep_id, tally in self.tallies.items()]
        rows.sort(key=lambda r: (r["kind"] != "GPU", r["deployment"]))
        quiet = sorted(d.name for i, d in self.deployments.items() if i not in self.tallies)
        gpu_rows = [r for r in rows if r["kind"] == "GPU"]
        priced = [r["cost_usd"] for r in gpu_rows if r["cost_usd"] is not None]
        sources = sorted({f"{r['price']['source']} (as of {r['price']['as_of']})" for r in gpu_rows
                          if r["price"] and r["price"].get("source")})
        return {
            "window": {"start": _iso(self.start), "end": _iso(self.end), "days": self.days},
            "runs": sum(r["runs"] for r in rows),
            "failures": sum(r["failures"] for r in rows),
            "deployments": rows,
            "deployments_without_runs": quiet,
            "daily": self.daily_rows(),
            "backlog": dict(sorted(backlog.items())),
            "dead_letters": _dead_letter_summary(dead_letters, rows),
            "gpu_utilisation": gpu_utilisation or {"status": NOT_CONFIGURED},
            "gpu_hours": round(sum(r["gpu_hours"] or 0 for r in gpu_rows), 4),
            "gpu_cost_usd": round(sum(priced), 2) if priced else None,
            "price_sources": sources,
            "gpu_pools": list(self.gpu_pools),
        }

    def _row(self, dep_id: str, tally: Tally, backlog: dict[str, int], dead_letters: Optional[dict],
             price: Optional[dict]) -> dict:
        deployment = self.deployments[dep_id]
        gpu = self.is_gpu(deployment)
        hours = sum(tally.durations) / 3600 if gpu else None
        rate = price.get("usd_per_hour") if gpu and price else None
        return {
            "deployment": deployment.name, "deployment_id": dep_id, "work_pool": deployment.work_pool,
            "kind": "GPU" if gpu else "CPU", "runs": tally.runs, "successes": tally.successes,
            "failures": tally.failures, "cancelled": tally.cancelled, "unfinished": tally.unfinished,
            "longest_failure_streak": tally.longest_streak, "retries": tally.retries,
            "retried_runs": tally.retried_runs,
            "dead_letters": None if dead_letters is None else dead_letters["by_deployment"].get(dep_id, 0),
            "duration_p50_s": _round(percentile(tally.durations, 0.5)),
            "duration_p95_s": _round(percentile(tally.durations, 0.95)),
            "processing_time_p50_s": _round(percentile(tally.processing, 0.5)),
            "processing_time_p95_s": _round(percentile(tally.processing, 0.95)),
            "processing_time_samples": len(tally.processing),
            "backlog_now": backlog.get(deployment.work_pool) if deployment.work_pool else None,
            "gpu_type": deployment.gpu_type if gpu else None,
            "gpu_hours": None if hours is None else round(hours, 4),
            "usd_per_hour": rate, "cost_usd": None if rate is None else round(hours * rate, 2),
            "price": price if gpu else None,
        }


def deployment_rate(deployment: Deployment, table: Optional[dict] = None, pool_prices: Optional[dict] = None) -> dict:
    """What an hour of a deployment's runs costs: its work pool's price (gpuops/data/prices.json `work_pools`,
    `pool_prices` overriding a pool), a Cloud Run GPU priced for the deployment's own GPU type.
    `usd_per_hour` None with `why` when unpriced."""
    from gpuops import cost

    found = cost.pool_price(deployment.work_pool, table, pool_prices)
    key = found["price"]
    if key and key.startswith("cloud_run/") and deployment.gpu_type:
        key = f"cloud_run/{deployment.gpu_type}"
    if not key:
        return {"usd_per_hour": None, "why": found["why"]}
    try:
        rate = cost.rate(key, table)
    except ValueError as exc:
        return {"usd_per_hour": None, "why": str(exc)}
    if rate["usd_per_hour"] is None:
        rate["why"] = f"not priced here: {rate['basis']}"
    return rate


def _dead_letter_summary(found: Optional[dict], rows: list[dict]) -> dict:
    if found is None:
        return {"status": NOT_CONFIGURED}
    total = sum(found["by_deployment"].values()) + found["without_deployment"]
    return {"status": "read", "where": found["where"], "total": total,
            "not_in_table": total - sum(r["dead_letters"] or 0 for r in rows)}


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 3)


def _iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


# --- rendering -----------------------------------------------------------------------------------


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        value = f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return f"{value}{unit}"


COLUMNS = (("deployment", "deployment"), ("work pool", "work_pool"), ("kind", "kind"), ("runs", "runs"),
           ("ok", "successes"), ("failed", "failures"), ("longest failure streak", "longest_failure_streak"),
           ("retries", "retries"), ("dead letters", "dead_letters"), ("duration p50 (s)", "duration_p50_s"),
           ("duration p95 (s)", "duration_p95_s"), ("processingTime p50 (s)", "processing_time_p50_s"),
           ("processingTime p95 (s)", "processing_time_p95_s"), ("backlog now (pool)", "backlog_now"),
           ("GPU hours", "gpu_hours"), ("cost (USD)", "cost_usd"))


def render_markdown(report: dict, chart_svg: str) -> str:
    """The artifact: the table, the chart (inline SVG), backlog, dead letters, utilisation, cost, definitions."""
    window = report["window"]
    lines = [f"# Weekly review: {window['start']} to {window['end']} ({window['days']} days)", ""]
    if not report["runs"]:
        lines += [no_runs_sentence(report), ""]
    else:
        lines += [f"{report['runs']} runs, {report['failures']} failed (Failed or Crashed).", "",
                  "| " + " | ".join(title for title, _ in COLUMNS) + " |",
                  "|" + "---|" * len(COLUMNS)]
        for row in report["deployments"]:
            lines.append("| " + " | ".join(cell(_fmt(row[key])) for _, key in COLUMNS) + " |")
        lines.append("")
    lines += ["Runs and failures per day (24 h periods from the window's start):", "", chart_svg, ""]
    lines += _backlog_lines(report) + _dead_letter_lines(report) + _utilisation_lines(report) + _cost_lines(report)
    if report["deployments_without_runs"]:
        lines += [f"No run in the window: {', '.join(cell(n) for n in report['deployments_without_runs'])}.", ""]
    lines += ["How the figures are made: runs = flow runs of a deployment started in the window; failures = "
              "Failed or Crashed; the longest failure streak counts failures in a row by start time (a success "
              "ends it; Cancelled and unfinished runs do not); retries = attempts beyond the first (run_count - 1); "
              "duration = end - start of finished runs; p50/p95 are nearest-rank percentiles; processingTime is "
              "each attempt's measured seconds from the `processing-time-*` artifacts that process-file creates; "
              "backlog = the pool's runs due and not started (Scheduled, Late, AwaitingRetry) now."]
    return "\n".join(lines) + "\n"


def no_runs_sentence(report: dict) -> str:
    window = report["window"]
    return f"No flow run of any deployment started between {window['start']} and {window['end']}."


def _backlog_lines(report: dict) -> list[str]:
    if not report["backlog"]:
        return ["Backlog now: no work pool reviewed.", ""]
    return (["| work pool | backlog now (late + scheduled, due) |", "|---|---|"]
            + [f"| {cell(pool)} | {count} |" for pool, count in report["backlog"].items()] + [""])


def _dead_letter_lines(report: dict) -> list[str]:
    found = report["dead_letters"]
    if found["status"] == NOT_CONFIGURED:
        return ["Dead letters: not configured (no status bucket: GPUOPS_STATUS_BUCKET or a status bucket block).", ""]
    other = (f", {found['not_in_table']} of them of runs not in the table (started before the window, or "
             "of no deployment)" if found["not_in_table"] else "")
    return [f"Dead letters: {found['total']} written in the window at {cell(found['where'])}{other}.", ""]


def _utilisation_lines(report: dict) -> list[str]:
    found = report["gpu_utilisation"]
    if found["status"] != "measured":
        why = found.get("reason")
        return [f"GPU utilisation (Cloud Monitoring): {found['status']}{': ' + cell(why) if why else ''}.", ""]
    lines = [f"GPU utilisation (Cloud Monitoring, {cell(found['source'])}):", "",
             "| resource | mean | p95 |", "|---|---|---|"]
    lines += [f"| {cell(s['resource'])} | {_pct(s['mean'])} | {_pct(s['p95'])} |" for s in found["series"]]
    if not found["series"]:
        lines.append("| (no GPU samples in the window) | - | - |")
    return lines + [""]


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _cost_lines(report: dict) -> list[str]:
    gpu_rows = [r for r in report["deployments"] if r["kind"] == "GPU"]
    if not gpu_rows:
        return ["GPU hours: no GPU deployment ran in the window.", ""]
    lines = [f"GPU hours {report['gpu_hours']:.2f} (the GPU deployments' finished runs, start to end); cost = "
             "hours x the work pool's price (gpuops/data/prices.json):", ""]
    for row in gpu_rows:
        price = row["price"] or {}
        if row["usd_per_hour"] is None:
            lines.append(f"- {cell(row['deployment'])}: {row['gpu_hours']:.2f} h, not priced "
                         f"({cell(price.get('why') or 'no price')})")
            continue
        lines.append(f"- {cell(row['deployment'])}: {row['gpu_hours']:.2f} h x ${row['usd_per_hour']:.4g}/h = "
                     f"${row['cost_usd']:.2f} ({cell(price.get('key'))}: {cell(price.get('basis'))}; "
                     f"source {cell(price.get('source'))}, as of {cell(price.get('as_of'))})")
    return lines + [""]


def summary_text(report: dict) -> str:
    """The notification: the same figures as the artifact's table, as plain lines."""
    window = report["window"]
    lines = [f"gpuops weekly review {window['start']} to {window['end']}: {report['runs']} runs, "
             f"{report['failures']} failed."]
    if not report["runs"]:
        lines.append(no_runs_sentence(report))
    for row in report["deployments"]:
        lines.append(
            f"{row['kind']} {row['deployment']} ({row['work_pool']}): {row['runs']} runs, {row['successes']} ok, "
            f"{row['failures']} failed (longest streak {row['longest_failure_streak']}), {row['retries']} retries, "
            f"dead letters {_fmt(row['dead_letters'])}, duration p50/p95 {_fmt(row['duration_p50_s'])}/"
            f"{_fmt(row['duration_p95_s'])} s, processingTime p50/p95 {_fmt(row['processing_time_p50_s'])}/"
            f"{_fmt(row['processing_time_p95_s'])} s, backlog now {_fmt(row['backlog_now'])}"
            + (f", GPU {row['gpu_hours']:.2f} h" + (f" = ${row['cost_usd']:.2f}" if row["cost_usd"] is not None else "")
               if row["kind"] == "GPU" else ""))
    dead = report["dead_letters"]
    lines.append("Dead letters: " + (NOT_CONFIGURED if dead["status"] == NOT_CONFIGURED else str(dead["total"])))
    util = report["gpu_utilisation"]
    lines.append("GPU utilisation: " + (util["status"] if util["status"] != "measured" else ", ".join(
        f"{s['resource']} mean {_pct(s['mean'])} p95 {_pct(s['p95'])}" for s in util["series"]) or "no samples"))
    if report["price_sources"]:
        lines.append("Prices: " + "; ".join(report["price_sources"]))
    return "\n".join(lines)
