"""The cost report: the planner against totals worked out by hand, then the flow and the CLI on a real Prefect server
holding the same runs, and the budget notification through a real webhook block.

The month is April 2019 (30 days), seen at 2019-04-16 00:00 UTC: 15 of 30 days, elapsed fraction 0.5. No other
test puts runs there. Prices (gpuops/data/prices.json):
    cloud_run/nvidia-l4        0.67 + 0.75          = 1.42 $/h
    ec2/g4dn.xlarge/on_demand  383.98 $/month / 730 = 0.526 $/h
    ec2/t3.large/on_demand     60.74 $/month / 730  = 0.0832054794... $/h

    run  deployment            pool      start -> end (UTC)                     seconds in April to 04-16   cost $
    a    proc/gpu-work         cr-gpu    04-02 10:00 -> 04-02 11:30             5400                        1.5 h x 1.42 = 2.13
    b    proc/gpu-work         cr-gpu    03-31 23:00 -> 04-01 01:00 (boundary)  3600 (from 04-01 00:00)     1.42
    c    proc/gpu-work         cr-gpu    04-15 23:00 -> still running           3600 (to 04-16 00:00)       1.42
    d    proc/ec2-work         ec2-gpu   04-03 09:00 -> 10:00, retried once     3600 (the retry wait in it)  0.526
    e    proc/cpu-work         ec2-cpu   04-05 00:00 -> 10:00                   36000 (CPU)                 10 x 60.74/730 = 0.832054794...
    f    proc/vast-work        vast-gpu  04-06 12:00 -> 14:00, dph_total 0.30   7200                        2 h x 0.30 = 0.60
    g    proc/vast-work        vast-gpu  04-07 00:00 -> 01:00, no record        3600                        no price recorded
    h    adhoc (no deployment) no pool   04-08 00:00 -> 00:30                   1800 (other)                no price (outside a pool)
    i    proc/gpu-work         cr-gpu    03-20 00:00 -> 01:00                   not in April
    j    proc/gpu-work         cr-gpu    04-20 00:00 -> 01:00                   after the report time (in the month's total)

    GPU s = 5400 + 3600 + 3600 + 3600 + 7200 + 3600 = 27000; CPU s = 36000; other s = 1800; runs = 8
    without a price: g + h = 3600 + 1800 = 5400 s, 2 runs
    month to date = 2.13 + 1.42 + 1.42 + 0.526 + 0.832054794 + 0.60 = 6.928054794 $
    projection (estimate) = 6.928054794 / 0.5 = 13.856109589 $  -> over a 10 $ budget by 3.856109589, under 20 $
"""
from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timezone

import pytest

from gpuops import cost, monthly_cost
from gpuops.errors import BadInput, CouldNotRun
from tests.artifacts import latest_artifact

T_L4, T_G4DN, T_T3 = 1.42, 383.98 / 730, 60.74 / 730
MTD = 2.13 + 1.42 + 1.42 + 0.526 + 10 * 60.74 / 730 + 0.60  # 6.928054794...
NOW = datetime(2019, 4, 16, tzinfo=timezone.utc)
SUFFIX = uuid.uuid4().hex[:8]
POOLS = {"cr-gpu": "cloud_run/nvidia-l4", "ec2-gpu": "ec2/g4dn.xlarge/on_demand",
         "ec2-cpu": "ec2/t3.large/on_demand", "vast-gpu": "vast_ai"}
FLOW = "proc"


def at(text: str) -> datetime:
    return datetime.fromisoformat(f"2019-{text}").replace(tzinfo=timezone.utc)


