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
