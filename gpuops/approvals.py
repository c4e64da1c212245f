"""One way to ask a person before a destructive step: a typed Prefect form, and no answer means no.

The flow run pauses with a `RunInput` form (the UI's Resume button, or POST /flow_runs/{id}/resume).
How to answer is logged once. At the deadline the run resumes itself with the form's refusal, so a
timeout never proceeds and the run still completes (the server would fail a run whose pause
expired). The question and the answer go into an artifact of the run.
"""
from __future__ import annotations

import contextvars
import json
import threading
from dataclasses import dataclass, field
from typing import Any

POLL_S = 2  # how soon a resumed run notices; a read of one flow run costs little
# The server fails any transition out of a pause once its deadline has passed: the run answers
# "timed out" itself, this long before the server's deadline.
SERVER_GRACE_S = 30


@dataclass(frozen=True)
class Decision:
    """What came of a question: approved only by an explicit answer that says so, in time."""

    approved: bool
    timed_out: bool
    flow_run_id: str
    answer: dict[str, Any] = field(default_factory=dict)  # the form's fields as submitted

    def as_dict(self) -> dict:
        return {**self.answer, "approve": self.approved, "timed_out": self.timed_out,
                "flow_run_id": self.flow_run_id}


def resume_help(flow_run_id: str, question: str, example: dict, refusal: dict) -> str:
    """How an approver answers: the UI's Resume form, or the API (Prefect has no CLI verb for it)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    ui = PREFECT_UI_URL.value()
    return "\n".join([
        f"waiting for approval: {question} (flow run {flow_run_id})",
        f"  UI: {ui}/runs/flow-run/{flow_run_id} -> Resume" if ui else "  UI: the flow run's Resume button",
        f"  API: curl -X POST {PREFECT_API_URL.value()}/flow_runs/{flow_run_id}/resume "
        f"-H 'Content-Type: application/json' -d '{json.dumps({'run_input': example})}'",
        f"  {json.dumps(refusal)} refuses; no answer in time refuses too.",
        "  The answer is accepted when the response says \"status\": \"ACCEPT\" (a bad body is REJECT with 200).",
    ])


def _refuse_for_nobody(flow_run_id, refusal: dict, expired: threading.Event) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.responses import SetStateStatus

    # Resume our own run with the refusal; if a person answered first, the server says ABORT.
    with get_client(sync_client=True) as client:
        result = client.resume_flow_run(flow_run_id, run_input=refusal)
    if result.status == SetStateStatus.ACCEPT:
        expired.set()


def ask(question: str, form, timeout_s: int, *, example: dict, refusal: dict, key: str,
        description: str = "") -> Decision:
    """Pause the current flow run for `form` (a RunInput with a bool `approve`); never raises on timeout.

    `example` is the approving body shown in the instructions; `refusal` the body that means no;
    `key` names the artifact that records the question and the answer.
    """
    from prefect import get_run_logger
    from prefect.context import FlowRunContext
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    flow_run_id = FlowRunContext.get().flow_run.id
    get_run_logger().warning(resume_help(str(flow_run_id), question, example, refusal))
    expired = threading.Event()
    # The timer thread needs this run's Prefect settings (API URL), which live in context vars.
    ctx = contextvars.copy_context()
    timer = threading.Timer(timeout_s, ctx.run, args=(_refuse_for_nobody, flow_run_id, refusal, expired))
    timer.daemon = True
    timer.start()
    try:
        answer = pause_flow_run(wait_for_input=form.with_initial_data(description=description or f"# {question}"),
                                timeout=timeout_s + SERVER_GRACE_S, poll_interval=POLL_S)
        fields = answer.model_dump()
    except FlowPauseTimeout:  # the timer could not reach the API either
        expired.set()
        fields = dict(refusal)
    finally:
        timer.cancel()
        timer.join(10)  # if it fired, let it finish so `expired` tells a timeout from a refusal
    decision = Decision(approved=bool(fields.get("approve")) and not expired.is_set(), timed_out=expired.is_set(),
                        flow_run_id=str(flow_run_id), answer=fields)
    _record(key, question, decision)
    return decision


def answer_markdown(question: str, decision: Decision) -> str:
    if decision.timed_out:
        outcome = "no answer before the deadline: refused"
    else:
        outcome = "approved" if decision.approved else "refused"
    fields = {k: v for k, v in decision.answer.items() if k != "approve"}
    return "\n".join([f"# Approval: {question}", f"**{outcome}** (flow run {decision.flow_run_id})",
                      *(f"- {k}: {json.dumps(v, default=str)}" for k, v in fields.items())])


def _record(key: str, question: str, decision: Decision) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(key=key, markdown=answer_markdown(question, decision))


# --- the approver's side: what a person does in the UI, for the demo and the tests ------------------------


def paused_run(flow_name: str, timeout_s: float = 60, poll_s: float = 0.2):
    """The first Paused run of the flow named `flow_name`, waiting up to `timeout_s` for one."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState,
                                                FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType

    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                         flow_run_filter=paused)
            if runs:
                return runs[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no paused {flow_name} run within {timeout_s:g} s")
            time.sleep(poll_s)


def answer_paused(api_url: str, flow_name: str, run_input: dict, timeout_s: float = 60) -> str:
    """Answer the paused run's form as the UI's Resume button does (POST /flow_runs/{id}/resume); its id.

    A run turns Paused a moment before its form's schema is saved (a resume in between is REJECTed,
    "Run input schema not found") and SQLite may answer 500/503 under load: both are retried for 10 s.
    A body the form refuses stays REJECT and raises ValueError with the server's reason.
    """
    import time

    import httpx

    run = paused_run(flow_name, timeout_s)
    for _ in range(50):
        response = httpx.post(f"{api_url}/flow_runs/{run.id}/resume", json={"run_input": run_input}, timeout=30)
        if response.status_code < 500 and response.json().get("status") != "REJECT":
            break
        time.sleep(0.2)
    said = response.json() if response.status_code < 500 else {"status": response.status_code}
    if said.get("status") != "ACCEPT":
        raise ValueError(f"the {flow_name} run {run.id} did not accept the answer: {said}")
    return str(run.id)
