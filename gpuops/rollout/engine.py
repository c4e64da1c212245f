"""The canary, whatever routes its traffic: deploy at 0%, then per step set the split, observe a
window, judge the gates; hold, ask, promote or roll back. Every phase is here; backends only route.

The state (gpuops.traffic.CanaryState) is recorded on the resource by each backend write, so a run
that dies anywhere is resumed by running it again, or undone by `restore_stable`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.input import RunInput

from gpuops import approvals, traffic
from gpuops.errors import BadInput, CheckFailed, CouldNotRun
from gpuops.rollout.backend import Live, TrafficBackend, Urls
from gpuops.rollout.compare import Tolerance, judge_side_by_side
from gpuops.rollout.report import history_markdown, history_row
from gpuops.traffic import CanaryState, Gates, Verdict, Window


@dataclass(frozen=True)
class Observation:
    """One window: the candidate, and stable measured with the same requests when compared."""

    candidate: Window
    stable: Window | None = None
    # Checks the observer ran beyond the gates (a host's mean-latency target): any reason here fails the window.
    failed: tuple[str, ...] = ()


Observe = Callable[[Urls, CanaryState], Observation]  # one window at `state.percent`
Notify = Callable[[str, str], None]  # (subject, body): the flow log, and a notification block if named


class CanaryApproval(RunInput):
    """The answer to: move the last traffic off the stable version onto the candidate?"""

    approve: bool = False
    note: str = ""


@dataclass(frozen=True)
class Plan:
    """What the operator asked for, already validated (gpuops.params.canary)."""

    steps: tuple[int, ...]
    gates: Gates
    window_s: float
    max_holds: int = 2
    approve_final: bool = False
    approval_timeout_s: int = 3600
    tolerance: Tolerance = Tolerance()  # how the candidate is judged against stable, when both are observed


def steps_for(backend: TrafficBackend, steps: tuple[int, ...]) -> tuple[int, ...]:
    """A switch-only backend gets one switch, gated the same way: the candidate is observed at 0%
    (directly, at its own URL) before all traffic moves, and again after."""
    return (0, 100) if backend.switch_only else steps


def judged(seen: Observation, plan: Plan) -> tuple[Verdict, dict]:
    """The gates and the side-by-side comparison, then the observer's own checks: any of those fails it."""
    verdict, figures = judge_side_by_side(seen.candidate, seen.stable, plan.gates, plan.tolerance)
    if seen.failed:
        earlier = verdict.reasons if verdict.outcome == "fail" else ()
        verdict = Verdict("fail", (*earlier, *seen.failed))
    return verdict, figures


def commands(backend: TrafficBackend) -> tuple[str, str]:
    """How an operator resumes and rolls back this backend's rollout (the canary's commands unless it says)."""
    return (getattr(backend, "resume_command", "gpuops canary"),
            getattr(backend, "rollback_command", "gpuops rollback"))


def promoted(live: Live) -> bool:
    state = live.state
    return bool(state and state.phase == traffic.PROMOTED and live.serving.get(state.candidate) == 100)


# Tasks hold backends (clients) and states, never service bodies in results: nothing is persisted.
@task(name="deploy-candidate", cache_policy=NO_CACHE, persist_result=False)
def deploy_candidate(backend: TrafficBackend, steps: tuple[int, ...], flow_run_id: str) -> CanaryState:
    return backend.deploy_candidate(steps, flow_run_id)


@task(name="set-split", cache_policy=NO_CACHE, persist_result=False)
def set_split(backend: TrafficBackend, state: CanaryState) -> None:
    backend.set_split(state)


@task(name="restore-stable-traffic", cache_policy=NO_CACHE, persist_result=False)
def restore_stable(backend: TrafficBackend, reasons: tuple[str, ...] = (), to: str | None = None) -> list[str]:
    return backend.restore_stable(reasons, to)


@task(name="observe-window", cache_policy=NO_CACHE, persist_result=False)
def observe_window(observe: Observe, urls: Urls, state: CanaryState) -> Observation:
    return observe(urls, state)


