"""Probe traffic to a protected tag URL on the emulator: refused without credentials (and says which), passes with them."""

import pytest

from gpuops import cloudrun
from gpuops.probe_auth import HeaderSecret, ProbeAuth
from gpuops.probe_traffic import ProbeTraffic
from gpuops.traffic import Gates

P, R, S = "nca-toolkit-438301", "us-central1", "no-code-architects-toolkit"
NAME = cloudrun.service_name(P, R, S)
GATES = Gates(max_error_rate=0.1, max_p95_ms=5000, min_requests=3)
TAG = "gpu-canary"


@pytest.fixture
def tag_url(gpu_cloud_run, key_file, monkeypatch) -> str:
    """The seeded service's revision under a tag, its URLs requiring an ID token and an API key."""
    cr = cloudrun.connect(gpu_cloud_run.url)
    revision = cloudrun.short(cloudrun.get_service(cr, NAME)["latestReadyRevision"])
    split = [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": revision, "percent": 100, "tag": TAG}]
    service = cloudrun.update_traffic(cr, NAME, lambda _service: cloudrun.TrafficChange(split))
    monkeypatch.setenv("CANARY_API_KEY", "planted-canary-key")
    gpu_cloud_run.require_auth(NAME, id_token=True, header="X-API-Key", value="planted-canary-key")
    return next(t["uri"] for t in service["trafficStatuses"] if t.get("tag") == TAG)


def probe(auth=None) -> ProbeTraffic:
    return ProbeTraffic(requests=4, body={"prompt": "p", "steps": 10}, stop_early=False, auth=auth)


def test_without_credentials_every_probe_fails_and_the_window_says_an_id_token_is_missing(tag_url):
    window = probe().observe(tag_url, 0.0, GATES)
    assert (window.requests, window.errors) == (4, 4)
    assert "requires a Google ID token" in window.source and "--id-token" in window.source


def test_with_a_token_but_no_key_the_window_says_the_key_header_is_missing(tag_url):
    window = probe(ProbeAuth(id_token=True)).observe(tag_url, 0.0, GATES)
    assert window.errors == 4 and "X-API-Key" in window.source and "--api-key-secret" in window.source


def test_with_both_credentials_the_tag_url_answers_and_no_value_is_in_the_window(tag_url):
    auth = ProbeAuth(id_token=True, api_key=HeaderSecret(env_var="CANARY_API_KEY"))
    window = probe(auth).observe(tag_url, 0.0, GATES)
    assert (window.requests, window.errors) == (4, 0)
    assert "planted" not in repr(window) and "CANARY_API_KEY" in window.source
