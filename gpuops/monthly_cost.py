"""A month's GPU and CPU seconds per deployment and work pool, priced, projected and compared with a budget (pure),
and the thin Prefect API reader that feeds it page by page.

Billed seconds of a flow run: its first start to its final end, clipped to the month and to the report time. Retry
waits are inside that span on purpose: Prefect retries a flow in its own process, so the instance that runs it is
billed through the wait. A run still going (or paused) counts up to the report time.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

from gpuops import cost, params
from gpuops.markdown import cell

PAGE_SIZE = 200
MONTH = re.compile(r"^(\d{4})-(\d{2})$")
VAST_PRICE_FIELD = "dph_total"  # vast.ai's name for an instance's total price, USD per hour
VAST_ARTIFACT_PREFIX = "vast-instance"  # an artifact of the run whose data holds the instance record
NO_POOL = "(no work pool)"
SCOPE = ("Run seconds only: an instance's start-up before the flow run starts, idle minimum instances, minimum "
         "charges, storage and network are not in these figures; a priced run is charged per second at its "
         "pool's hourly rate.")


@dataclass(frozen=True)
class Window:
    """A calendar month in UTC, seen at `now`."""

    month: str
    start: datetime
    end: datetime
    now: datetime

    @property
    def until(self) -> datetime:
        """Where the report's figures stop: the month's end, or now when the month is not over."""
        return max(self.start, min(self.end, self.now))

    @property
    def elapsed_fraction(self) -> float:
        return (self.until - self.start) / (self.end - self.start)

    @property
    def days(self) -> int:
        return (self.end - self.start).days


def utc(moment: datetime) -> datetime:
    """A naive time is taken as UTC."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


PREVIOUS = "previous"  # the month before the report time's: what a schedule on the 1st reports


def month_window(month: str | None, now: datetime) -> Window:
    """The month asked for (`YYYY-MM`, `previous`, default the month of `now`), refused when malformed or not
    yet begun."""
    now = utc(now)
    text = month if month is not None else f"{now.year:04d}-{now.month:02d}"
    if month == PREVIOUS:
        text = f"{now.year:04d}-{now.month - 1:02d}" if now.month > 1 else f"{now.year - 1:04d}-12"
    found = MONTH.match(text) if isinstance(text, str) else None
    if not found or not 1 <= int(found[2]) <= 12 or int(found[1]) < 1970:
        raise params.bad("month", month, "is not a calendar month YYYY-MM (or previous)", "pass e.g. --month 2026-11")
    year, number = int(found[1]), int(found[2])
    start = datetime(year, number, 1, tzinfo=timezone.utc)
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=timezone.utc)
    if now < start:
        raise params.bad("month", month, f"has not begun at {now.isoformat()}", "pass this month or an earlier one")
    return Window(text, start, end, now)


def check_request(month: Any, budget_usd: Any, now: datetime | None = None, pool_prices: Any = None,
                  cli: bool = False) -> tuple[Window, float | None]:
    """The whole request, before anything runs: the month, the budget (>= 0) and pool -> price key overrides.

    With `cli`, refusals name the CLI's flags (--budget, --pool-price) rather than the flow's parameters."""
    window = month_window(month, now or datetime.now(timezone.utc))
    budget = None if budget_usd is None else float(
        params.number("budget" if cli else "budget_usd", budget_usd, low=0, unit="USD", example="500"))
    cost.check_pool_prices(pool_prices, "pool_price" if cli else "pool_prices")
    return window, budget


def billed_seconds(start: datetime | None, end: datetime | None, window: Window) -> float:
    """The part of [start, end] (end None: still going) inside the month, up to the report time."""
    if start is None:
        return 0.0
    stop = window.until if end is None else min(utc(end), window.until)
    return max(0.0, (stop - max(utc(start), window.start)).total_seconds())


