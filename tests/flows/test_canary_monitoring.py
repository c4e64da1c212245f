"""canary-shift judged on Cloud Monitoring figures (the emulator's emulation of them), on a real Prefect server."""
import pytest

from flows.canary import canary_shift
from gpuops import cloud_run_traffic, cloudrun
from gpuops.errors import BadInput, CheckFailed

from canary_helpers import (FAST, NAME, P, R, S, assert_rolled_back_at_first_step, break_next_revision, split_of,
                            stable_of)

MONITORED = {**FAST, "metrics": "cloud-monitoring"}


@pytest.fixture
def cr(prefect_api, gpu_cloud_run, monkeypatch):
    monkeypatch.delenv("GPUOPS_MONITORING_API", raising=False)  # the flow finds the emulation by itself
    return cloudrun.connect()


def monitoring_queries(emu) -> list[str]:
    return [r.query for r in emu.requests("GET", r"^/v3/projects/.*/timeSeries$")]


def test_a_healthy_release_is_promoted_on_monitoring_figures(cr, gpu_cloud_run):
    stable = stable_of(cr)
    result = canary_shift(P, R, S, **MONITORED)
    assert result["outcome"] == "promoted"
    assert [(h["percent"], h["verdict"]) for h in result["history"]] == [(20, "pass"), (80, "pass"), (100, "pass")]
    assert split_of(cr) == {stable: 0, result["candidate"]: 100}
    for h in result["history"]:
        assert h["source"].startswith("Cloud Monitoring") and "emulation" in h["source"]
        assert h["requests"] == FAST["probe_requests"] and h["p95_ms"] is not None
    queries = monitoring_queries(gpu_cloud_run)
    assert len(queries) == 6  # request_count and request_latencies per window
    assert all(f'resource.labels.revision_name = "{result["candidate"]}"' in q for q in queries)


def test_a_bad_release_is_rolled_back_at_20_percent_on_monitoring_figures(cr):
    stable = stable_of(cr)
    break_next_revision(cr, stable)
    with pytest.raises(CheckFailed, match="rolled back") as failed:
        canary_shift(P, R, S, **MONITORED)
    history = assert_rolled_back_at_first_step(cr, failed, stable)
    assert history[0]["source"].startswith("Cloud Monitoring") and history[0]["errors"] >= 1


def test_an_unknown_metrics_source_is_refused_before_any_change(cr, gpu_cloud_run):
    revisions = len(cloudrun.list_revisions(cr, NAME))
    with pytest.raises(BadInput, match=r"metrics \(--metrics\) 'datadog' is not one of probe, cloud-monitoring"):
        canary_shift(P, R, S, **{**FAST, "metrics": "datadog"})
    assert len(cloudrun.list_revisions(cr, NAME)) == revisions
    assert cloud_run_traffic.state_of(cloudrun.get_service(cr, NAME)) is None