# (name, deployment, pool, [(state type, state name, time)], parameters); pools and names as the planner sees them.
RUNS = [
    ("a", "gpu-work", "cr-gpu", [("RUNNING", None, "04-02T10:00"), ("COMPLETED", None, "04-02T11:30")], {}),
    ("b", "gpu-work", "cr-gpu", [("RUNNING", None, "03-31T23:00"), ("COMPLETED", None, "04-01T01:00")], {}),
    ("c", "gpu-work", "cr-gpu", [("RUNNING", None, "04-15T23:00")], {}),
    ("d", "ec2-work", "ec2-gpu", [("RUNNING", None, "04-03T09:00"), ("SCHEDULED", "AwaitingRetry", "04-03T09:20"),
                                  ("RUNNING", None, "04-03T09:30"), ("COMPLETED", None, "04-03T10:00")], {}),
    ("e", "cpu-work", "ec2-cpu", [("RUNNING", None, "04-05T00:00"), ("COMPLETED", None, "04-05T10:00")], {}),
    ("f", "vast-work", "vast-gpu", [("RUNNING", None, "04-06T12:00"), ("COMPLETED", None, "04-06T14:00")],
     {"instance": {"id": 4242, "gpu_name": "RTX 3060", "dph_total": 0.30}}),
    ("g", "vast-work", "vast-gpu", [("RUNNING", None, "04-07T00:00"), ("FAILED", None, "04-07T01:00")], {}),
    ("h", None, None, [("RUNNING", None, "04-08T00:00"), ("COMPLETED", None, "04-08T00:30")], {}),
    ("i", "gpu-work", "cr-gpu", [("RUNNING", None, "03-20T00:00"), ("COMPLETED", None, "03-20T01:00")], {}),
    ("j", "gpu-work", "cr-gpu", [("RUNNING", None, "04-20T00:00"), ("COMPLETED", None, "04-20T01:00")], {}),
]


def planner_run(name, deployment, pool, states, parameters) -> dict:
    """A run as the reader hands it to the planner: first start, final end (None while running), attempts."""
    starts = [at(t) for kind, _, t in states if kind == "RUNNING"]
    last = states[-1]
    return {"id": name, "name": name, "flow": "adhoc" if deployment is None else FLOW,
            "deployment": None if deployment is None else f"{FLOW}/{deployment}", "pool": pool,
            "start": starts[0], "end": None if last[0] == "RUNNING" else at(last[2]), "run_count": len(starts),
            "parameters": parameters}


def tally(runs, now=NOW, budget=None, pools=POOLS) -> dict:
    window, budget = monthly_cost.check_request("2019-04", budget, now, pools)
    t = monthly_cost.Tally(window, pool_prices=pools)
    for run in runs:
        t.add(run)
    return t.report(budget)


def by_deployment(report: dict) -> dict:
    return {r["deployment"].split("/")[-1].split(" ")[0]: r for r in report["by_deployment"]}


def assert_hand_computed(report: dict, suffix: str = "") -> None:
    """The figures in the module docstring, whatever the pools are called."""
    t = report["totals"]
    assert (t["runs"], t["gpu_s"], t["cpu_s"], t["other_s"]) == (8, 27000, 36000, 1800)
    assert (t["unpriced_runs"], t["unpriced_s"], t["retried_runs"], t["still_running"]) == (2, 5400, 1, 1)
    assert report["usd_month_to_date"] == pytest.approx(MTD, abs=1e-4)
    assert report["projection"]["kind"] == "estimate"
    assert report["projection"]["usd"] == pytest.approx(MTD / 0.5, abs=1e-4)
    assert "month-to-date $6.93 / elapsed fraction 0.5000 (15.00 of 30 days)" in report["projection"]["from"]
    rows = by_deployment(report)
    assert set(rows) == {"gpu-work", "ec2-work", "cpu-work", "vast-work", "adhoc"}
    gpu = rows["gpu-work"]
    assert (gpu["runs"], gpu["gpu_s"], gpu["still_running"], gpu["work_pool"]) == (3, 12600, 1, f"cr-gpu{suffix}")
    assert gpu["usd"] == pytest.approx(1.5 * T_L4 + T_L4 + T_L4, abs=1e-4)  # 4.97
    ec2 = rows["ec2-work"]
    assert (ec2["runs"], ec2["retried_runs"], ec2["gpu_s"], ec2["cpu_s"]) == (1, 1, 3600, 0)
    assert ec2["usd"] == pytest.approx(0.526, abs=1e-4)
    cpu = rows["cpu-work"]
    assert (cpu["gpu_s"], cpu["cpu_s"], cpu["kind"]) == (0, 36000, "cpu")
    assert cpu["usd"] == pytest.approx(10 * T_T3, abs=1e-4)  # 0.8321
    vast = rows["vast-work"]
    assert (vast["runs"], vast["gpu_s"], vast["unpriced_runs"], vast["unpriced_s"]) == (2, 10800, 1, 3600)
    assert vast["usd"] == pytest.approx(0.60, abs=1e-4)
    assert any("no price recorded" in why for why in vast["why_unpriced"])
    adhoc = rows["adhoc"]
    assert (adhoc["work_pool"], adhoc["other_s"], adhoc["unpriced_s"], adhoc["usd"]) == ("(no work pool)", 1800, 1800, 0)
    pools = {r["work_pool"]: r for r in report["by_pool"]}
    assert pools[f"cr-gpu{suffix}"]["usd"] == pytest.approx(4.97, abs=1e-4)
    assert sum(r["usd"] for r in report["by_pool"]) == pytest.approx(MTD, abs=1e-3)
    assert {p["key"] for p in report["prices"]} == set(POOLS.values())
    assert all(p["source"] and p["as_of"] for p in report["prices"])


