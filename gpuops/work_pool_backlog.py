"""A work pool's backlog: flow runs due and waiting to start (the hub's GKE overflow and the backlog alert)."""
from __future__ import annotations

from datetime import datetime, timezone

# Every GPU work pool in deployments/work_pools/ (tests/deployments/test_automations.py checks the files):
# a GPU deployment is one on these pools, for the alerts, the weekly review and the cost figures.
GPU_POOLS = ("gpuops-cloud-run-gpu", "gpuops-kubernetes-gpu", "gpuops-docker-gpu")


def pool_backlog(client, pool: str, now: datetime | None = None) -> int:
    """Runs waiting in the pool: Scheduled (Late, AwaitingRetry too) and already due, none started yet."""
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterNextScheduledStartTime,
                                                FlowRunFilterState, FlowRunFilterStateType, WorkPoolFilter,
                                                WorkPoolFilterName)
    from prefect.client.schemas.objects import StateType

    due = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                        next_scheduled_start_time=FlowRunFilterNextScheduledStartTime(
                            before_=now or datetime.now(timezone.utc)))
    return client.count_flow_runs(flow_run_filter=due,
                                  work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])))
