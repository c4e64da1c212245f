"""The weekly review on the session's real Prefect server: a few thousand generated runs across GPU and CPU
deployments, and the review's figures held to a direct computation over the same generated runs; zero runs,
bad input, the prefect.yaml schedule, processingTime from process-file's own artifacts, the chart.

The runs are written into the server's database with the server's own models (benchmarks/run_history.py:
Prefect's API stamps every state with the server's clock, so it cannot create last week), in a window of
2025 that no other test writes to, on work pools of this module's own; they are deleted afterwards.
"""
from __future__ import annotations

import json
import math
import re
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.run_history import (DeploymentSpec, GeneratedRun, History, delete_runs, insert_history,
                                    make_deployments, plan_history)
from gpuops import review_sources
from gpuops.errors import BadInput
from gpuops.review_report import Review, RunRecord, Tally, percentile
from gpuops.svg_chart import daily_runs_chart

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2025, 3, 10, 1, 0, tzinfo=timezone.utc)  # Monday 10:00 in Tokyo
DAYS = 7
PER_DEPLOYMENT = 550
L4_PER_HOUR = 1.42  # prices.json: Cloud Run nvidia-l4 GPU 0.67 + its 8 vCPU / 32 GiB instance 0.75


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


@pytest.fixture(scope="module")
def week(prefect_api):
    """Four deployments on pools of this module (a Cloud Run-priced GPU pool, a GKE-like GPU pool, a CPU pool),
    PER_DEPLOYMENT runs each in the week before NOW, planted failure streaks, retries, processingTime
    artifacts, runs before the window, ad-hoc runs, and Late/Scheduled runs; removed afterwards."""
    sfx = uuid.uuid4().hex[:6]
    pools = SimpleNamespace(cloud_run=f"wr-{sfx}-cloud-run-gpu", gke=f"wr-{sfx}-gke-gpu", cpu=f"wr-{sfx}-process")
    specs = [DeploymentSpec("process-file", f"wr-{sfx}-gpu-work", pools.cloud_run, processing=True),
             DeploymentSpec("process-file", f"wr-{sfx}-gpu-work-gke", pools.gke, processing=True),
             DeploymentSpec("process-file", f"wr-{sfx}-cpu-work", pools.cpu, processing=True),
             DeploymentSpec(f"wr-{sfx}-nightly", f"wr-{sfx}-batch", pools.cpu)]
    with _client() as client:
        made = make_deployments(client, specs)
        adhoc_flow = client.create_flow_from_name(f"wr-{sfx}-adhoc")
    history = plan_history(specs, NOW, DAYS, PER_DEPLOYMENT, seed=11,
                           streaks={specs[0].name: 7, specs[2].name: 4}, late={specs[1].name: 6, specs[2].name: 3})
    started = time.monotonic()
    insert_history(history, made, adhoc_flow)
    generated_s = time.monotonic() - started
    yield SimpleNamespace(specs=specs, made=made, history=history, pools=pools, sfx=sfx, generated_s=generated_s)
    delete_runs(run.id for run in history.runs)


@pytest.fixture(scope="module")
def webhook(prefect_api):
    """The n8n webhook stand-in and a custom-webhook block pointed at it."""
    from gpuops.emulator.webhook_sink import WebhookSink

    with WebhookSink() as sink:
        sink.block = sink.save_block("weekly-review-test", "/webhook/review")
        yield sink


# --- the direct computation the review is held to ---------------------------------------------------------


def nearest_rank(values: list[float], q: float):
    return sorted(values)[math.ceil(q * len(values)) - 1] if values else None