# --- the planner ----------------------------------------------------------------------------------------------


def test_the_planner_gives_the_hand_computed_totals():
    report = tally([planner_run(*run) for run in RUNS])
    assert_hand_computed(report)
    assert report["budget"] is None


def test_pages_in_any_order_give_the_same_report():
    runs = [planner_run(*run) for run in RUNS]
    assert tally(list(reversed(runs))) == tally(runs)


def test_the_budget_is_compared_with_the_projection():
    runs = [planner_run(*run) for run in RUNS]
    over, under = tally(runs, budget=10)["budget"], tally(runs, budget=20)["budget"]
    assert over["over"] and over["margin_usd"] == pytest.approx(MTD / 0.5 - 10, abs=1e-4)  # 3.8561
    assert not under["over"] and under["margin_usd"] == pytest.approx(MTD / 0.5 - 20, abs=1e-4)


def test_a_finished_month_reports_its_total_not_an_estimate():
    # Seen on 2019-05-02: run c counts to the month's end, 04-15 23:00 -> 05-01 00:00 = 361 h x 1.42 = 512.62,
    # and run j is now in it: 1 h x 1.42. Total = 6.928054794 - 1.42 + 512.62 + 1.42 = 519.548054794.
    report = tally([planner_run(*run) for run in RUNS], now=datetime(2019, 5, 2, tzinfo=timezone.utc), budget=500)
    assert report["usd_month_to_date"] == pytest.approx(MTD - 1.42 + 361 * 1.42 + 1.42, abs=1e-4)
    assert report["projection"]["kind"] == "actual" and "the month is over" in report["projection"]["from"]
    assert report["budget"]["over"] and report["window"]["elapsed_fraction"] == 1


def test_seconds_are_clipped_to_the_month_and_the_report_time():
    window = monthly_cost.month_window("2019-04", NOW)
    assert monthly_cost.billed_seconds(at("03-31T23:00"), at("04-01T01:00"), window) == 3600
    assert monthly_cost.billed_seconds(at("04-15T23:00"), None, window) == 3600
    assert monthly_cost.billed_seconds(at("04-15T23:00"), at("04-16T05:00"), window) == 3600
    assert monthly_cost.billed_seconds(at("03-01T00:00"), at("03-02T00:00"), window) == 0
    assert monthly_cost.billed_seconds(None, None, window) == 0


