"""canary-shift and rollback on a real Prefect server and the emulator running the sample app."""
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from flows.canary import canary_shift
from flows.rollback import rollback
from gpuops import cloud_run_traffic, cloudrun, traffic
from gpuops.errors import BadInput, CheckFailed

from approvals import answer, paused_run
from canary_helpers import (FAST, NAME, P, R, S, assert_rolled_back_at_first_step, break_next_revision,
                            split_of, stable_of)


@pytest.fixture
def emu(prefect_api, gpu_cloud_run):
    return gpu_cloud_run


@pytest.fixture
def cr(emu):
    return cloudrun.connect()


def test_a_healthy_canary_ends_with_all_traffic_on_the_gpu_revision(cr):
    stable = stable_of(cr)
    result = canary_shift(P, R, S, **FAST)
    assert result["outcome"] == "promoted"
    assert [h["percent"] for h in result["history"]] == [20, 80, 100]
    assert split_of(cr) == {stable: 0, result["candidate"]: 100}
    state = cloud_run_traffic.state_of(cloudrun.get_service(cr, NAME))
    assert state.phase == traffic.PROMOTED
    gpu = cloudrun.get_revision(cr, f"{NAME}/revisions/{result['candidate']}")
    assert gpu["nodeSelector"]["accelerator"] == "nvidia-l4"
    # The service URL now reaches the GPU revision only.
    uri = cloudrun.get_service(cr, NAME)["uri"]
    seen = {httpx.get(f"{uri}/healthz").headers["x-gpuops-revision"] for _ in range(5)}
    assert seen == {result["candidate"]}
    assert canary_shift(P, R, S, **FAST)["outcome"] == "already-promoted"


def test_a_revision_failing_its_gate_at_20_percent_is_rolled_back_within_one_window(cr):
    stable = stable_of(cr)
    break_next_revision(cr, stable)
    with pytest.raises(CheckFailed, match="rolled back") as failed:
        canary_shift(P, R, S, **FAST)
    assert_rolled_back_at_first_step(cr, failed, stable)


def test_an_inconclusive_window_holds_and_never_promotes(cr, monkeypatch):
    # Probe figures always count every probe sent (a minimum above them is refused as bad input);
    # Cloud Monitoring can report fewer requests than a verdict needs.
    monkeypatch.delenv("GPUOPS_MONITORING_API", raising=False)
    stable = stable_of(cr)
    with pytest.raises(CheckFailed, match="inconclusive"):
        canary_shift(P, R, S, **{**FAST, "probe_requests": 2, "min_requests": 10}, max_holds=1,
                     metrics="cloud-monitoring")
    assert split_of(cr)[stable] == 100


def test_a_minimum_no_probe_window_can_reach_is_refused_before_any_change(cr, emu):
    with pytest.raises(BadInput, match=r"min_requests \(--min-requests\) 10 is more than the 2 probe requests"):
        canary_shift(P, R, S, **{**FAST, "probe_requests": 2, "min_requests": 10})
    assert not [r for r in emu.requests() if r.method != "GET"]


def kill_canary_at_first_step(cr, prefect_api) -> None:
    """Start a canary in another process and kill it (SIGKILL) once it has set its first split."""
    code = (f"from flows.canary import canary_shift; canary_shift({P!r}, {R!r}, {S!r}, window_s=30, "
            "probe_requests=30, min_requests=5)")
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, state = time.monotonic() + 90, None
        while time.monotonic() < deadline:
            state = cloud_run_traffic.state_of(cloudrun.get_service(cr, NAME))
            if state and state.step >= 0:
                break
            time.sleep(0.2)
        assert state and state.percent == 20, "the canary never reached its first step"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_killing_the_canary_mid_way_then_rollback_restores_stable_and_twice_is_a_no_op(cr, emu, prefect_api):
    stable = stable_of(cr)
    kill_canary_at_first_step(cr, prefect_api)
    assert split_of(cr)[stable] == 80
    first = rollback(P, R, S)
    assert first["changed"][0] == f"traffic: {stable} 80% -> 100%"
    assert first["changed"][1].startswith(f"template: back to the configuration of {stable}")
    assert split_of(cr)[stable] == 100
    template = cloudrun.get_service(cr, NAME)["template"]
    assert "nodeSelector" not in template  # the next ordinary deploy builds on stable, not on the GPU
    assert rollback(P, R, S)["changed"] == []


def test_a_killed_canary_resumes_where_it_was_without_redeploying(cr, emu, prefect_api):
    kill_canary_at_first_step(cr, prefect_api)
    before = cloud_run_traffic.state_of(cloudrun.get_service(cr, NAME))
    revisions = len(cloudrun.list_revisions(cr, NAME))
    result = canary_shift(P, R, S, **FAST)
    assert result["outcome"] == "promoted" and result["candidate"] == before.candidate
    assert [h["percent"] for h in result["history"]] == [20, 80, 100]  # re-observes 20%, then goes on
    assert len(cloudrun.list_revisions(cr, NAME)) == revisions


def test_a_canary_recorded_by_the_previous_gpuops_resumes(cr, emu):
    """The annotation as gpuops wrote it before the rollout engine (a literal, not today's code)."""
    from blocks.cloud_run_blocks import GpuProfile
    from gpuops.rollout.cloud_run import CloudRunBackend

    stable = stable_of(cr)
    candidate = CloudRunBackend(cr, P, R, S, GpuProfile().model_dump()).deploy_candidate((20, 80, 100), "").candidate
    old = ('{"candidate":"%s","failed_checks":[],"flow_run_id":"","holds":0,"phase":"progressing",'
           '"stable":"%s","step":0,"steps":[20,80,100],"updated":"2026-11-20T10:00:00Z"}' % (candidate, stable))
    cloudrun.update_traffic(cr, NAME, lambda _s: cloudrun.TrafficChange(
        cloud_run_traffic.split(stable, candidate, 20), {cloud_run_traffic.STATE_ANNOTATION: old}))
    revisions = len(cloudrun.list_revisions(cr, NAME))
    result = canary_shift(P, R, S, **FAST)
    assert result["outcome"] == "promoted" and result["candidate"] == candidate
    assert [h["percent"] for h in result["history"]] == [20, 80, 100]
    assert len(cloudrun.list_revisions(cr, NAME)) == revisions


def test_the_final_step_waits_for_an_approval_and_a_refusal_rolls_back(cr, prefect_api):
    stable = stable_of(cr)
    outcome = {}

    def run():
        try:
            outcome["result"] = canary_shift(P, R, S, **FAST, approve_final=True, approval_timeout_s=60)
        except CheckFailed as exc:
            outcome["error"] = str(exc)

    worker = threading.Thread(target=run)
    worker.start()
    paused_run("canary-shift")
    state = cloud_run_traffic.state_of(cloudrun.get_service(cr, NAME))
    assert (state.phase, state.percent) == (traffic.AWAITING_APPROVAL, 80)
    answer(prefect_api, "canary-shift", {"approve": False, "note": "not tonight"})
    worker.join(60)
    assert "not tonight" in outcome["error"]
    assert split_of(cr)[stable] == 100