def _hourly_price(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        price = float(value)
    except ValueError:
        return None
    return price if math.isfinite(price) and price >= 0 else None


def _record_price(record: Any) -> float | None:
    """dph_total in a record: a dict (or one level down in it), a list of table rows, or JSON text of either."""
    if isinstance(record, str):
        try:
            record = json.loads(record)
        except ValueError:
            return None
    if isinstance(record, list):
        return next((p for p in map(_record_price, record) if p is not None), None)
    if not isinstance(record, dict):
        return None
    if VAST_PRICE_FIELD in record:
        return _hourly_price(record[VAST_PRICE_FIELD])
    return next((p for p in (_record_price(v) for v in record.values() if isinstance(v, dict)) if p is not None),
                None)


def instance_price(run: dict) -> tuple[float | None, str]:
    """A vast.ai run's hourly price from its instance record: parameters first, then its artifacts."""
    price = _record_price(run.get("parameters") or {})
    if price is not None:
        return price, f"parameter {VAST_PRICE_FIELD}"
    for record in run.get("records") or []:
        price = _record_price(record)
        if price is not None:
            return price, f"artifact {VAST_ARTIFACT_PREFIX}*"
    return None, (f"no price recorded: no {VAST_PRICE_FIELD} in the run's parameters or a {VAST_ARTIFACT_PREFIX} "
                  "artifact")


@dataclass
class Row:
    """One deployment on one work pool."""

    deployment: str
    pool: str | None
    kind: str | None
    price: str | None
    runs: int = 0
    retried_runs: int = 0
    still_running: int = 0
    seconds: float = 0.0
    unpriced_runs: int = 0
    unpriced_seconds: float = 0.0
    usd: float = 0.0
    why_unpriced: set[str] = field(default_factory=set)

    def add(self, other: "Row") -> None:
        for name in ("runs", "retried_runs", "still_running", "seconds", "unpriced_runs", "unpriced_seconds", "usd"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.why_unpriced |= other.why_unpriced

    def _seconds(self, kind: str | None) -> float:
        mine = self.kind if self.kind in ("gpu", "cpu") else None
        return round(float(self.seconds if mine == kind else 0), 3)

    def as_dict(self) -> dict:
        return {"deployment": self.deployment, "work_pool": self.pool or NO_POOL, "kind": self.kind or "unknown",
                "price": self.price, "runs": self.runs, "retried_runs": self.retried_runs,
                "still_running": self.still_running, "gpu_s": self._seconds("gpu"), "cpu_s": self._seconds("cpu"),
                "other_s": self._seconds(None),
                "unpriced_runs": self.unpriced_runs, "unpriced_s": round(self.unpriced_seconds, 3),
                "usd": round(self.usd, 4), "why_unpriced": sorted(self.why_unpriced)}


class Tally:
    """Runs added one at a time (as pages arrive), kept as one row per deployment and pool: memory stays
    constant in the number of runs."""

    def __init__(self, window: Window, table: dict | None = None, pool_prices: dict | None = None):
        self.window, self.table, self.pool_prices = window, table or cost.price_table(), pool_prices
        self.rows: dict[tuple[str, str | None], Row] = {}
        self._pools: dict[str | None, dict] = {}
        self.runs_seen = 0
        self.instance_rates: set[float] = set()

    def pool(self, name: str | None) -> dict:
        if name not in self._pools:
            found = cost.pool_price(name, self.table, self.pool_prices)
            rate = cost.rate(found["price"], self.table) if found["price"] else None
            self._pools[name] = {**found, "rate": rate}
        return self._pools[name]

    def needs_record(self, run: dict) -> bool:
        """Whether the reader should fetch the run's artifacts: a vast.ai run without a price in its parameters."""
        vast = self.pool(run.get("pool"))["price"] == cost.VAST_AI
        return vast and _record_price(run.get("parameters") or {}) is None

    def add(self, run: dict) -> None:
        start, end = run.get("start"), run.get("end")
        if start is None or utc(start) >= self.window.until or (end is not None and utc(end) <= self.window.start):
            return  # never started, started after the report time, or ended before the month
        seconds = billed_seconds(start, end, self.window)
        self.runs_seen += 1
        pool = self.pool(run.get("pool"))
        key = (run.get("deployment") or f"{run.get('flow', '?')} (no deployment)", run.get("pool"))
        row = self.rows.setdefault(key, Row(key[0], key[1], pool["kind"], pool["price"]))
        row.runs += 1
        row.retried_runs += int((run.get("run_count") or 0) > 1)
        row.still_running += int(end is None)
        row.seconds += seconds
        hourly, why = self._hourly(run, pool)
        if hourly is None:
            row.unpriced_runs += 1
            row.unpriced_seconds += seconds
            row.why_unpriced.add(why)
        else:
            row.usd += seconds / 3600 * hourly

    def _hourly(self, run: dict, pool: dict) -> tuple[float | None, str]:
        if pool["price"] is None:
            return None, pool["why"]
        if pool["price"] == cost.VAST_AI:
            hourly, why = instance_price(run)
            if hourly is not None:
                self.instance_rates.add(hourly)
            return hourly, why
        hourly = pool["rate"]["usd_per_hour"]
        return hourly, (pool["rate"]["basis"] if hourly is None else "")

    def report(self, budget_usd: float | None = None) -> dict:
        ordered = sorted(self.rows.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))
        deployments = [row.as_dict() for _, row in ordered]
        pools: dict[str | None, Row] = {}
        for (_, pool), row in sorted(self.rows.items(), key=lambda kv: kv[0][1] or ""):
            pools.setdefault(pool, Row("*", pool, row.kind, row.price)).add(row)
        by_pool = [{k: v for k, v in row.as_dict().items() if k != "deployment"} for row in pools.values()]
        totals = {name: round(sum(d[name] for d in deployments), 3 if name.endswith("_s") else 4)
                  for name in ("runs", "retried_runs", "still_running", "gpu_s", "cpu_s", "other_s",
                               "unpriced_runs", "unpriced_s")}
        for name in ("runs", "retried_runs", "still_running", "unpriced_runs"):
            totals[name] = int(totals[name])
        mtd = sum(row.usd for row in self.rows.values())
        projection = project(self.window, mtd, totals["unpriced_s"])
        return {"month": self.window.month, "window": self._window(), "totals": totals,
                "usd_month_to_date": round(mtd, 4), "projection": projection,
                "budget": compare(budget_usd, projection), "by_pool": by_pool, "by_deployment": deployments,
                "prices": self._prices(), "scope": SCOPE}

    def _window(self) -> dict:
        w = self.window
        return {"start": w.start.isoformat(), "end": w.end.isoformat(), "report_time": w.now.isoformat(),
                "until": w.until.isoformat(), "days": w.days, "elapsed_fraction": round(w.elapsed_fraction, 6),
                "timezone": "UTC"}

    def _prices(self) -> list[dict]:
        used = {row.price for row in self.rows.values() if row.price}
        prices = [cost.rate(key, self.table) for key in sorted(used)]
        for price in prices:
            if price["key"] == cost.VAST_AI:
                price["instance_prices"] = sorted(self.instance_rates)
        return prices


def project(window: Window, mtd_usd: float, unpriced_s: float) -> dict | None:
    """The month's cost if the rest of it goes as it went so far: an estimate, saying from what."""
    left_out = f"; {unpriced_s:g} s without a price are not in it" if unpriced_s else ""
    if window.elapsed_fraction >= 1:
        return {"kind": "actual", "usd": round(mtd_usd, 4),
                "from": f"the month is over: its total, ${mtd_usd:.2f}{left_out}"}
    if window.elapsed_fraction <= 0:
        return None
    elapsed_days = (window.until - window.start) / timedelta(days=1)
    return {"kind": "estimate", "usd": round(mtd_usd / window.elapsed_fraction, 4),
            "from": (f"month-to-date ${mtd_usd:.2f} / elapsed fraction {window.elapsed_fraction:.4f} "
                     f"({elapsed_days:.2f} of {window.days} days): assumes the rest of the month runs at the "
                     f"same rate{left_out}")}


def compare(budget_usd: float | None, projection: dict | None) -> dict | None:
    if budget_usd is None:
        return None
    projected = None if projection is None else projection["usd"]
    over = projected is not None and projected > budget_usd
    return {"usd": budget_usd, "projected_usd": projected, "over": over,
            "margin_usd": None if projected is None else round(projected - budget_usd, 4), "notified": None}


# --- rendering ----------------------------------------------------------------------------------------------

CSV_COLUMNS = ("month", "deployment", "work_pool", "kind", "price", "runs", "retried_runs", "still_running", "gpu_s",
               "cpu_s", "other_s", "unpriced_runs", "unpriced_s", "usd")


def render_csv(report: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in report["by_deployment"]:
        writer.writerow([report["month"] if c == "month" else ("" if row[c] is None else row[c]) for c in CSV_COLUMNS])
    return out.getvalue()


def fenced(text: str, info: str = "") -> str:
    """A fenced block longer than any backtick run in the text, so no value can close it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    body = text if text.endswith("\n") else text + "\n"
    return f"{fence}{info}\n{body}{fence}"


def _money(usd: float | None) -> str:
    return "-" if usd is None else f"${usd:,.2f}"


def _per_hour(price: dict) -> str:
    if "instance_prices" in price:
        return "per run: " + (", ".join(f"{p:.4f}" for p in price["instance_prices"]) or "none recorded")
    return "no price recorded" if price["usd_per_hour"] is None else f"{price['usd_per_hour']:.4f}"


def summary_lines(report: dict) -> list[str]:
    """The few lines a notification and the artifact both start with."""
    t, p, b = report["totals"], report["projection"], report["budget"]
    lines = [f"Month to date ({report['month']}, UTC, until {report['window']['until']}): "
             f"{_money(report['usd_month_to_date'])} over {t['runs']} runs: GPU {t['gpu_s']:g} s, CPU {t['cpu_s']:g} s"
             + (f", outside a work pool {t['other_s']:g} s" if t["other_s"] else "") + "."
             + (f" {t['still_running']} still running: counted to the report time." if t["still_running"] else "")]
    if t["unpriced_runs"]:
        lines.append(f"Without a price: {t['unpriced_runs']} runs, {t['unpriced_s']:g} s (not in the cost).")
    if p is not None:
        label = "Projection (ESTIMATE)" if p["kind"] == "estimate" else "Month total"
        lines.append(f"{label}: {_money(p['usd'])}, from {p['from']}.")
    if b is not None:
        verdict = ("OVER budget" if b["over"] else "within budget") if b["projected_usd"] is not None \
            else "no projection yet"
        lines.append(f"Budget {_money(b['usd'])}: {verdict}"
                     + (f" by {_money(abs(b['margin_usd']))}" if b["margin_usd"] is not None else "") + ".")
    return lines


def render_markdown(report: dict) -> str:
    lines = [f"# Cost report {report['month']}", "", *[f"- {line}" for line in summary_lines(report)]]
    budget = report["budget"]
    if budget and budget["over"]:
        told = budget.get("notification_error") and f"FAILED ({budget['notification_error']})"
        lines.append(f"- Notified: {told or budget['notified'] or 'flow log only (no notification block named)'}")
    lines += ["", "## By work pool", "",
              "| work pool | kind | price | runs | GPU s | CPU s | other s | without a price (s) | cost |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {cell(r['work_pool'])} | {r['kind']} | {cell(r['price'])} | {r['runs']} | {r['gpu_s']:g} | "
              f"{r['cpu_s']:g} | {r['other_s']:g} | {r['unpriced_s']:g} | {_money(r['usd'])} |"
              for r in report["by_pool"]]
    lines += ["", "## By deployment", "",
              "| deployment | work pool | runs | retried | still running | GPU s | CPU s | without a price (s) | cost |"
              " why no price |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {cell(r['deployment'])} | {cell(r['work_pool'])} | {r['runs']} | {r['retried_runs']} | "
              f"{r['still_running']} | {r['gpu_s']:g} | {r['cpu_s']:g} | {r['unpriced_s']:g} | {_money(r['usd'])} | "
              f"{cell('; '.join(r['why_unpriced']) or None)} |" for r in report["by_deployment"]]
    lines += ["", "## Prices", "", "| price | $/h | basis | source | as of |", "|---|---:|---|---|---|"]
    lines += [f"| {p['key']} | {_per_hour(p)} | {cell(p['basis'])} | {cell(p['source'])} | "
              f"{cell(p['as_of'])} |" for p in report["prices"]]
    lines += ["", "## How these figures are made", "",
              "- Seconds: each flow run's first start to its final end, clipped to the month (UTC) and to the report "
              "time; retry waits are included (Prefect retries a flow in its own process, so its instance is billed "
              "through the wait); a run still going counts to the report time.",
              f"- {report['scope']}",
              "- vast.ai runs are priced from their own instance record (dph_total); none recorded: no price."]
    return "\n".join(lines) + "\n"


def notification(report: dict) -> tuple[str, str]:
    b = report["budget"]
    subject = (f"gpuops cost report {report['month']}: projected {_money(b['projected_usd'])} is over the "
               f"{_money(b['usd'])} budget")
    return subject, "\n".join(summary_lines(report))


# --- adapter: the month's flow runs from the Prefect API, page by page --------------------------------------


def read_runs(client, window: Window, needs_record: Callable[[dict], bool] = lambda run: False,
              page_size: int = PAGE_SIZE) -> Iterator[list[dict]]:
    """Pages of the flow runs that ran in the month up to the report time, as plain dicts.

    Two filtered queries: runs not ended (few, read first), then runs ended in or after the month. Each is read
    by keyset, sorted by start time: the next page asks for runs starting at or after the last start seen,
    leaving out the ids already read at exactly that time, so nothing is skipped or repeated while runs come
    and go, and a late page costs what the first did. A run that ends between the two queries is counted once.
    Transient API errors are retried by Prefect's client.
    """
    from prefect.client.schemas.filters import FlowRunFilterEndTime

    names, counted = _Names(client), set()
    for end, first in ((FlowRunFilterEndTime(is_null_=True), True), (FlowRunFilterEndTime(after_=window.start), False)):
        for page in _keyset_pages(client, window, end, page_size):
            fresh = [run for run in page if run.id not in counted]
            if first:
                counted |= {run.id for run in fresh}
            if fresh:
                yield _as_dicts(client, fresh, names, needs_record)


def _keyset_pages(client, window: Window, end_filter, page_size: int) -> Iterator[list]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterStartTime
    from prefect.client.schemas.sorting import FlowRunSort

    after, seen = None, []
    while True:
        query = FlowRunFilter(start_time=FlowRunFilterStartTime(before_=window.until, after_=after),
                              end_time=end_filter, id=FlowRunFilterId(not_any_=seen) if seen else None)
        page = client.read_flow_runs(flow_run_filter=query, sort=FlowRunSort.START_TIME_ASC, limit=page_size)
        if page:
            yield page
        if len(page) < page_size:
            return
        last = page[-1].start_time
        at_last = [run.id for run in page if run.start_time == last]
        seen, after = (seen + at_last if last == after else at_last), last


class _Names:
    """Deployment and flow names by id, read once per id, a page's unknown ids in one call each."""

    def __init__(self, client):
        self.client, self.deployments, self.flows = client, {}, {}

    def resolve(self, runs) -> None:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowFilter, FlowFilterId

        wanted = {r.deployment_id for r in runs if r.deployment_id} - set(self.deployments)
        if wanted:
            query = DeploymentFilter(id=DeploymentFilterId(any_=list(wanted)))
            for d in self.client.read_deployments(deployment_filter=query):
                self.deployments[d.id] = d.name
            self.deployments.update({i: f"(deleted deployment {str(i)[:8]})" for i in wanted - set(self.deployments)})
        wanted = {r.flow_id for r in runs} - set(self.flows)
        if wanted:
            for f in self.client.read_flows(flow_filter=FlowFilter(id=FlowFilterId(any_=list(wanted)))):
                self.flows[f.id] = f.name
            self.flows.update({i: f"(deleted flow {str(i)[:8]})" for i in wanted - set(self.flows)})


def _as_dicts(client, runs, names: _Names, needs_record: Callable[[dict], bool]) -> list[dict]:
    names.resolve(runs)
    page = []
    for run in runs:
        flow = names.flows[run.flow_id]
        page.append({"id": str(run.id), "flow": flow,
                     "deployment": f"{flow}/{names.deployments[run.deployment_id]}" if run.deployment_id else None,
                     "pool": run.work_pool_name, "start": run.start_time, "end": run.end_time,
                     "run_count": run.run_count, "parameters": run.parameters or {}})
    wanted = [run for run in page if needs_record(run)]
    if wanted:
        records = _instance_records(client, [run["id"] for run in wanted])
        for run in wanted:
            run["records"] = records.get(run["id"], [])
    return page


def _instance_records(client, run_ids: list[str]) -> dict[str, list]:
    """The data of each run's `vast-instance*` artifacts, one call for a page's runs."""
    from uuid import UUID

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    found: dict[str, list] = {}
    query = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(i) for i in run_ids]),
                           key=ArtifactFilterKey(like_=VAST_ARTIFACT_PREFIX))
    offset = 0
    while True:
        artifacts = client.read_artifacts(artifact_filter=query, limit=PAGE_SIZE, offset=offset)
        for artifact in artifacts:
            if artifact.key and artifact.key.startswith(VAST_ARTIFACT_PREFIX):
                found.setdefault(str(artifact.flow_run_id), []).append(artifact.data)
        if len(artifacts) < PAGE_SIZE:
            return found
        offset += len(artifacts)
