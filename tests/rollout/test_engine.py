"""The rollout engine with backends written here, in a few dozen lines: the same state machine, gates,
holds, approvals, crash-and-resume and rollback as the Cloud Run canary, whatever routes the traffic.
Runs as Prefect flows on the session's real Prefect server (the engine's steps are tasks)."""
from __future__ import annotations

from dataclasses import replace

import pytest
from prefect import flow

from gpuops import rollout, traffic
from gpuops.errors import CheckFailed, CouldNotRun
from gpuops.rollout.backend import Live, Urls
from gpuops.rollout.engine import Observation, Plan, Rollout
from gpuops.traffic import CanaryState, Gates, Window

GATES = Gates(max_error_rate=0.05, max_p95_ms=1000, min_requests=5)
PASS = Window(requests=10, errors=0, latencies_ms=(50.0,) * 10)
FAIL = Window(requests=10, errors=5, latencies_ms=(50.0,) * 10)
FEW = Window(requests=1, errors=0, latencies_ms=(50.0,))


class Crash(BaseException):
    """The process dying mid-run: not an error the engine may catch and handle."""


class MemoryBackend:
    """Two versions of a toy service; the state kept 'on the resource' as the same JSON."""

    kind, target, switch_only = "memory", "toy", False

    def __init__(self):
        self.split, self.recorded, self.deploys, self.writes = {"v1": 100}, None, 0, []
        self.fail_write: int | None = None  # raise on this write (0-based), once

    def read(self) -> Live:
        return Live(CanaryState.from_json(self.recorded), {k: v for k, v in self.split.items() if v})

    def deploy_candidate(self, steps, flow_run_id) -> CanaryState:
        self.deploys += 1
        state = CanaryState(stable="v1", candidate="v2", steps=steps, flow_run_id=flow_run_id)
        self.split, self.recorded = {"v1": 100, "v2": 0}, state.to_json()
        return state

    def set_split(self, state: CanaryState) -> None:
        if self.fail_write == len(self.writes):
            self.fail_write = None
            raise RuntimeError("the router went away")
        self.writes.append(state.percent)
        self.split = {state.stable: 100 - state.percent, state.candidate: state.percent}
        self.recorded = state.to_json()

    def restore_stable(self, reasons=(), to=None) -> list[str]:
        state = CanaryState.from_json(self.recorded)
        changes = [f"traffic: {state.stable} {self.split[state.stable]}% -> 100%"] if self.split[state.stable] != 100 else []
        self.split = {state.stable: 100, state.candidate: 0}
        self.recorded = replace(state, phase=traffic.ROLLED_BACK, failed_checks=tuple(reasons)).to_json()
        return changes

    def urls(self, state: CanaryState) -> Urls:
        return Urls(f"memory://{state.candidate}", f"memory://{state.stable}")


class SwitchBackend(MemoryBackend):
    """All or nothing, like an Elastic IP moving between two instances."""

    kind, switch_only = "switch", True

    def set_split(self, state: CanaryState) -> None:
        assert state.percent in (0, 100), f"a switch-only backend was asked for {state.percent}%"
        super().set_split(state)


class Script:
    """The windows the observer sees, in order; a Crash where the process dies."""

    def __init__(self, *windows):
        self.windows, self.seen = list(windows), []

    def __call__(self, urls: Urls, state: CanaryState) -> Observation:
        self.seen.append((urls.candidate, state.percent))
        window = self.windows.pop(0)
        if isinstance(window, BaseException):
            raise window
        return window if isinstance(window, Observation) else Observation(window)


@flow(name="toy-canary")
def toy_canary(backend, script, steps=(20, 80, 100), **plan) -> dict:
    told = []
    result = Rollout(backend, Plan(steps=steps, gates=GATES, window_s=0.1, **plan), observe=script,
                     notify=lambda subject, body: told.append(subject), api="memory").run()
    return {**result, "told": told}


@pytest.fixture(autouse=True)
def prefect(prefect_api):
    return prefect_api


def percents(result) -> list:
    return [(h["percent"], h["verdict"]) for h in result["history"]]