def direct(history, start: datetime, end: datetime, gpu_names: set[str]) -> dict[str, dict]:
    """Per deployment name, from the generated runs themselves."""
    rows: dict[str, dict] = {}
    for run in sorted((r for r in history.runs if r.deployment and r.start and start <= r.start <= end),
                      key=lambda r: r.start):
        row = rows.setdefault(run.deployment, {"runs": 0, "successes": 0, "failures": 0, "cancelled": 0,
                                               "streak": 0, "longest": 0, "retries": 0, "durations": [],
                                               "processing": []})
        row["runs"] += 1
        row["retries"] += run.run_count - 1
        if run.state_type == "COMPLETED":
            row["successes"] += 1
            row["streak"] = 0
        elif run.state_type in ("FAILED", "CRASHED"):
            row["failures"] += 1
            row["streak"] += 1
            row["longest"] = max(row["longest"], row["streak"])
        elif run.state_type == "CANCELLED":
            row["cancelled"] += 1
        if run.end is not None:
            row["durations"].append((run.end - run.start).total_seconds())
        row["processing"] += run.processing_s
    expected = {}
    for name, row in rows.items():
        gpu_hours = sum(row["durations"]) / 3600 if name in gpu_names else None
        expected[name] = {
            "runs": row["runs"], "successes": row["successes"], "failures": row["failures"],
            "cancelled": row["cancelled"], "longest_failure_streak": row["longest"], "retries": row["retries"],
            "duration_p50_s": round(nearest_rank(row["durations"], 0.5), 3),
            "duration_p95_s": round(nearest_rank(row["durations"], 0.95), 3),
            "processing_time_p50_s": None if not row["processing"] else round(nearest_rank(row["processing"], .5), 3),
            "processing_time_p95_s": None if not row["processing"] else round(nearest_rank(row["processing"], .95), 3),
            "processing_time_samples": len(row["processing"]),
            "gpu_hours": None if gpu_hours is None else round(gpu_hours, 4), "_hours": gpu_hours,
        }
    return expected


def _artifact_of(flow_run_id) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with _client() as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["weekly-review"]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert len(found) == 1
    return found[0].data


# --- the review against the generated week ----------------------------------------------------------------


