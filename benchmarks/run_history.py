"""A week (or any span) of flow-run history, generated into a Prefect server's database, for the weekly
review's tests and benchmark.

Prefect's API cannot write history: it stamps every state it is given with the server's clock
(`StateCreate` has no timestamp, and extra fields are refused), so a run created through
`POST /flow_runs/` or moved through `/set_state` starts and ends *now*. This module therefore writes
the runs the way Prefect's own scheduler writes its runs: `models.deployments._insert_scheduled_flow_runs`
(one INSERT of the runs, one of their current states, one UPDATE linking them), on the server's
database through the server's models, in the calling process (prefect_test_harness and
`prefect server start` both read PREFECT_SERVER_DATABASE_CONNECTION_URL). Work pools, flows and
deployments are made through the API. `processingTime` artifacts are inserted as rows of the artifact
table, shaped as flows/hub_work.py creates them (the review reads them through `/artifacts/filter`).

tests/ops/test_weekly_review.py holds the generator to Prefect's orchestration: the same run written
here and driven through `set_flow_run_state` with the same times reads back identically through the API.
"""
from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable, Optional

FAILED_TYPES = ("FAILED", "CRASHED")
# Final states and how often each appears (the rest: Completed).
STATE_MIX = (("FAILED", "Failed", 0.10), ("CRASHED", "Crashed", 0.03), ("CANCELLED", "Cancelled", 0.02))
# Rows per transaction: Prefect's insert checks each run against a list of the inserted ids (quadratic in
# the batch), and short transactions keep the server's own writes from waiting on the SQLite lock.
BATCH = 200


@dataclass(frozen=True)
class DeploymentSpec:
    flow: str
    name: str
    pool: str
    processing: bool = False  # its runs carry processingTime artifacts (process-file)


@dataclass(frozen=True)
class MadeDeployment:
    spec: DeploymentSpec
    id: uuid.UUID
    flow_id: uuid.UUID
    work_queue_id: uuid.UUID
    work_queue_name: str


@dataclass(frozen=True)
class GeneratedRun:
    id: uuid.UUID
    deployment: Optional[str]  # DeploymentSpec.name; None: an ad-hoc run of no deployment
    state_type: str
    state_name: str
    start: Optional[datetime]
    end: Optional[datetime]
    run_count: int
    processing_s: tuple[float, ...] = ()
    scheduled_for: Optional[datetime] = None  # SCHEDULED runs: when they are due


@dataclass
class History:
    runs: list[GeneratedRun] = field(default_factory=list)

    def add(self, run: GeneratedRun) -> None:
        self.runs.append(run)


