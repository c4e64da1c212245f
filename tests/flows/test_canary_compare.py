"""The canary judges the candidate against stable in the same window, on the emulator running the sample app."""
import pytest

from flows.canary import canary_shift
from gpuops.demo_seed import release
from gpuops.errors import CheckFailed

from canary_helpers import FAST, P, R, S, split_of, stable_of


@pytest.fixture
def cr(prefect_api, gpu_cloud_run):
    from gpuops import cloudrun

    return cloudrun.connect()


def test_a_candidate_three_times_slower_fails_the_comparison_inside_the_fixed_p95_limit(cr, artifact_text):
    stable = stable_of(cr)
    release(P, R, S, bad=False, latency_ms=60)  # answers right, only later
    with pytest.raises(CheckFailed, match=r"x stable's") as failed:
        canary_shift(P, R, S, **FAST)
    [first] = failed.value.details[0]["history"]
    assert first["verdict"] == "fail" and first["percent"] == 20
    assert first["errors"] == 0 and first["p95_ms"] < 5000  # the fixed limits alone would have passed it
    assert first["median_ratio"] >= 3 and first["p_value"] < 0.05
    assert first["stable_requests"] == first["requests"] == FAST["probe_requests"]
    assert split_of(cr)[stable] == 100
    text = artifact_text(f"canary-{S}")
    assert "stable p95 ms" in text and "latency p-value" in text and str(first["p_value"]) in text


def test_without_the_comparison_the_same_slow_candidate_is_promoted_on_fixed_limits(cr):
    release(P, R, S, bad=False, latency_ms=60)
    result = canary_shift(P, R, S, **FAST, compare_with_stable=False)
    assert result["outcome"] == "promoted"
    assert all("stable_requests" not in h for h in result["history"])


def test_a_canary_of_a_service_requiring_an_id_token_fails_closed_without_one_and_passes_with_it(
        cr, gpu_cloud_run, key_file):
    from canary_helpers import NAME

    gpu_cloud_run.require_auth(NAME, id_token=True)  # the tag URLs too
    stable = stable_of(cr)

    with pytest.raises(CheckFailed) as failed:
        canary_shift(P, R, S, **FAST)
    [first] = failed.value.details[0]["history"]  # refused probes fail at once: no window can pass
    assert first["errors"] == first["requests"] and "requires a Google ID token" in first["source"]
    assert "requires a Google ID token" in str(failed.value)
    assert split_of(cr)[stable] == 100

    result = canary_shift(P, R, S, **FAST, id_token=True)
    assert result["outcome"] == "promoted"
    assert all("Google ID token" in h["source"] and "refused" not in h["source"] for h in result["history"])