@dataclass
class Rollout:
    """One canary run: a backend, a plan, how to observe, whom to tell."""

    backend: TrafficBackend
    plan: Plan
    observe: Observe
    notify: Notify
    api: str  # how reports name the API (an emulator says so)
    flow_run_id: str = ""

    def run(self) -> dict:
        live = self.backend.read()
        state = live.state
        if promoted(live):
            return self._result("already-promoted", state, [])
        try:
            if state and state.live:
                get_run_logger().warning("resuming the canary of %s at step %d (%d%%)", state.candidate,
                                         state.step + 1, state.percent)
            else:
                state = deploy_candidate(self.backend, steps_for(self.backend, self.plan.steps), self.flow_run_id)
            return self._walk(state)
        except (CheckFailed, BadInput):
            raise  # a gate, a refusal or a foreign change: each already left traffic where it must be
        except Exception as exc:
            raise self._back_to_stable_after(exc) from exc

    # --- the state machine's loop --------------------------------------------------------

    def _walk(self, state: CanaryState) -> dict:
        history: list[dict] = []
        action = "advance" if state.step < 0 or state.phase == traffic.DEPLOYED else "observe"
        while True:
            if action == "advance":
                if traffic.needs_approval(state, self.plan.approve_final):
                    state = self._ask(state, history)
                state = traffic.advanced(state)
                set_split(self.backend, state)
            seen = observe_window(self.observe, self.backend.urls(state), state)
            verdict, figures = judged(seen, self.plan)
            history.append(history_row(state, seen.candidate, verdict, figures))
            state, action = traffic.after_verdict(state, verdict, self.plan.max_holds)
            if action == "rollback":
                self._roll_back(state, history, state.failed_checks)
            if action == "done":
                set_split(self.backend, state)  # records the promoted phase; the split is already 100%
                self._report(state, history, "promoted")
                self.notify(f"gpuops canary of {self.backend.target} promoted",
                            f"{state.candidate} serves 100%; stable {state.stable} kept reachable at 0%.")
                return self._result("promoted", state, history)
            if action == "observe":
                set_split(self.backend, state)  # records the hold on the resource
                self.notify(f"gpuops canary of {self.backend.target} holding",
                            f"{state.percent}% on {state.candidate}: {'; '.join(verdict.reasons)}")

    def _ask(self, state: CanaryState, history: list[dict]) -> CanaryState:
        """The approval gate before the last traffic leaves stable; no answer in time holds."""
        state = replace(state, phase=traffic.AWAITING_APPROVAL)
        set_split(self.backend, state)  # a crash while paused still shows what it waits for
        question = (f"move the last {100 - state.percent}% of {self.backend.target} off {state.stable} "
                    f"onto {state.candidate}?")
        decision = approvals.ask(question, CanaryApproval, self.plan.approval_timeout_s,
                                 example={"approve": True, "note": "checked the dashboards"},
                                 refusal={"approve": False, "note": "no answer"},
                                 key=f"canary-approval-{self.backend.target}")
        if decision.timed_out:
            self._stop(state, history, "held: approval timed out")
        if not decision.approved:
            self._roll_back(state, history, (f"approval refused: {decision.answer.get('note', '')}",))
        return state

    # --- endings -------------------------------------------------------------------------

    def _roll_back(self, state: CanaryState, history: list[dict], reasons: tuple[str, ...]) -> None:
        changes = restore_stable(self.backend, tuple(reasons))
        rolled_back_at = time.time()
        self._report(state, history, "rolled back")
        self.notify(f"gpuops canary of {self.backend.target} rolled back", "; ".join([*reasons, *changes]))
        raise CheckFailed(f"canary rolled back to {state.stable}: {'; '.join(reasons)}",
                          [{"history": history, "changes": changes, "rolled_back_at": rolled_back_at}])

    def _stop(self, state: CanaryState, history: list[dict], outcome: str) -> None:
        self._report(state, history, outcome)
        resume, roll_back = commands(self.backend)
        self.notify(f"gpuops canary of {self.backend.target} {outcome}",
                    f"{state.percent}% on {state.candidate}. Run `{resume}` again to ask again, or roll back.")
        raise CheckFailed(f"canary {outcome} at {state.percent}%: run `{resume}` again or `{roll_back}`.")

    def _back_to_stable_after(self, exc: Exception) -> CouldNotRun:
        """An unexpected error is handled like a failed gate: traffic goes back to stable, or the message
        says what is left and how to finish (the state on the resource lets a rollback or a re-run do it)."""
        target = self.backend.target
        what = type(exc).__name__ + (f": {str(exc).splitlines()[0][:200]}" if str(exc).strip() else "")
        try:
            recorded = self.backend.read().state
            if recorded is None or not recorded.live:
                # Failed before the candidate landed: this run changed nothing to undo.
                message = f"canary of {target} stopped on an unexpected error ({what}) before any change."
                self.notify(f"gpuops canary of {target} failed", message)
                return CouldNotRun(message)
            changes = restore_stable(self.backend, (f"unexpected error: {what}",))
        except Exception as again:
            resume, roll_back = commands(self.backend)
            message = (f"canary of {target} stopped on an unexpected error ({what}), and putting traffic back "
                       f"on stable failed too ({type(again).__name__}). The canary state on the resource says "
                       f"where it is: run `{roll_back}` once the API answers, or `{resume}` to resume.")
        else:
            message = (f"canary of {target} stopped on an unexpected error ({what}); traffic is back on the "
                       f"stable revision ({'; '.join(changes) or 'it already served 100%'}).")
        self.notify(f"gpuops canary of {target} failed", message)
        return CouldNotRun(message)

    def _report(self, state: CanaryState, history: list[dict], outcome: str) -> None:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(key=f"canary-{self.backend.target}",
                                 markdown=history_markdown(self.backend.target, self.api, state, history, outcome))

    def _result(self, outcome: str, state: CanaryState, history: list[dict]) -> dict:
        return {"service": self.backend.target, "api": self.api, "outcome": outcome, "stable": state.stable,
                "candidate": state.candidate, "history": history}
