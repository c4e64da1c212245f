"""`gpuops emulate vast-api` as an operator runs it: a process of its own whose hosts stop with it."""
import os
import signal
import socket
import subprocess
import sys
import time

from gpuops.emulator.loopback_server import LOOPBACK

RUNNING_DE_RTX_3060 = 20981743  # machine 22106: boots and serves


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def answers(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=1).close()
        return True
    except OSError:
        return False


def test_sigterm_stops_the_stand_ins_hosts(monkeypatch):
    from gpuops import vast

    port, key = free_port(), "vast-sigterm-test-key"
    server = subprocess.Popen([sys.executable, "-c", f"from gpuops.emulator.vast_api import serve; serve({port}, "
                               f"{key!r})"], stderr=subprocess.PIPE, text=True)
    try:
        assert "listening on" in "".join(server.stderr.readline() for _ in range(2))
        monkeypatch.setenv("GPUOPS_VAST_API", f"http://{LOOPBACK}:{port}")
        monkeypatch.setenv("VAST_API_KEY", key)
        api = vast.connect()
        instance_id, _ = vast.create_instance(api, RUNNING_DE_RTX_3060, label="sigterm", image="x", env={},
                                              onstart="", disk_gb=10)
        deadline, host_port = time.monotonic() + 20, None
        while host_port is None and time.monotonic() < deadline:
            mapped = (vast.show_instance(api, instance_id).get("ports") or {}).get("8000/tcp")
            host_port = int(mapped[0]["HostPort"]) if mapped else None
            time.sleep(0.1)
        while not answers(host_port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert answers(host_port)
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) is not None
        assert not answers(host_port)  # the host stopped with the stand-in, not left behind
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGKILL)


def test_a_card_without_a_real_reading_is_refused_saying_which_cards_can_be_rented(stand_in):
    import pytest

    from gpuops import vast

    with pytest.raises(vast.VastRefused) as refused:
        vast.create_instance(vast.connect(), 20877444, label="rtx4090", image="x", env={}, onstart="", disk_gb=10)
    assert refused.value.status == 400 and "RTX 4090" in refused.value.msg
    assert "--gpu-name" in refused.value.msg and "'Tesla T4'" in refused.value.msg
