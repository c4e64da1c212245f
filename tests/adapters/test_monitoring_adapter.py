"""The Cloud Monitoring adapter: its queries, and its reading of the emulation's real answers."""
import time

import pytest
from google.api_core import exceptions as gexc

from gpuops import monitoring
from gpuops.emulator.monitoring_api import Served
from gpuops.monitoring import CloudMonitoringRequests
from gpuops.traffic import Gates, judge

P, R, S, REV = "nca-toolkit-438301", "us-central1", "svc", "svc-gpu-abc123"


@pytest.fixture
def emu(fresh_cloudrun_emulator, monkeypatch):
    monkeypatch.delenv(monitoring.ENDPOINT_ENV, raising=False)
    return fresh_cloudrun_emulator


def serve(emu, status: int, latency_ms: float, revision: str = REV) -> None:
    """What the router records for a request it served (no process needed here)."""
    emu.state.served.add(Served(time.time(), P, R, S, revision, status, latency_ms))


def test_the_count_query_sums_the_revision_per_response_class_over_one_period():
    params = monitoring.count_params(S, REV, 1_700_000_000.0, 1_700_000_030.5)
    assert params == [
        ("filter", 'metric.type = "run.googleapis.com/request_count" AND resource.type = "cloud_run_revision" '
                   f'AND resource.labels.service_name = "{S}" AND resource.labels.revision_name = "{REV}"'),
        ("interval.startTime", "2023-11-14T22:13:20.000000Z"), ("interval.endTime", "2023-11-14T22:13:50.500000Z"),
        ("aggregation.alignmentPeriod", "60s"),  # Google's minimum, though the window is shorter
        ("aggregation.perSeriesAligner", "ALIGN_DELTA"), ("aggregation.crossSeriesReducer", "REDUCE_SUM"),
        ("aggregation.groupByFields", "metric.labels.response_code_class"),
    ]
    latency = dict(monitoring.latency_params(S, REV, 0.0, 300.2))
    assert latency["aggregation.alignmentPeriod"] == "301s" and "aggregation.crossSeriesReducer" not in latency
    assert latency["aggregation.perSeriesAligner"] == "ALIGN_PERCENTILE_95"


def test_a_window_reads_counts_and_the_worst_p95_of_the_candidate_only(emu):
    serve(emu, 500, 9000.0)  # before the window: not in it

    def traffic(url, seconds):
        assert (url, seconds) == ("http://tag", 0.2)
        for ms in range(10, 100, 10):
            serve(emu, 200, float(ms))
        serve(emu, 503, 700.0)
        serve(emu, 500, 9000.0, revision="svc-00001-stable")  # another revision

    source = CloudMonitoringRequests(P, S, endpoint=emu.url, traffic=traffic)
    started = time.monotonic()
    window = source.observe("http://tag", 0.2, Gates(), revision=REV)
    assert time.monotonic() - started >= 0.2  # the window is waited out
    assert (window.requests, window.errors, window.p95_ms, window.latencies_ms) == (10, 1, 700.0, ())
    assert window.source.startswith(f"Cloud Monitoring request_count and request_latencies of {REV}")
    assert f"emulation at {emu.url}, not Google" in window.source
    assert judge(window, Gates(max_error_rate=0.2, max_p95_ms=500, min_requests=5)).reasons == (
        "p95 latency 700 ms over 500 ms",)


def test_transient_errors_are_retried_and_a_bad_query_is_not(emu):
    emu.add_fault(method="GET", path="^/v3/", status=503, times=2)
    source = CloudMonitoringRequests(P, S, endpoint=emu.url)
    now = time.time()
    assert source.list_time_series(monitoring.count_params(S, REV, now - 1, now)) == {"timeSeries": []}
    assert [r.status for r in emu.requests("GET", "^/v3/")] == [503, 503, 200]
    bad = [("filter", 'metric.type = "run.googleapis.com/request_count"'), ("interval.endTime", "now")]
    with pytest.raises(gexc.BadRequest):
        source.list_time_series(bad)
    assert len(emu.requests("GET", "^/v3/")) == 4


def test_the_endpoint_env_wins_and_google_is_the_default(monkeypatch):
    monkeypatch.delenv(monitoring.ENDPOINT_ENV, raising=False)
    assert CloudMonitoringRequests(P, S).url == "https://monitoring.googleapis.com"
    assert not CloudMonitoringRequests(P, S).is_emulation
    monkeypatch.setenv(monitoring.ENDPOINT_ENV, "http://127.0.0.1:9/")
    assert CloudMonitoringRequests(P, S, endpoint="http://127.0.0.1:8").url == "http://127.0.0.1:9"


def test_without_the_revision_there_is_nothing_to_observe():
    with pytest.raises(ValueError, match="revision"):
        CloudMonitoringRequests(P, S).observe("http://tag", 0, Gates())