@pytest.mark.parametrize("month, days", [("2024-02", 29), ("2023-02", 28), ("2025-12", 31)])
def test_month_windows(month, days):
    window = monthly_cost.month_window(month, datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert window.days == days and window.start.day == 1 and window.end.day == 1 and window.elapsed_fraction == 1


@pytest.mark.parametrize("now, month", [(datetime(2026, 12, 1, 1, tzinfo=timezone.utc), "2026-11"),
                                        (datetime(2027, 1, 1, 1, tzinfo=timezone.utc), "2026-12")])
def test_previous_is_the_month_before_the_report_time(now, month):
    window = monthly_cost.month_window("previous", now)
    assert window.month == month and window.elapsed_fraction == 1


@pytest.mark.parametrize("month", ["2026-13", "2026-00", "2026-1", "26-01", "april", "", "Previous"])
def test_a_malformed_month_is_refused_naming_the_flag(month):
    with pytest.raises(BadInput, match=r"month \(--month\).*pass e\.g\. --month 2026-11"):
        monthly_cost.check_request(month, None, NOW)


def test_a_month_not_yet_begun_is_refused():
    with pytest.raises(BadInput, match="has not begun"):
        monthly_cost.check_request("2019-05", None, NOW)


@pytest.mark.parametrize("budget", [-1, "-0.01", "nan", "inf", "lots", True])
def test_a_bad_budget_is_refused_naming_the_flag(budget):
    with pytest.raises(BadInput, match=r"budget \(--budget\)"):
        monthly_cost.check_request("2019-04", budget, NOW, cli=True)
    with pytest.raises(BadInput, match=r"budget_usd \(--budget-usd\)"):
        monthly_cost.check_request("2019-04", budget, NOW)


def test_pool_prices_must_name_known_prices():
    with pytest.raises(BadInput, match="ec2/g4dn.xlarge/spot"):
        monthly_cost.check_request("2019-04", None, NOW, {"my-pool": "ec2/p5.48xlarge/on_demand"})
    with pytest.raises(BadInput, match=r"pool_prices \(--pool-prices\) 'cloud_run/nvidia-l4' is not a mapping"):
        monthly_cost.check_request("2019-04", None, NOW, "cloud_run/nvidia-l4")


@pytest.mark.parametrize("parameters, records, price", [
    ({"dph_total": 0.25}, [], 0.25),
    ({"instance": {"dph_total": "0.4"}}, [], 0.4),
    ({}, ['[{"id": 1, "dph_total": 0.31}]'], 0.31),      # a table artifact's data, as Prefect stores it (JSON text)
    ({}, [{"dph_total": 0.5, "gpu_name": "RTX 4090"}], 0.5),
    ({"dph_total": -1}, [], None), ({"dph_total": "cheap"}, [], None), ({"dph_total": True}, [], None),
    ({}, ["not json"], None), ({}, [], None),
])
def test_a_vast_run_is_priced_only_from_its_instance_record(parameters, records, price):
    found, where = monthly_cost.instance_price({"parameters": parameters, "records": records})
    assert found == price
    if price is None:
        assert where.startswith("no price recorded")


def test_unpriced_pools_say_why():
    window = monthly_cost.month_window("2019-04", NOW)
    t = monthly_cost.Tally(window)
    for pool in ("gpuops-kubernetes-gpu", "somebody-elses-pool"):
        t.add({"deployment": "x/y", "pool": pool, "start": at("04-01T00:00"), "end": at("04-01T01:00"), "run_count": 1})
    report = t.report()
    whys = {r["work_pool"]: r["why_unpriced"] for r in report["by_deployment"]}
    assert "GKE Autopilot" in whys["gpuops-kubernetes-gpu"][0]
    assert "no entry in gpuops/data/prices.json" in whys["somebody-elses-pool"][0]
    assert report["usd_month_to_date"] == 0 and report["totals"]["unpriced_s"] == 7200
    assert report["totals"]["gpu_s"] == 3600 and report["totals"]["other_s"] == 3600  # the unknown pool's kind


def test_the_price_table_has_ec2_on_demand_and_spot_with_source_and_date():
    for key, hourly in (("ec2/g4dn.xlarge/on_demand", 0.526), ("ec2/g4dn.xlarge/spot", 131 / 730),
                        ("ec2/t3.large/on_demand", 60.74 / 730), ("cloud_run/nvidia-l4", 1.42)):
        rate = cost.rate(key)
        assert rate["usd_per_hour"] == pytest.approx(hourly) and rate["source"] and rate["as_of"]
    assert cost.rate("ec2/t3.large/spot")["usd_per_hour"] is None  # no source gives one: not guessed
    assert cost.rate("ec2/g4dn.xlarge/spot")["basis"].startswith("about $131/month")
    assert cost.pool_price("gpuops-cloud-run-gpu")["price"] == "cloud_run/nvidia-l4"
    with pytest.raises(ValueError, match="known: cloud_run/nvidia-l4"):
        cost.rate("gke/nvidia-l4")


def test_the_csv_and_the_markdown_carry_the_rows_and_say_what_is_estimated():
    report = tally([planner_run(*run) for run in RUNS], budget=10)
    rows = list(csv.DictReader(io.StringIO(monthly_cost.render_csv(report))))
    assert [r["deployment"] for r in rows] == [r["deployment"] for r in report["by_deployment"]]
    assert sum(float(r["usd"]) for r in rows) == pytest.approx(MTD, abs=1e-3)
    text = monthly_cost.render_markdown(report)
    assert "Projection (ESTIMATE): $13.86, from month-to-date $6.93 / elapsed fraction 0.5000" in text
    assert "Budget $10.00: OVER budget by $3.86" in text and "no price recorded" in text
    assert "runbook 002" in text and "2025-09-09" in text  # each price with its source and date
    assert monthly_cost.fenced("a\n```\nb").startswith("````\n")


# --- the flow and the CLI on a real Prefect server ------------------------------------------------------------


async def _set_states(run_id, states) -> None:
    """Backdated states through Prefect's own orchestration (its server models, on the server's database).

    The REST API mints every state's timestamp from the server's clock (StateCreate has no timestamp field), so a
    run in April 2019 cannot be made through it; the server's own set_flow_run_state takes the state's timestamp,
    and its global rules derive start_time, end_time, run_count and total_run_time from it as they do live.
    """
    from prefect.server import models
    from prefect.server.database import provide_database_interface
    from prefect.server.schemas.states import State

    db = provide_database_interface()
    for kind, name, when in states:
        # BEGIN IMMEDIATE: the server writes to the same SQLite file, and a deferred transaction that must
        # upgrade to write after the server wrote is refused at once instead of waiting its turn.
        async with db.session_context(begin_transaction=True, with_for_update=True) as session:
            result = await models.flow_runs.set_flow_run_state(
                session, run_id, State(type=kind, timestamp=at(when), **({"name": name} if name else {})),
                force=True)
        assert result.status.value == "ACCEPT"


@pytest.fixture(scope="module")
def month_runs(prefect_api):
    """RUNS on the real server: work pools, deployments, flow runs with backdated states, run f's price in a
    `vast-instance` artifact (not in its parameters), run h without a deployment or pool."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate, WorkPoolCreate
    from prefect.states import Pending

    pools = {f"{pool}-{SUFFIX}": key for pool, key in POOLS.items()}
    ids = {}
    with get_client(sync_client=True) as client:
        for pool in pools:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        flow_id, adhoc_id = client.create_flow_from_name(FLOW), client.create_flow_from_name("adhoc")
        deployments = {}
        for name, deployment, pool, states, parameters in RUNS:
            if deployment is None:
                answer = httpx.post(f"{prefect_api}/flow_runs/", json={"flow_id": str(adhoc_id), "name": name,
                                                                        "state": {"type": "PENDING"}}, timeout=30)
                answer.raise_for_status()
                ids[name] = uuid.UUID(answer.json()["id"])
                continue
            key = (deployment, pool)
            if key not in deployments:
                deployments[key] = client.create_deployment(flow_id=flow_id, name=f"{deployment}",
                                                            work_pool_name=f"{pool}-{SUFFIX}")
            params = {} if name == "f" else parameters  # f's price comes from its artifact below
            ids[name] = client.create_flow_run_from_deployment(deployments[key], parameters=params,
                                                               state=Pending()).id
        client.create_artifact(ArtifactCreate(
            key=f"vast-instance-{SUFFIX}", type="table", flow_run_id=ids["f"],
            data=json.dumps([{"id": 4242, "gpu_name": "RTX 3060", "dph_total": 0.30}])))

    async def backdate():
        for name, _, _, states, _ in RUNS:
            await _set_states(ids[name], states)

    asyncio.run(backdate())
    made = {"pools": pools, "ids": ids, "api": prefect_api, "more_runs": []}
    yield made
    # Gone afterwards: run c is still running, and would be in every later month's report on this server.
    with get_client(sync_client=True) as client:
        for run_id in [*ids.values(), *made["more_runs"]]:
            client.delete_flow_run(run_id)
        for deployment_id in deployments.values():
            client.delete_deployment(deployment_id)
        for pool in pools:
            client.delete_work_pool(pool)


@pytest.fixture(scope="module")
def webhook(prefect_api):
    """The n8n webhook stand-in and a custom-webhook notification block pointed at it."""
    from gpuops.emulator.webhook_sink import WebhookSink

    with WebhookSink() as sink:
        sink.block = sink.save_block(f"cost-alerts-{SUFFIX}", "/webhook/cost")
        yield sink


def test_the_server_holds_the_runs_as_written(month_runs):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        d = client.read_flow_run(month_runs["ids"]["d"])
    assert (d.start_time, d.end_time, d.run_count) == (at("04-03T09:00"), at("04-03T10:00"), 2)
    assert d.total_run_time.total_seconds() == 50 * 60  # running time only: the billed span also holds the wait


def test_the_flow_reports_the_hand_computed_totals_page_by_page(month_runs):
    from flows.cost_report import cost_report

    report = cost_report(month="2019-04", now=NOW, pool_prices=month_runs["pools"])
    assert_hand_computed(report, suffix=f"-{SUFFIX}")
    assert report["budget"] is None and report["prefect_api"] == month_runs["api"]
    assert report["artifacts"] == ["cost-report-2019-04", "cost-report-2019-04-table", "cost-report-2019-04-csv"]
    markdown = latest_artifact("cost-report-2019-04")
    assert "Projection (ESTIMATE): $13.86" in markdown and f"cr-gpu-{SUFFIX}" in markdown
    csv_text = latest_artifact("cost-report-2019-04-csv")
    assert csv_text.startswith("```csv\nmonth,deployment,work_pool")
    rows = list(csv.DictReader(io.StringIO(csv_text.split("\n", 1)[1].rsplit("```", 1)[0])))
    assert sum(float(r["usd"]) for r in rows) == pytest.approx(MTD, abs=1e-3)


def test_the_reader_aggregates_pages_of_any_size(month_runs):
    from prefect.client.orchestration import get_client

    window = monthly_cost.month_window("2019-04", NOW)
    totals = {}
    for size in (2, monthly_cost.PAGE_SIZE):
        t = monthly_cost.Tally(window, pool_prices=month_runs["pools"])
        with get_client(sync_client=True) as client:
            pages = list(monthly_cost.read_runs(client, window, t.needs_record, page_size=size))
        assert all(len(page) <= size for page in pages)
        for page in pages:
            for run in page:
                t.add(run)
        totals[size] = (len(pages), t.report())
    # c not ended (1 page); a b d e f g h ended, 2 at a time (4 pages); i ended before April, j began after 04-16
    assert totals[2][0] == 5 and totals[monthly_cost.PAGE_SIZE][0] == 2
    assert totals[2][1] == totals[monthly_cost.PAGE_SIZE][1]
    assert_hand_computed(totals[2][1], suffix=f"-{SUFFIX}")


def test_runs_starting_at_the_same_instant_across_pages_are_each_read_once(month_runs):
    """Keyset pages break ties by id: five runs starting at one instant, read two at a time (June 2019)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Pending

    pool = next(p for p in month_runs["pools"] if p.startswith("cr-gpu"))
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(FLOW)
        deployment = client.create_deployment(flow_id=flow_id, name="tied", work_pool_name=pool)
        ids = [client.create_flow_run_from_deployment(deployment, state=Pending()).id for _ in range(5)]
    month_runs["more_runs"] += ids

    async def backdate():
        for minutes, run_id in enumerate(ids, start=1):  # all start 06-10 00:00; they end 1..5 minutes later
            await _set_states(run_id, [("RUNNING", None, "06-10T00:00"), ("COMPLETED", None, f"06-10T00:0{minutes}")])

    asyncio.run(backdate())
    window = monthly_cost.month_window("2019-06", datetime(2019, 7, 1, tzinfo=timezone.utc))
    with get_client(sync_client=True) as client:
        pages = list(monthly_cost.read_runs(client, window, page_size=2))
    read = [run for page in pages for run in page]
    tied = [run for run in read if run["deployment"] == f"{FLOW}/tied"]
    assert all(len(page) <= 2 for page in pages) and len({run["id"] for run in read}) == len(read)
    assert sorted(run["id"] for run in tied) == sorted(map(str, ids))
    t = monthly_cost.Tally(window, pool_prices=month_runs["pools"])
    for run in tied:
        t.add(run)
    # (1 + 2 + 3 + 4 + 5) minutes = 900 s at 1.42 $/h = 0.355 $
    assert t.report()["totals"]["gpu_s"] == 900 and t.report()["usd_month_to_date"] == pytest.approx(0.355)


def test_over_budget_notifies_through_the_block_and_under_budget_does_not(month_runs, webhook):
    from flows.cost_report import cost_report

    webhook.reset()
    under = cost_report(month="2019-04", budget_usd=20, now=NOW, notification_block=webhook.block,
                        pool_prices=month_runs["pools"])
    assert under["budget"]["over"] is False and under["budget"]["notified"] is None
    assert webhook.received == []  # notify is synchronous: anything sent has arrived by now

    over = cost_report(month="2019-04", budget_usd=10, now=NOW, notification_block=webhook.block,
                       pool_prices=month_runs["pools"])
    assert over["budget"]["over"] is True and over["budget"]["notified"] == webhook.block
    assert over["budget"]["margin_usd"] == pytest.approx(MTD / 0.5 - 10, abs=1e-4)
    [delivery] = webhook.received
    assert delivery.path == "/webhook/cost"
    assert "over the $10.00 budget" in delivery.body["subject"]
    assert "Projection (ESTIMATE): $13.86" in delivery.body["body"] and "$6.93" in delivery.body["body"]


def test_a_notification_that_fails_still_publishes_the_report_and_fails_the_run(month_runs):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from flows.cost_report import cost_report

    secret_path = f"/hooks/T0/B0/{uuid.uuid4().hex}"  # as in a Slack webhook URL: the path is the secret
    CustomWebhookNotificationBlock(name="nobody", url=f"http://127.0.0.1:9{secret_path}").save(
        f"cost-dead-{SUFFIX}", overwrite=True)
    with pytest.raises(CouldNotRun, match="notification failed") as failed:
        cost_report(month="2019-04", budget_usd=10, now=NOW, notification_block=f"custom-webhook/cost-dead-{SUFFIX}",
                    pool_prices=month_runs["pools"])
    assert secret_path not in str(failed.value) and "cost-report-2019-04" in str(failed.value)
    markdown = latest_artifact("cost-report-2019-04")
    assert "Notified: FAILED" in markdown and secret_path not in markdown


def test_a_block_that_cannot_be_loaded_is_refused_before_the_report(month_runs):
    from flows.cost_report import cost_report

    with pytest.raises(BadInput, match=r"notification_block \(--notification-block\)"):
        cost_report(month="2019-04", budget_usd=10, now=NOW, notification_block="custom-webhook/no-such-block",
                    pool_prices=month_runs["pools"])


CLI = ("import sys\nfrom gpuops_cli import cli\n"
       "if 'gpuops_cli.cost_cli' not in cli.COMMAND_MODULES:\n"
       "    cli.COMMAND_MODULES = (*cli.COMMAND_MODULES, 'gpuops_cli.cost_cli')\n"
       "sys.exit(cli.main(sys.argv[1:]))\n")


def gpuops(*args, api: str | None = None) -> tuple[int, dict]:
    """`gpuops` with this module's commands registered through cost_cli.register, as its own process."""
    env = {**os.environ, **({"PREFECT_API_URL": api} if api else {})}
    done = subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, timeout=120, env=env)
    return done.returncode, json.loads(done.stdout)


