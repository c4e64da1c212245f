"""Emulated GPU hosts answer over real HTTP with the card they were given, or not at all."""
import json
import time
import urllib.error
import urllib.request

import pytest

from gpuops.emulator.gpu_hosts import SILENT, GpuHostFleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with GpuHostFleet(tmp_path_factory.mktemp("hosts")) as hosts:
        yield hosts


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=20) as answer:
        return json.loads(answer.read())


def test_a_host_probes_the_card_it_was_given(fleet):
    fleet.start("t4-host", "t4")
    assert fleet.wait_answering("t4-host")
    host = fleet.get("t4-host")
    assert get(host.url + "/healthz")["revision"] == "t4-host"
    report = get(host.url + "/gpu-probe?need_gib=12")
    assert [g["name"] for g in report["gpus"]] == ["Tesla T4"]
    assert report["verdict"] == "pass" and report["emulated"] is True


def test_the_8gb_rtx3060_fails_a_12_gib_need_through_the_probe(fleet):
    fleet.start("small-3060", "rtx3060_8gb")
    assert fleet.wait_answering("small-3060")
    report = get(fleet.get("small-3060").url + "/gpu-probe?need_gib=12")
    assert report["verdict"] == "fail" and report["exit_code"] == 1
    assert any("8 GB and 12 GB" in reason for reason in report["reasons"])


def test_a_bad_probe_question_is_refused(fleet):
    fleet.start("asks", "l4")
    assert fleet.wait_answering("asks")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(fleet.get("asks").url + "/gpu-probe?need_gib=lots", timeout=20)
    assert refused.value.code == 400


def test_a_silent_host_never_answers_and_stopping_frees_it(fleet):
    host = fleet.start("mute", "l4", behaviour=SILENT)
    assert not fleet.wait_answering("mute", timeout=0.5)
    with pytest.raises(OSError):
        urllib.request.urlopen(host.url + "/healthz", timeout=1)
    running = fleet.start("runs-a-script", "l4", command='echo "set up on $PORT"; exec sleep 30')
    deadline = time.monotonic() + 10
    while "set up on" not in running.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"set up on {running.port}" in running.log() and running.running
    assert fleet.stop("runs-a-script") and not running.running
