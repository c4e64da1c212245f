"""The canary state machine, splits and gates, on plain data."""
import pytest

from gpuops import cloud_run_traffic, traffic
from gpuops.traffic import CanaryState, Gates, Window

GATES = Gates(max_error_rate=0.05, max_p95_ms=1000, min_requests=10)


def state(**kw):
    return CanaryState(stable="svc-00001-abc", candidate="svc-gpu-1", steps=(20, 80, 100), **kw)


def test_steps_parse_and_bad_steps_say_how_to_write_them():
    assert traffic.parse_steps("20,80,100") == (20, 80, 100)
    for bad in ("20,80", "80,20,100", "0,100", "a,b", "20,20,100"):
        with pytest.raises(ValueError, match="20,80,100"):
            traffic.parse_steps(bad)


def test_split_pins_both_revisions_by_name_with_tags():
    assert cloud_run_traffic.split("a", "b", 20) == [
        {"type": cloud_run_traffic.REVISION_TYPE, "revision": "a", "percent": 80, "tag": "stable"},
        {"type": cloud_run_traffic.REVISION_TYPE, "revision": "b", "percent": 20, "tag": "gpu-canary"},
    ]


def test_all_to_keeps_other_tags_reachable_at_zero():
    targets = cloud_run_traffic.split("a", "b", 80)
    assert cloud_run_traffic.all_to("a", targets) == [
        {"type": cloud_run_traffic.REVISION_TYPE, "revision": "a", "percent": 100, "tag": "stable"},
        {"type": cloud_run_traffic.REVISION_TYPE, "revision": "b", "percent": 0, "tag": "gpu-canary"},
    ]


def test_gate_verdicts():
    ok = Window(requests=20, errors=0, latencies_ms=tuple([100.0] * 20))
    assert traffic.judge(ok, GATES).outcome == "pass"
    errors = Window(requests=20, errors=2, latencies_ms=tuple([100.0] * 20))
    assert traffic.judge(errors, GATES).outcome == "fail"
    slow = Window(requests=20, errors=0, latencies_ms=tuple([100.0] * 18 + [5000.0] * 2))
    assert "p95" in traffic.judge(slow, GATES).reasons[0]
    few = Window(requests=3, errors=0, latencies_ms=(10.0, 10.0, 10.0))
    assert traffic.judge(few, GATES).outcome == "inconclusive"


def test_a_p95_reported_by_the_source_is_judged_when_there_are_no_latencies():
    reported = Window(requests=20, errors=0, reported_p95_ms=2500.0)
    assert reported.p95_ms == 2500.0 and traffic.judge(reported, GATES).outcome == "fail"
    assert Window(requests=20, errors=0, latencies_ms=(10.0,), reported_p95_ms=2500.0).p95_ms == 10.0


def test_few_requests_that_all_fail_is_still_a_failure():
    assert traffic.judge(Window(requests=3, errors=3), GATES).outcome == "fail"


def test_percentile_is_a_latency_a_request_really_had():
    assert traffic.percentile([1, 2, 3, 4, 100], 95) == 100
    assert traffic.percentile(list(range(1, 101)), 95) == 95
    assert traffic.percentile([], 95) is None


def test_state_machine_advances_holds_rolls_back_and_finishes():
    s = traffic.advanced(state())
    assert (s.step, s.percent) == (0, 20)
    passed = traffic.Verdict("pass", ())
    nxt, action = traffic.after_verdict(s, passed, max_holds=2)
    assert action == "advance"
    held, action = traffic.after_verdict(s, traffic.Verdict("inconclusive", ("few",)), max_holds=2)
    assert action == "observe" and held.phase == traffic.HOLDING and held.percent == 20
    held2, _ = traffic.after_verdict(held, traffic.Verdict("inconclusive", ("few",)), max_holds=2)
    gone, action = traffic.after_verdict(held2, traffic.Verdict("inconclusive", ("few",)), max_holds=2)
    assert action == "rollback" and gone.phase == traffic.ROLLED_BACK and "inconclusive" in gone.failed_checks[-1]
    failed, action = traffic.after_verdict(s, traffic.Verdict("fail", ("errors",)), max_holds=2)
    assert action == "rollback" and failed.failed_checks == ("errors",)
    last = traffic.advanced(traffic.advanced(s))
    assert traffic.after_verdict(last, passed, max_holds=2)[1] == "done"


