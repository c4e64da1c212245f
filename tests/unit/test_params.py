"""Each parameter's rule: bad input is refused naming the field, the flag and the fix."""
import pytest

from blocks.cloud_run_blocks import GpuProfile
from gpuops import params
from gpuops.errors import BadInput

CANARY = dict(steps_text="20,80,100", window_s=30, probe_requests=30, min_requests=20)


@pytest.mark.parametrize("change, field", [
    ({"steps_text": "a,b"}, "steps (--steps)"),
    ({"steps_text": "80,20,100"}, "steps (--steps)"),
    ({"window_s": -1}, "window_s (--window-s)"),
    ({"window_s": 0}, "window_s (--window-s)"),
    ({"window_s": float("nan")}, "window_s (--window-s)"),
    ({"probe_requests": -3}, "probe_requests (--probe-requests)"),
    ({"probe_requests": 0}, "probe_requests (--probe-requests)"),
    ({"min_requests": -1}, "min_requests (--min-requests)"),
    ({"min_requests": 0}, "min_requests (--min-requests)"),
    ({"min_requests": 2.5}, "min_requests (--min-requests)"),
    ({"min_requests": 31}, "min_requests (--min-requests)"),  # more than a window sends: could never pass
    ({"max_error_rate": 1.5}, "max_error_rate (--max-error-rate)"),
    ({"max_p95_ms": 0}, "max_p95_ms (--max-p95-ms)"),
    ({"max_holds": -1}, "max_holds (--max-holds)"),
    ({"metrics": "guess"}, "metrics (--metrics)"),
])
def test_a_bad_canary_request_names_the_field_and_the_flag(change, field):
    with pytest.raises(BadInput) as refused:
        params.canary(**{**CANARY, **change})
    assert str(refused.value).startswith(field)


def test_a_good_canary_request_comes_back_normalized():
    checked = params.canary(**{**CANARY, "window_s": "5", "probe_requests": "10", "min_requests": 10})
    assert checked["steps"] == (20, 80, 100) and checked["window_s"] == 5.0 and checked["probe_requests"] == 10


def test_cloud_monitoring_may_ask_for_more_requests_than_the_probe_sends():
    # Real traffic counts there too, so the minimum is not bounded by the probe's own requests.
    assert params.canary(**{**CANARY, "min_requests": 50, "metrics": "cloud-monitoring"})["min_requests"] == 50


@pytest.mark.parametrize("value", ["Bad_Name", "../x", "a b", "-x", "x-", "x" * 42, 7])
def test_a_prefix_that_cannot_name_cloud_run_resources_is_refused(value):
    with pytest.raises(BadInput, match=r"^prefix \(--prefix\)"):
        params.prefix(value)


def test_the_longest_prefix_leaves_room_for_the_cpu_job_suffix():
    assert params.prefix("x" * 41) == "x" * 41


@pytest.mark.parametrize("fields, name", [
    ({"cpu": "abc"}, "cpu"), ({"cpu": "0"}, "cpu"), ({"memory": "32Gb"}, "memory"), ({"memory": "-1Gi"}, "memory"),
    ({"max_instances": -5}, "max_instances"), ({"max_instances": 0}, "max_instances"),
    ({"min_instances": 4}, "min_instances"), ({"concurrency": 0}, "concurrency"),
    ({"timeout_seconds": 7200}, "timeout_seconds"),
])
def test_a_bad_gpu_profile_is_bad_input_not_a_failed_rule(fields, name):
    with pytest.raises(BadInput, match=rf"^{name} \("):
        params.gpu_profile(GpuProfile(**fields))


def test_the_default_gpu_profile_passes():
    params.gpu_profile(GpuProfile())


@pytest.mark.parametrize("kw, field", [({"min_vram_gib": -1}, "min_vram_gib"), ({"requests": 0}, "requests"),
                                       ({"timeout_s": 0}, "timeout_s"), ({"prefix_value": "UP"}, "prefix")])
def test_smoke_test_inputs(kw, field):
    with pytest.raises(BadInput, match=rf"^{field} \("):
        params.smoke_test(**kw)


def test_a_revision_name_is_checked_before_any_lookup():
    assert params.revision("to_revision", "svc-00001-abc") == "svc-00001-abc"
    with pytest.raises(BadInput, match=r"to_revision \(--to-revision\)"):
        params.revision("to_revision", "svc/../x")