def plan_history(specs: list[DeploymentSpec], now: datetime, days: int, per_deployment: int, seed: int = 7,
                 streaks: Optional[dict[str, int]] = None, late: Optional[dict[str, int]] = None) -> History:
    """Runs of each deployment started in the `days` before `now` (unique start times, ends before `now`
    or still Running), a planted failure streak per deployment named in `streaks`, retries (run_count 2-6)
    on about one run in eight, processingTime per attempt for processing deployments; plus, outside
    what a review of that window counts: runs started before it, ad-hoc runs of no deployment, and
    Late (due) and future Scheduled runs per deployment named in `late`."""
    rng = random.Random(seed)
    start_of_window = now - timedelta(days=days)
    span_us = int((now - start_of_window).total_seconds() * 1e6)
    history, taken = History(), set()

    def unique_start(low: datetime, span: int) -> datetime:
        while True:
            at = low + timedelta(microseconds=rng.randrange(1, span))
            if at not in taken:
                taken.add(at)
                return at

    for spec in specs:
        starts = sorted(unique_start(start_of_window, span_us) for _ in range(per_deployment))
        planted = (streaks or {}).get(spec.name, 0)
        streak_from = rng.randrange(0, max(1, per_deployment - planted - 1)) if planted else -1
        for i, start in enumerate(starts):
            forced = "FAILED" if streak_from <= i < streak_from + planted else None
            history.add(_run(rng, spec, start, now, forced))
        for _ in range(max(3, per_deployment // 50)):  # before the window: never counted
            history.add(_run(rng, spec, unique_start(start_of_window - timedelta(days=2), int(1.9 * 86400e6)), now))
        for i in range((late or {}).get(spec.name, 0)):
            history.add(GeneratedRun(uuid.uuid4(), spec.name, "SCHEDULED", "Late" if i % 2 else "Scheduled",
                                     None, None, 0, scheduled_for=now - timedelta(minutes=5 + i)))
        history.add(GeneratedRun(uuid.uuid4(), spec.name, "SCHEDULED", "Scheduled", None, None, 0,
                                 scheduled_for=now + timedelta(hours=1)))  # not due yet: no backlog
    for _ in range(5):  # ad-hoc runs in the window, of no deployment
        history.add(GeneratedRun(uuid.uuid4(), None, "COMPLETED", "Completed",
                                 unique_start(start_of_window, span_us), None, 1))
    return history


def _run(rng: random.Random, spec: DeploymentSpec, start: datetime, now: datetime,
         forced: Optional[str] = None) -> GeneratedRun:
    roll, state_type, state_name = rng.random(), "COMPLETED", "Completed"
    for kind, name, share in STATE_MIX:
        if roll < share:
            state_type, state_name = kind, name
            break
        roll -= share
    if forced:
        state_type, state_name = forced, forced.capitalize()
    run_count = rng.randint(2, 6) if rng.random() < 0.125 else 1
    seconds = round(rng.lognormvariate(4.0, 1.0), 3)  # median ~55 s, a long tail
    end = start + timedelta(seconds=seconds)
    if end > now:  # would end after "now": still running then
        state_type, state_name, end = "RUNNING", "Running", None
    processing = tuple(round(rng.uniform(0.2, 0.9) * seconds / run_count, 3) for _ in range(run_count)) \
        if spec.processing else ()
    return GeneratedRun(uuid.uuid4(), spec.name, state_type, state_name, start, end, run_count, processing)


# --- writing it -------------------------------------------------------------------------------------


def make_deployments(client, specs: list[DeploymentSpec]) -> dict[str, MadeDeployment]:
    """Work pools (type process), flows and deployments through the API; what exists is reused."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    made = {}
    for spec in specs:
        try:
            client.create_work_pool(WorkPoolCreate(name=spec.pool, type="process"))
        except ObjectAlreadyExists:
            pass
        flow_id = client.create_flow_from_name(spec.flow)
        deployment_id = client.create_deployment(flow_id=flow_id, name=spec.name, work_pool_name=spec.pool)
        deployment = client.read_deployment(deployment_id)
        made[spec.name] = MadeDeployment(spec, deployment_id, flow_id, deployment.work_queue_id,
                                         deployment.work_queue_name)
    return made


def insert_history(history: History, deployments: dict[str, MadeDeployment],
                   adhoc_flow_id: Optional[uuid.UUID] = None) -> int:
    """Write the runs (and their processingTime artifacts) into the server's database; returns how many."""
    import asyncio

    return asyncio.run(_insert(history.runs, deployments, adhoc_flow_id))


async def _insert(runs: list[GeneratedRun], deployments: dict[str, MadeDeployment],
                  adhoc_flow_id: Optional[uuid.UUID]) -> int:
    from prefect.server import models
    from prefect.server.database import provide_database_interface

    # BEGIN IMMEDIATE (with_for_update): the server writes to the same SQLite file, and a deferred
    # transaction that must upgrade from read to write after another writer is refused at once
    # ("database is locked") instead of waiting out the busy timeout.
    db = provide_database_interface()
    written = 0
    for batch in _batches(runs, BATCH):
        rows = [_row(run, deployments, adhoc_flow_id) for run in batch]
        artifacts = [a for run in batch for a in _artifacts(run)]
        async with db.session_context(begin_transaction=True, with_for_update=True) as session:
            written += len(await models.deployments._insert_scheduled_flow_runs(session=session, runs=rows))
            if artifacts:
                await session.execute(db.Artifact.__table__.insert(), artifacts)
    return written


def _row(run: GeneratedRun, deployments: dict[str, MadeDeployment], adhoc_flow_id: Optional[uuid.UUID]) -> dict:
    from prefect.server.schemas.core import FlowRunPolicy
    from prefect.server.schemas.states import State, StateDetails, StateType

    made = deployments.get(run.deployment) if run.deployment else None
    if made is None and adhoc_flow_id is None:
        raise ValueError(f"run {run.id}: no deployment {run.deployment!r} and no flow for ad-hoc runs")
    at = run.end or run.start or run.scheduled_for
    details = StateDetails(scheduled_time=run.scheduled_for) if run.scheduled_for else StateDetails()
    state = State(type=StateType(run.state_type), name=run.state_name, timestamp=at, state_details=details)
    running_s = (run.end - run.start).total_seconds() if run.start and run.end else 0.0
    return {
        "id": run.id, "name": f"gen-{run.id.hex[:12]}",
        "flow_id": made.flow_id if made else adhoc_flow_id,
        "deployment_id": made.id if made else None,
        "work_queue_id": made.work_queue_id if made else None,
        "work_queue_name": made.work_queue_name if made else None,
        "parameters": {}, "tags": ["gpuops-generated"], "labels": {},
        "empirical_policy": FlowRunPolicy(retries=5 if run.run_count > 1 else None),
        "state": state.model_dump(), "state_type": state.type, "state_name": state.name,
        "state_timestamp": at, "run_count": run.run_count,
        "start_time": run.start, "end_time": run.end,
        "expected_start_time": run.scheduled_for or run.start,
        "next_scheduled_start_time": run.scheduled_for,
        "total_run_time": timedelta(seconds=running_s),  # Prefect's is Running time only: wall time here
    }


def _artifacts(run: GeneratedRun) -> list[dict]:
    # As flows/hub_work.py's process_file makes them: one per attempt, key processing-time-<task id>.
    task = f"task-{run.id.hex[:10]}"
    return [{"id": uuid.uuid4(), "key": f"processing-time-{task}", "type": "markdown", "flow_run_id": run.id,
             "description": f"task {task}: processingTime {seconds:.3f} s",
             "data": f"| task | processingTime (s) |\n|---|---|\n| {task} | {seconds:.3f} |\n",
             "created": run.start + timedelta(seconds=attempt), "updated": run.start + timedelta(seconds=attempt)}
            for attempt, seconds in enumerate(run.processing_s, start=1)]


def delete_runs(ids: Iterable[uuid.UUID]) -> None:
    """Remove generated runs (their states and artifacts go with them) from the server's database."""
    import asyncio

    asyncio.run(_delete(list(ids)))


async def _delete(ids: list[uuid.UUID]) -> None:
    import sqlalchemy as sa
    from prefect.server.database import provide_database_interface

    db = provide_database_interface()
    for batch in _batches(ids, BATCH):
        async with db.session_context(begin_transaction=True, with_for_update=True) as session:
            await session.execute(sa.delete(db.Artifact).where(db.Artifact.flow_run_id.in_(batch)))
            await session.execute(sa.delete(db.FlowRun).where(db.FlowRun.id.in_(batch)))


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(timezone.utc)