def test_the_review_reports_what_a_direct_computation_over_the_same_runs_gives(week, status_bucket, webhook):
    from flows.weekly_review import weekly_review
    from gpuops import dead_letter
    from gpuops.status_store import StatusStore

    start = NOW - timedelta(days=DAYS)
    names = [s.name for s in week.specs]
    runs_of = {n: [r for r in week.history.runs if r.deployment == n and r.start and start <= r.start] for n in names}
    failed = lambda n: [r for r in runs_of[n] if r.state_type == "FAILED" and r.end]  # noqa: E731
    before = next(r for r in week.history.runs if r.deployment == names[0] and r.start and r.start < start)
    # Dead letters: 5 of gpu-work, 2 of cpu-work in the window; one of a run started before the window but
    # dead-lettered in it (gpu-work's); one of a run Prefect does not know; one written before the window.
    store = StatusStore.from_env()
    letters = [(r, r.end) for r in failed(names[0])[:5] + failed(names[2])[:2]]
    letters += [(before, start + timedelta(minutes=1))]
    for i, (run, at) in enumerate(letters):
        dead_letter.write(store, dead_letter.record(f"wr-{i}", "gs://b/x.mp4", {}, "boom", str(run.id), 6, at))
    dead_letter.write(store, dead_letter.record("wr-unknown", "gs://b/y.mp4", {}, "boom", str(uuid.uuid4()), 6,
                                                NOW - timedelta(hours=1)))
    dead_letter.write(store, dead_letter.record("wr-old", "gs://b/z.mp4", {}, "boom", str(before.id), 6,
                                                start - timedelta(hours=1)))

    started = time.monotonic()
    state = weekly_review(days=DAYS, now=NOW, notification_block=webhook.block,
                          gpu_pools=[week.pools.cloud_run, week.pools.gke],
                          pool_prices={week.pools.cloud_run: "cloud_run/nvidia-l4"}, return_state=True)
    review_s = time.monotonic() - started
    report = state.result()
    print(f"\n{len(week.history.runs)} runs generated in {week.generated_s:.1f} s; review (flow run) {review_s:.1f} s")

    expected = direct(week.history, start, NOW, {names[0], names[1]})
    rows = {r["deployment"].split("/", 1)[1]: r for r in report["deployments"] if r["deployment"].split("/", 1)[1]
            in names}
    assert set(rows) == set(names)
    for name in names:
        got = {k: rows[name][k] for k in expected[name] if not k.startswith("_")}
        assert got == {k: v for k, v in expected[name].items() if not k.startswith("_")}, name
    assert expected[names[0]]["longest_failure_streak"] >= 7 and expected[names[2]]["longest_failure_streak"] >= 4
    assert sum(e["runs"] for e in expected.values()) >= 2000  # "a few thousand"
    assert [rows[n]["kind"] for n in names] == ["GPU", "GPU", "CPU", "CPU"]

    # Dead letters written in the window, per deployment of their run; the unknown run's is counted apart.
    assert [rows[n]["dead_letters"] for n in names] == [6, 0, 2, 0]
    assert report["dead_letters"]["total"] == 9 and report["dead_letters"]["not_in_table"] == 1
    # Backlog now: each pool's due Scheduled/Late runs (the future ones are not due).
    assert report["backlog"][week.pools.gke] == 6 and report["backlog"][week.pools.cpu] == 3
    assert report["backlog"][week.pools.cloud_run] == 0
    assert rows[names[1]]["backlog_now"] == 6
    # GPU hours and cost: hours x the pool's price, its source and date shown; an unpriced pool says why.
    assert rows[names[0]]["cost_usd"] == round(expected[names[0]]["_hours"] * L4_PER_HOUR, 2)
    assert rows[names[0]]["price"]["as_of"] and rows[names[0]]["price"]["source"]
    assert rows[names[1]]["cost_usd"] is None and "no entry" in rows[names[1]]["price"]["why"]
    assert rows[names[2]]["gpu_hours"] is None and rows[names[2]]["cost_usd"] is None
    assert report["gpu_utilisation"] == {"status": "not configured"}

    # The chart's days: the direct count per 24 h from the window's start.
    daily = [[0, 0] for _ in range(DAYS)]
    for run in week.history.runs:
        if run.deployment and run.start and start <= run.start <= NOW:
            daily[int((run.start - start).total_seconds() // 86400)][0] += 1
            daily[int((run.start - start).total_seconds() // 86400)][1] += run.state_type in ("FAILED", "CRASHED")
    assert [[d["runs"], d["failures"]] for d in report["daily"]] == daily

    markdown = _artifact_of(state.state_details.flow_run_id)
    gpu_row = next(line for line in markdown.splitlines() if f"/{names[0]} |" in line)
    assert f"| {rows[names[0]]['runs']} |" in gpu_row and f"| {rows[names[0]]['longest_failure_streak']} |" in gpu_row
    svg = markdown[markdown.index("<svg"):markdown.index("</svg>")]
    assert "\n\n" not in svg and "style" not in svg and "<script" not in svg
    assert svg.count("<rect") >= DAYS and f"{daily[0][0]} runs" in svg
    assert "as of 2026-11-22" in markdown  # the price's date, from prices.json
    note = webhook.wait_for(lambda d: names[0] in json.dumps(d.body), timeout_s=10)
    assert note is not None and f"longest streak {rows[names[0]]['longest_failure_streak']}" in note.body["body"]
    assert note.body["body"] == report["summary"]


def test_zero_runs_in_the_window_is_said_not_a_crash(prefect_api, monkeypatch):
    from flows.weekly_review import weekly_review

    monkeypatch.delenv("GPUOPS_STATUS_BUCKET", raising=False)
    state = weekly_review(days=1, now=datetime(2001, 1, 8, 1, 0, tzinfo=timezone.utc), return_state=True)
    report = state.result()
    assert report["runs"] == 0 and report["deployments"] == [] and report["daily"] == [
        {"day_start": "2001-01-07T01:00:00Z", "runs": 0, "failures": 0}]
    sentence = "No flow run of any deployment started between 2001-01-07T01:00:00Z and 2001-01-08T01:00:00Z."
    assert sentence in report["summary"]
    markdown = _artifact_of(state.state_details.flow_run_id)
    assert sentence in markdown and "<svg" in markdown
    assert "Dead letters: not configured" in markdown
    assert "GPU utilisation (Cloud Monitoring): not configured" in markdown


def _parser():
    from gpuops_cli import review_cli
    from gpuops_cli.cli import Parser

    parser = Parser(prog="gpuops")
    review_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.mark.parametrize("days", ["0", "-3", "seven", "1.5", "91"])
def test_a_bad_days_is_bad_input_naming_the_flag_before_anything_runs(days):
    """BadInput is exit 2 in gpuops_cli.cli; nothing reaches Prefect (no server is used here)."""
    args = _parser().parse_args(["weekly-review", "--days", days, "--json"])
    with pytest.raises(BadInput, match=r"days \(--days\)"):
        args.run(args)
    with pytest.raises(BadInput):
        _parser().parse_args(["weekly-review", "--days"])  # a usage error is bad input too


def test_the_flow_checks_its_whole_request_first():
    from flows.weekly_review import check_request

    assert check_request("7", None, None, None) == 7
    for bad, field in (((7, "2025-03-10", None, None), "now"), ((7, None, "Bad_Project", None), "project"),
                       ((7, None, None, []), "gpu_pools"),
                       ((7, None, None, None, {"p": "cloud_run/h100"}), "pool_prices")):
        with pytest.raises(BadInput, match=field):
            check_request(*bad)


def test_the_cli_prints_the_review_as_one_json_object(prefect_api, monkeypatch):
    monkeypatch.delenv("GPUOPS_STATUS_BUCKET", raising=False)
    args = _parser().parse_args(["weekly-review", "--days", "1", "--json"])
    review = args.run(args)
    assert json.loads(json.dumps(review, default=str))["window"]["days"] == 1
    assert {"runs", "deployments", "backlog", "dead_letters", "gpu_utilisation", "summary"} <= set(review)
    args = _parser().parse_args(["weekly-review", "--days", "1"])
    printed = args.run(args)
    assert printed["summary"].strip().startswith("gpuops weekly review") and printed["artifact"] == "weekly-review"


# --- the schedule -------------------------------------------------------------------------------------------


def test_the_prefect_yaml_schedule_makes_its_next_run_at_0100_utc_on_a_monday(prefect_api):
    """The weekly-review entry's schedule, on a deployment created through the API, scheduled by the server.

    The session's server is Prefect's ephemeral test server, which runs no scheduler service; its
    `POST /deployments/{id}/schedule` runs the same run generator (models.deployments.schedule_runs) the
    scheduler service runs, with the deployment's cron and timezone.
    """
    import yaml
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.client.schemas.sorting import FlowRunSort

    entries = yaml.safe_load((ROOT / "prefect.yaml").read_text()).get("deployments") or []
    entry = next((d for d in entries if d.get("name") == "weekly-review"), None)
    if entry is None or not entry.get("schedules"):
        pytest.skip("prefect.yaml has no weekly-review deployment with a schedule yet (the lead adds "
                    '`schedules: [{cron: "0 10 * * 1", timezone: "Asia/Tokyo"}]`)')
    schedule = entry["schedules"][0]
    assert "cron" in schedule, f"weekly-review's schedule is not a cron: {schedule}"
    cron = CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))
    with _client() as client:
        flow_id = client.create_flow_from_name("weekly-review")
        deployment_id = client.create_deployment(
            flow_id=flow_id, name=f"weekly-review-schedule-{uuid.uuid4().hex[:6]}",
            schedules=[DeploymentScheduleCreate(schedule=cron, active=True)])
        asked_at = datetime.now(timezone.utc)
        client.request("POST", "/deployments/{id}/schedule", path_params={"id": deployment_id}, json={})
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                                     sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=3)
        client.delete_deployment(deployment_id)
    assert runs, "the server scheduled no run"
    next_run = runs[0].expected_start_time.astimezone(timezone.utc)
    assert (next_run.weekday(), next_run.hour, next_run.minute, next_run.second) == (0, 1, 0, 0), next_run
    assert asked_at < next_run <= asked_at + timedelta(days=7)
    assert all(r.state.name == "Scheduled" for r in runs)
    assert [(r.expected_start_time - next_run).days for r in runs] == [0, 7, 14]


# --- where the figures come from ----------------------------------------------------------------------------


def test_processing_time_is_read_from_the_artifact_process_file_creates(prefect_api):
    from flows.hub_work import process_file

    state = process_file(task_id=f"wr-{uuid.uuid4().hex[:8]}", input_uri="gs://bucket/clip.txt",
                         command=[sys.executable, "-c", "import time; time.sleep(0.3); print('done')"],
                         return_state=True)
    result = state.result()
    run_id = str(state.state_details.flow_run_id)
    with _client() as client:
        found = review_sources.processing_times(client, [run_id])
    assert found == {run_id: [round(result["processingTime"], 3)]} and result["processingTime"] >= 0.3


def test_generated_runs_read_back_like_runs_driven_through_prefects_orchestration(week):
    """The generator's rows hold to Prefect: the same run moved through set_flow_run_state (its global
    rules set start, end and run_count from the states' times) reads back identically through the API."""
    import asyncio

    import httpx
    from prefect.server import models, schemas
    from prefect.server.database import provide_database_interface
    from prefect.settings import PREFECT_API_URL

    made = week.made[week.specs[0].name]
    t0 = NOW - timedelta(days=3, microseconds=123)
    steps = [schemas.states.Running(timestamp=t0),
             schemas.states.AwaitingRetry(timestamp=t0 + timedelta(seconds=40),
                                          scheduled_time=t0 + timedelta(seconds=50)),
             schemas.states.Running(timestamp=t0 + timedelta(seconds=50)),
             schemas.states.Failed(timestamp=t0 + timedelta(seconds=95.5))]

    async def orchestrate() -> uuid.UUID:
        db = provide_database_interface()
        # IMMEDIATE, as benchmarks/run_history does: the server writes to the same SQLite file.
        async with db.session_context(begin_transaction=True, with_for_update=True) as session:
            run = await models.flow_runs.create_flow_run(session=session, flow_run=schemas.core.FlowRun(
                flow_id=made.flow_id, deployment_id=made.id, work_queue_id=made.work_queue_id,
                work_queue_name=made.work_queue_name, state=steps[0]))
            for step in steps[1:]:
                await models.flow_runs.set_flow_run_state(session=session, flow_run_id=run.id, state=step, force=True)
            return run.id

    orchestrated = asyncio.run(orchestrate())
    generated = GeneratedRun(uuid.uuid4(), made.spec.name, "FAILED", "Failed", t0, t0 + timedelta(seconds=95.5), 2)
    insert_history(History([generated]), week.made)
    try:
        with _client() as client:
            page = client.request("POST", "/flow_runs/filter", json={
                "flow_runs": {"id": {"any_": [str(orchestrated), str(generated.id)]}}}).json()
        fields = ("state_type", "state_name", "start_time", "end_time", "run_count", "deployment_id", "work_pool_name",
                  "work_queue_name")
        by_id = {r["id"]: {f: r[f] for f in fields} for r in page}
        assert by_id[str(orchestrated)] == by_id[str(generated.id)]
        assert by_id[str(orchestrated)]["run_count"] == 2
        # Why the generator exists: the API takes no state time; it stamps states with its own clock.
        refused = httpx.post(f"{PREFECT_API_URL.value()}/flow_runs/{orchestrated}/set_state", timeout=10,
                             json={"state": {"type": "COMPLETED", "timestamp": "2025-03-01T00:00:00Z"}, "force": True})
        assert refused.status_code == 422 and "timestamp" in refused.text
    finally:
        delete_runs([orchestrated, generated.id])


def test_gpu_utilisation_asks_cloud_monitoring_and_says_why_when_it_cannot(cloudrun_emulator, monkeypatch):
    """Against gpuops' Monitoring emulation, which serves request metrics only: the GPU metric is refused
    (400, as Google refuses an unknown metric) and the review says so instead of failing."""
    from gpuops.monitoring import ENDPOINT_ENV

    monkeypatch.setenv(ENDPOINT_ENV, cloudrun_emulator.url)
    found = review_sources.gpu_utilisation("nca-toolkit-438301", NOW - timedelta(days=7), NOW)
    assert found["status"] == "unavailable" and "BadRequest" in found["reason"]
    assert "emulation" in found["source"]


def test_gpu_utilisation_queries_and_reading_of_googles_answer():
    params = dict(review_sources.utilisation_params("cloud_run_job", "job_name", "ALIGN_PERCENTILE_95", "REDUCE_MAX",
                                                    0.0, 7 * 86400.0))
    assert params["filter"] == ('metric.type = "run.googleapis.com/container/gpu/utilizations" AND '
                                'resource.type = "cloud_run_job"')
    assert params["aggregation.alignmentPeriod"] == "604800s"  # the whole week as one point per series
    assert params["aggregation.groupByFields"] == "resource.labels.job_name"
    body = {"timeSeries": [
        {"resource": {"type": "cloud_run_job", "labels": {"job_name": "svc-gpu-job"}}, "metricKind": "GAUGE",
         "valueType": "DOUBLE", "points": [{"interval": {"endTime": "2025-03-10T01:00:00Z"},
                                            "value": {"doubleValue": 0.83}}]},
        {"resource": {"type": "cloud_run_job", "labels": {"job_name": "idle"}}, "points": []}]}
    assert review_sources.values_by(body, "job_name") == {"svc-gpu-job": 0.83}


# --- the planner and the chart --------------------------------------------------------------------------------


def test_streaks_retries_and_percentiles_follow_their_definitions():
    tally = Tally()
    for i, (state, runs) in enumerate([("FAILED", 1), ("CRASHED", 3), ("CANCELLED", 1), ("RUNNING", 1),
                                       ("FAILED", 2), ("COMPLETED", 1), ("FAILED", 1)]):
        tally.add(RunRecord(str(i), "d", state, float(i), None if state == "RUNNING" else i + 10.0, runs))
    assert (tally.longest_streak, tally.failures, tally.successes, tally.cancelled, tally.unfinished) == (3, 4, 1, 1, 1)
    assert (tally.retries, tally.retried_runs, len(tally.durations)) == (3, 2, 6)
    assert [percentile(range(1, 11), q) for q in (0.5, 0.95, 0.1)] == [5, 10, 1] and percentile([], 0.5) is None
    with pytest.raises(ValueError, match="start-time order"):
        tally.add(RunRecord("late", "d", "COMPLETED", 0.0, 1.0, 1))


def test_the_review_counts_only_the_window_and_names_deleted_deployments():
    start = NOW - timedelta(days=2)
    review = Review(start, NOW, {})
    review.add(RunRecord("a", "gone", "FAILED", start.timestamp() - 1, None, 1))
    review.add(RunRecord("b", "gone", "FAILED", NOW.timestamp(), NOW.timestamp() + 1, 1))
    report = review.report(backlog={})
    assert report["runs"] == 1 and report["deployments"][0]["deployment"] == "(deleted) gone"
    assert [d["runs"] for d in report["daily"]] == [0, 1] and review.skipped == 1


def test_the_chart_is_escaped_self_contained_svg_scaled_to_the_busiest_day():
    svg = daily_runs_chart([("03-03", 40, 4), ("<b>&", 80, 0), ("03-05", 0, 0)], 'runs "a" < b')
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"') and svg.endswith("</svg>")
    assert "&lt;b&gt;&amp;" in svg and "<b>" not in svg and "runs &quot;a&quot; &lt; b" in svg
    assert not re.search(r"style|<script|href|\n\s*\n", svg)
    heights = [float(h) for h in re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="[\d.]+" height="([\d.]+)" fill',
                                            svg)]
    assert heights[:3] == pytest.approx([172 * 40 / 100, 172 * 4 / 100, 172 * 80 / 100], abs=0.05)
    assert daily_runs_chart([], "empty").count("<rect") == 2  # the legend only
    with pytest.raises(ValueError):
        daily_runs_chart([("x", 1, 2)], "more failures than runs")