def fresh_parser():
    from gpuops_cli import cost_cli
    from gpuops_cli.cli import Parser

    parser = Parser(prog="gpuops")
    cost_cli.register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_registers_on_a_fresh_parser():
    args = fresh_parser().parse_args(["cost-report", "--month", "2019-04", "--budget", "10", "--json",
                                      "--notification-block", "custom-webhook/x", "--pool-price", "p=vast_ai"])
    assert (args.month, args.budget, args.notification_block, args.pool_price, args.json) == (
        "2019-04", "10", "custom-webhook/x", ["p=vast_ai"], True)


@pytest.mark.parametrize("args, flag", [
    (["--month", "2026-13"], "--month"), (["--budget", "-5"], "--budget"), (["--budget", "abc"], "--budget"),
    (["--pool-price", "no-equals-sign"], "--pool-price"), (["--pool-price", "p=ec2/p5.48xlarge/spot"], "--pool-price"),
])
def test_cli_bad_input_names_the_flag_before_any_flow_run(args, flag):
    parsed = fresh_parser().parse_args(["cost-report", *args])
    with pytest.raises(BadInput, match=f"\\({flag}\\)"):
        parsed.run(parsed)  # refused before the flow is imported: no Prefect API needed


def test_cli_bad_input_exits_2_with_one_json_object():
    code, answer = gpuops("cost-report", "--month", "2026-13", "--json")
    assert code == 2 and answer["error"] == "bad-input" and "(--month)" in answer["message"]


def test_cli_over_budget_exits_1_with_the_report(month_runs):
    # The real clock: April 2019 is over, so run c counts to its end and run j is in it (see
    # test_a_finished_month_reports_its_total_not_an_estimate): 519.548054794 $, over 500.
    prices = [f"--pool-price={pool}={key}" for pool, key in month_runs["pools"].items()]
    code, report = gpuops("cost-report", "--month", "2019-04", "--budget", "500", "--json", *prices,
                          api=month_runs["api"])
    assert code == 1, report
    assert report["usd_month_to_date"] == pytest.approx(MTD - 1.42 + 361 * 1.42 + 1.42, abs=1e-4)
    assert report["projection"]["kind"] == "actual" and report["budget"]["over"] is True
