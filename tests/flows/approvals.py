"""Answer a paused flow run the way an approver in the Prefect UI does."""
import time

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState,
                                            FlowRunFilterStateType)
from prefect.client.schemas.objects import StateType


def paused_run(flow_name: str, timeout_s: float = 60):
    states = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                         flow_run_filter=FlowRunFilter(state=states))
            if runs:
                return runs[0]
            time.sleep(0.2)
    raise AssertionError(f"no paused {flow_name} run")


def answer(prefect_api: str, flow_name: str, run_input: dict) -> None:
    """Resume the paused run. It turns Paused a moment before its form's schema is saved (a resume in
    between is REJECTed: "Run input schema not found"), and SQLite may say 500/503 under load: retry."""
    run = paused_run(flow_name)
    for _ in range(50):
        response = httpx.post(f"{prefect_api}/flow_runs/{run.id}/resume", json={"run_input": run_input})
        if response.status_code < 500 and response.json()["status"] != "REJECT":
            break
        time.sleep(0.2)
    assert response.json()["status"] == "ACCEPT", response.text  # a bad body is a 200 with REJECT
