"""The health latency check's warm-up over real HTTP: a cold first answer is not judged as the app's latency."""
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gpuops.host_checks import HostClient, judge_latency

COLD_S = 0.4  # the first answer after start: a lazy import, a cold cache


class ColdFirst(BaseHTTPRequestHandler):
    served = 0

    def do_GET(self):
        type(self).served += 1
        if type(self).served == 1:
            time.sleep(COLD_S)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def cold_host(monkeypatch):
    monkeypatch.delenv("GPUOPS_HOST_PROXY", raising=False)
    ColdFirst.served = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), ColdFirst)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_without_a_warm_up_the_cold_first_answer_fails_the_target(cold_host):
    with HostClient(cold_host) as client:
        latency = client.latency(5)
    assert latency.max_ms >= COLD_S * 1000 and judge_latency(latency, 50)
    assert "warm-up" not in latency.how()


def test_the_warm_up_request_is_sent_first_and_not_measured(cold_host):
    with HostClient(cold_host) as client:
        latency = client.latency(5, warmup=True)
    assert ColdFirst.served == 6 and latency.max_ms < COLD_S * 1000
    assert "after one unmeasured warm-up request" in latency.how()
