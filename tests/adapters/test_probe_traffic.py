"""Probe traffic over real HTTP against the sample app: what counts as an error, and stopping early."""
import threading
from http.server import ThreadingHTTPServer

import pytest

from gpuops.sample_app import Handler
from gpuops.traffic import Gates

GATES = Gates(max_error_rate=0.1, max_p95_ms=5000, min_requests=5)


@pytest.fixture(scope="module")
def app_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_good_generations_pass_with_their_latencies(app_url):
    from gpuops.probe_traffic import ProbeTraffic

    window = ProbeTraffic(requests=10, body={"prompt": "p", "steps": 10}).observe(app_url, 0.1, GATES)
    assert (window.requests, window.errors, len(window.latencies_ms)) == (10, 0, 10)


def test_a_4xx_answer_is_an_error_not_a_pass_and_the_window_stops_once_doomed(app_url):
    from gpuops.probe_traffic import ProbeTraffic

    window = ProbeTraffic(requests=10, body={"steps": 10}).observe(app_url, 0.1, GATES)  # no prompt: 400
    assert window.errors == window.requests == 2  # 10% of 10 allows one error; the second dooms it
    assert window.first_error_at is not None


def test_a_refused_connection_is_an_error():
    from gpuops.probe_traffic import ProbeTraffic

    window = ProbeTraffic(requests=3, timeout_s=2, stop_early=False).observe("http://127.0.0.1:9", 0.0, GATES)
    assert (window.requests, window.errors) == (3, 3)


@pytest.fixture(scope="module")
def slow_app_url():
    """The sample app as its own process, 80 ms slower per request (SAMPLE_APP_LATENCY_MS)."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SAMPLE_APP_LATENCY_MS": "80", "PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "gpuops_cli.sample_app_cli"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def test_a_pair_window_sends_the_same_requests_to_both_sides_and_tells_the_slow_one(app_url, slow_app_url):
    from gpuops.probe_traffic import ProbeTraffic
    from gpuops.rollout.compare import Tolerance, judge_side_by_side

    candidate, stable = ProbeTraffic(requests=12, body={"prompt": "p", "steps": 10}).observe_pair(
        slow_app_url, app_url, 0.1, GATES)
    assert (candidate.requests, stable.requests) == (12, 12) and candidate.errors == stable.errors == 0
    assert min(candidate.latencies_ms) >= 80 > sorted(stable.latencies_ms)[6]
    assert slow_app_url in candidate.source and app_url in stable.source
    verdict, figures = judge_side_by_side(candidate, stable, GATES, Tolerance(latency_ratio=1.5))
    assert verdict.outcome == "fail" and figures["p_value"] < 0.01
