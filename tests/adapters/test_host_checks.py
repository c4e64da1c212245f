"""Host checks over real HTTP against emulated GPU hosts: answering, latency, the probe, a real generation."""
import pytest

from gpuops.emulator.gpu_hosts import SILENT, GpuHostFleet
from gpuops.host_checks import HostClient, Latency, judge_latency


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with GpuHostFleet(tmp_path_factory.mktemp("hosts")) as hosts:
        yield hosts


def test_a_working_t4_host_answers_probes_and_generates(fleet):
    host = fleet.start("t4", "t4")
    with HostClient(host.url) as client:
        assert client.wait_answering(15) is not None
        latency = client.latency()
        assert len(latency.samples_ms) == 5 and latency.all_ok
        assert latency.min_ms <= latency.mean_ms <= latency.max_ms
        report = client.probe(need_gib=12)
        assert report["verdict"] == "pass" and report["gpus"][0]["memory_total_mib"] == 15360
        generation = client.generate("a lighthouse", 10)
        assert generation.ok and len(generation.output) == 64


def test_health_passing_while_generation_fails_is_caught(fleet):
    host = fleet.start("broken-worker", "l4", env={"SAMPLE_APP_FAIL": "generate"})
    with HostClient(host.url) as client:
        assert client.wait_answering(15) is not None and client.latency(2).all_ok
        generation = client.generate("a lighthouse", 10)
    assert not generation.ok and generation.status == 500 and "SAMPLE_APP_FAIL" in generation.error


def test_a_silent_host_is_given_up_within_the_bound(fleet):
    host = fleet.start("mute", "l4", behaviour=SILENT)
    with HostClient(host.url, timeout_s=0.5) as client:
        assert client.wait_answering(1.2) is None
        latency = client.latency(2)
    assert latency.statuses == (599, 599) and not latency.all_ok


def test_latency_is_judged_on_the_mean_against_the_target():
    fast = Latency("http://h/healthz", (10.0, 12.0, 60.0, 11.0, 12.0), (200,) * 5)
    assert fast.mean_ms == 21.0 and judge_latency(fast, 50) == []
    slow = Latency("http://h/healthz", (80.0, 90.0, 70.0, 60.0, 100.0), (200,) * 5)
    assert "mean 80.0 ms" in judge_latency(slow, 50)[0]
    failing = Latency("http://h/healthz", (1.0,), (503,))
    assert "every sample must be 2xx" in judge_latency(failing, 50)[0]
    with pytest.raises(ValueError):
        judge_latency(fast, 0)