def test_state_round_trips_through_the_service_annotation():
    s = traffic.advanced(state(failed_checks=("x",)))
    service = {"annotations": {cloud_run_traffic.STATE_ANNOTATION: s.to_json()}}
    assert cloud_run_traffic.state_of(service) == s
    assert cloud_run_traffic.state_of({"annotations": {}}) is None


def test_approval_stands_before_the_last_step_only():
    at_20 = traffic.advanced(state())
    at_80 = traffic.advanced(at_20)
    assert not traffic.needs_approval(at_20, True)
    assert traffic.needs_approval(at_80, True) and not traffic.needs_approval(at_80, False)


def test_serving_percent_reads_latest_and_named_targets():
    service = {"latestReadyRevision": "p/revisions/b", "trafficStatuses": [
        {"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 30},
        {"revision": "a", "percent": 70}]}
    assert cloud_run_traffic.serving_percent(service, "b") == 30 and cloud_run_traffic.serving_percent(service, "a") == 70


def test_a_window_that_saw_nothing_never_passes_even_with_a_zero_minimum():
    verdict = traffic.judge(Window(requests=0, errors=0), Gates(min_requests=0))
    assert verdict.outcome == "inconclusive"


def test_a_pass_without_latencies_says_p95_was_not_measured():
    verdict = traffic.judge(Window(requests=20, errors=0), GATES)
    assert verdict.outcome == "pass" and "p95 not measured" in verdict.reasons[0]


def _service(shares: dict, template_revision="svc-gpu-1", canary=None):
    annotations = {cloud_run_traffic.STATE_ANNOTATION: (canary or state()).to_json()}
    return {"annotations": annotations, "template": {"revision": template_revision},
            "trafficStatuses": [{"revision": r, "percent": p} for r, p in shares.items()]}


def test_a_canary_sees_no_interference_on_what_it_wrote():
    assert cloud_run_traffic.interference(_service({"svc-00001-abc": 80, "svc-gpu-1": 20}), state(step=0)) is None


def test_a_deploy_between_steps_is_interference():
    deployed = _service({"svc-00002-new": 100}, template_revision="svc-00002-new")
    assert "template" in cloud_run_traffic.interference(deployed, state())
    moved = _service({"svc-00001-abc": 50, "svc-00009-x": 50})
    assert "svc-00009-x serves 50%" in cloud_run_traffic.interference(moved, state())
    other = _service({"svc-00001-abc": 100}, canary=CanaryState(stable="a", candidate="b", steps=(100,)))
    assert "names other revisions" in cloud_run_traffic.interference(other, state())


def test_drift_since_snapshot_names_generation_revision_and_traffic():
    snapshot = {"generation": "1", "revision": "svc-00001-abc",
                "traffic": [{"revision": "svc-00001-abc", "percent": 100}]}
    same = {"generation": "1", "latestReadyRevision": "p/svc-00001-abc",
            "trafficStatuses": [{"revision": "svc-00001-abc", "percent": 100}]}
    assert cloud_run_traffic.drift_since_snapshot(same, snapshot) == []
    moved = {"generation": "2", "latestReadyRevision": "p/svc-00002-def",
             "trafficStatuses": [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}]}
    drift = cloud_run_traffic.drift_since_snapshot(moved, snapshot)
    assert drift == ["generation 1 -> 2", "latest ready revision svc-00001-abc -> svc-00002-def",
                     "traffic svc-00001-abc 100% -> svc-00002-def 100%"]


def test_probes_refused_for_credentials_fail_at_once_naming_the_credential():
    refused = Window(requests=2, errors=2, refused="it requires header X-API-Key: pass --api-key-secret")
    verdict = traffic.judge(refused, GATES)
    assert verdict.outcome == "fail" and "X-API-Key" in verdict.reasons[0]
