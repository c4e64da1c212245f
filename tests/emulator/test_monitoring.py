"""The Monitoring v3 emulation: requests the router served show up as Cloud Run request metrics."""
import time

import httpx
import pytest

from gpuops import cloud_run_traffic, cloudrun
from gpuops.emulator.monitoring_api import MONITORING_LABEL, rfc3339

P, R, S = "nca-toolkit-438301", "us-central1", "no-code-architects-toolkit"
NAME = cloudrun.service_name(P, R, S)
GENERATE = {"prompt": "t", "steps": 20}


def series_filter(metric: str, revision: str) -> str:
    return (f'metric.type = "run.googleapis.com/{metric}" AND resource.type = "cloud_run_revision" AND '
            f'resource.labels.service_name = "{S}" AND resource.labels.revision_name = "{revision}"')


def query(emu, metric: str, revision: str, start: float, **aggregation) -> httpx.Response:
    params = {"filter": series_filter(metric, revision), "interval.startTime": rfc3339(start),
              "interval.endTime": rfc3339(time.time()), "aggregation.alignmentPeriod": "60s", **aggregation}
    return httpx.get(f"{emu.url}/v3/projects/{P}/timeSeries", params=params, timeout=10)


@pytest.fixture
def revisions(gpu_cloud_run):
    """The seeded stable revision, and a slow failing one reachable at tag `bad` with 0% of the traffic."""
    cr = cloudrun.connect()
    service = cloudrun.get_service(cr, NAME)
    stable = cloudrun.short(service["latestReadyRevision"])
    template = service["template"]
    template["containers"][0]["env"] = [*template["containers"][0]["env"],
                                        {"name": "SAMPLE_APP_FAIL", "value": "generate"},
                                        {"name": "SAMPLE_APP_LATENCY_MS", "value": "120"}]
    targets = [{"type": cloud_run_traffic.REVISION_TYPE, "revision": stable, "percent": 100, "tag": "stable"},
               {"type": cloud_run_traffic.REVISION_TYPE, "revision": f"{S}-bad", "percent": 0, "tag": "bad"}]
    change = cloudrun.TrafficChange(targets, template={**template, "revision": f"{S}-bad"})
    cloudrun.update_traffic(cr, NAME, lambda _service: change)
    urls = {t["tag"]: t["uri"] for t in cloudrun.get_service(cr, NAME)["trafficStatuses"]}
    return {"stable": (stable, urls["stable"]), "bad": (f"{S}-bad", urls["bad"])}


def send(url: str, good: int, bad_body: int) -> None:
    with httpx.Client(timeout=20) as client:
        for _ in range(good):
            client.post(f"{url}/generate", json=GENERATE)
        for _ in range(bad_body):
            assert client.post(f"{url}/generate", json={"steps": 1}).status_code == 400


def test_served_requests_are_counted_per_class_and_revision_with_a_p95(gpu_cloud_run, revisions):
    emu = gpu_cloud_run
    start = time.time()
    (stable, stable_url), (bad, bad_url) = revisions["stable"], revisions["bad"]
    send(stable_url, good=6, bad_body=2)
    send(bad_url, good=3, bad_body=0)
    counts = {"aggregation.perSeriesAligner": "ALIGN_DELTA", "aggregation.crossSeriesReducer": "REDUCE_SUM",
              "aggregation.groupByFields": "metric.labels.response_code_class"}
    answer = query(emu, "request_count", stable, start, **counts)
    assert answer.status_code == 200, answer.text
    series = answer.json()["timeSeries"]
    by_class = {s["metric"]["labels"]["response_code_class"]: s for s in series}
    assert {c: s["points"][0]["value"] for c, s in by_class.items()} == {
        "2xx": {"int64Value": "6"}, "4xx": {"int64Value": "2"}}  # int64 is a string in Google's JSON
    one = by_class["2xx"]
    assert (one["metricKind"], one["valueType"], one["resource"]) == (
        "DELTA", "INT64", {"type": "cloud_run_revision", "labels": {"project_id": P}})
    bad_counts = query(emu, "request_count", bad, start, **counts).json()["timeSeries"]
    assert [(s["metric"]["labels"], s["points"][0]["value"]) for s in bad_counts] == [
        ({"response_code_class": "5xx"}, {"int64Value": "3"})]

    latencies = query(emu, "request_latencies", bad, start,
                      **{"aggregation.perSeriesAligner": "ALIGN_PERCENTILE_95"})
    [slow] = latencies.json()["timeSeries"]
    assert slow["resource"]["labels"] == {"project_id": P, "service_name": S, "revision_name": bad, "location": R}
    assert slow["metric"]["labels"] == {"response_code": "500", "response_code_class": "5xx"}
    assert (slow["metricKind"], slow["valueType"]) == ("GAUGE", "DOUBLE")
    assert 120 <= slow["points"][0]["value"]["doubleValue"] < 5000  # the app sleeps 120 ms per request


def test_nothing_served_in_the_interval_is_an_empty_answer(gpu_cloud_run, revisions):
    stable, url = revisions["stable"]
    send(url, good=1, bad_body=0)
    answer = query(gpu_cloud_run, "request_count", stable, time.time(),
                   **{"aggregation.perSeriesAligner": "ALIGN_DELTA"})
    assert answer.status_code == 200 and answer.json() == {}


@pytest.mark.parametrize("params, message", [
    ({"filter": 'metric.type = "run.googleapis.com/request_count" OR resource.type = "cloud_run_revision"'},
     "Field filter had an invalid value"),
    ({"filter": 'metric.type = "run.googleapis.com/request_count" AND resource.type = "gce_instance"'},
     "resource.type must be"),
    ({"filter": 'metric.type = "run.googleapis.com/request_count" AND resource.type = "cloud_run_revision" '
                'AND resource.labels.service_name = "a" AND resource.labels.service_name = "b"'},
     "Field filter had an invalid value"),
    ({"aggregation.alignmentPeriod": "30s"}, "at least 60 seconds"),
    ({"aggregation.perSeriesAligner": "ALIGN_PERCENTILE_95"}, "not supported"),
    ({"interval.endTime": "yesterday"}, "RFC 3339"),
    ({"orderBy": "x"}, "Unknown name"),
])
def test_a_request_outside_the_emulated_subset_is_a_400_in_googles_shape(cloudrun_emulator, params, message):
    base = {"filter": 'metric.type = "run.googleapis.com/request_count" AND resource.type = "cloud_run_revision"',
            "interval.endTime": rfc3339(time.time()), "aggregation.alignmentPeriod": "60s",
            "aggregation.perSeriesAligner": "ALIGN_DELTA"}
    answer = httpx.get(f"{cloudrun_emulator.url}/v3/projects/{P}/timeSeries", params={**base, **params})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT") and message in error["message"]


def test_other_monitoring_paths_say_they_are_not_served_by_an_emulation(cloudrun_emulator):
    answer = httpx.get(f"{cloudrun_emulator.url}/v3/projects/{P}/metricDescriptors")
    assert answer.status_code == 404 and MONITORING_LABEL in answer.json()["error"]["message"]