def test_a_healthy_rollout_walks_every_step_and_promotes():
    backend = MemoryBackend()
    result = toy_canary(backend, Script(PASS, PASS, PASS))
    assert result["outcome"] == "promoted" and percents(result) == [(20, "pass"), (80, "pass"), (100, "pass")]
    assert backend.writes == [20, 80, 100, 100] and backend.split == {"v1": 0, "v2": 100}
    assert CanaryState.from_json(backend.recorded).phase == traffic.PROMOTED
    assert toy_canary(backend, Script())["outcome"] == "already-promoted"  # a re-run changes nothing


def test_a_failed_gate_rolls_back_at_once():
    backend = MemoryBackend()
    with pytest.raises(CheckFailed, match="error rate") as failed:
        toy_canary(backend, Script(PASS, FAIL))
    assert [h["percent"] for h in failed.value.details[0]["history"]] == [20, 80]
    assert backend.split["v1"] == 100
    assert CanaryState.from_json(backend.recorded).phase == traffic.ROLLED_BACK


def test_an_inconclusive_window_holds_the_split_and_never_promotes_on_it():
    backend = MemoryBackend()
    result = toy_canary(backend, Script(FEW, PASS, PASS, PASS))
    assert percents(result) == [(20, "inconclusive"), (20, "pass"), (80, "pass"), (100, "pass")]
    assert backend.writes == [20, 20, 80, 100, 100]  # the hold is recorded on the resource
    assert "gpuops canary of toy holding" in result["told"]
    with pytest.raises(CheckFailed, match="still inconclusive after 2"):
        toy_canary(MemoryBackend(), Script(FEW, FEW, FEW))


def test_a_window_where_stable_fails_as_much_as_the_candidate_holds_instead_of_rolling_back():
    backend = MemoryBackend()
    result = toy_canary(backend, Script(Observation(FAIL, FAIL), PASS, PASS, PASS))
    assert percents(result)[:2] == [(20, "inconclusive"), (20, "pass")]
    assert "stable fails too" in result["history"][0]["reasons"][0]
    assert result["history"][0]["stable_errors"] == 5


def test_a_crashed_run_resumes_where_it_was_without_deploying_again():
    backend = MemoryBackend()
    with pytest.raises(Crash):
        toy_canary(backend, Script(PASS, Crash()))
    recorded = CanaryState.from_json(backend.recorded)
    assert (recorded.percent, recorded.live) == (80, True) and backend.split == {"v1": 20, "v2": 80}
    result = toy_canary(backend, Script(PASS, PASS))
    assert percents(result) == [(80, "pass"), (100, "pass")] and backend.deploys == 1


def test_an_unexpected_error_puts_traffic_back_on_stable_and_says_so():
    backend = MemoryBackend()
    backend.fail_write = 1  # the shift to 80%
    with pytest.raises(CouldNotRun, match="traffic is back on the stable revision"):
        toy_canary(backend, Script(PASS))
    assert backend.split["v1"] == 100


def test_a_switch_only_backend_gets_one_switch_behind_the_same_gates():
    backend = SwitchBackend()
    script = Script(PASS, PASS)
    result = toy_canary(backend, script, steps=(20, 80, 100))
    assert percents(result) == [(0, "pass"), (100, "pass")]  # observed directly before and after the switch
    assert backend.writes == [0, 100, 100] and backend.split["v2"] == 100
    assert script.seen[0] == ("memory://v2", 0)

    failing = SwitchBackend()
    with pytest.raises(CheckFailed, match="error rate"):
        toy_canary(failing, Script(FAIL))
    assert failing.writes == [0] and failing.split["v1"] == 100  # not one request was switched over


def test_an_approval_nobody_gives_holds_and_never_proceeds():
    backend = MemoryBackend()
    with pytest.raises(CheckFailed, match="held: approval timed out at 20%"):
        toy_canary(backend, Script(PASS), steps=(20, 100), approve_final=True, approval_timeout_s=2)
    assert backend.split == {"v1": 80, "v2": 20}
    assert CanaryState.from_json(backend.recorded).phase == traffic.AWAITING_APPROVAL


def test_backends_are_a_table_of_kinds():
    from gpuops.rollout.cloud_run import CloudRunBackend

    assert rollout.backend_class("cloud-run") is CloudRunBackend
    with pytest.raises(KeyError, match="registered: cloud-run"):
        rollout.backend_class("nginx")
