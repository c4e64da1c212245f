"""Answer a paused flow run the way an approver in the Prefect UI does (gpuops.approvals' approver side)."""
from gpuops.approvals import answer_paused, paused_run  # noqa: F401 - paused_run is the tests' too


def answer(prefect_api: str, flow_name: str, run_input: dict) -> None:
    answer_paused(prefect_api, flow_name, run_input)
