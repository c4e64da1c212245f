"""Emulated GPU hosts: local processes on 127.0.0.1, each with a recorded card's nvidia-smi on its PATH.

The stand-ins for rented and launched machines (vast.ai instances, EC2 instances) start one host per
instance. A host runs the sample app (health, a real generation, the project's GPU probe at
`/gpu-probe`) or a given shell command (a vast.ai on-start script) with `$PORT` set, so the flows reach
it over real HTTP exactly as they would reach a machine: only the address differs.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from gpuops.emulator.fake_nvidia_smi import emulated_gpu_env, install_fake_nvidia_smi, recorded_reading
from gpuops.emulator.loopback_server import LOOPBACK

SAMPLE_APP = [sys.executable, "-m", "gpuops_cli.sample_app_cli"]
STOP_GRACE_S = 2.0
# Whatever answers SSH on a real host answers nothing here: a silent host is one that never starts.
SILENT = "silent"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def card_reading(card: str | None) -> str:
    """A recorded reading by card name (`t4`, `rtx3060_8gb`, ...); None: a host with no GPU."""
    return recorded_reading(card) if card else ""


@dataclass
class Host:
    """One emulated machine: its address, its card, its process and its console log."""

    host_id: str
    card: str | None
    port: int
    workdir: Path
    proc: subprocess.Popen | None = None
    behaviour: str = ""
    started_at: float = field(default_factory=time.time)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "console.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class GpuHostFleet:
    """Start, find and stop emulated hosts; thread-safe (stand-ins serve requests on threads)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root or tempfile.mkdtemp(prefix="gpuops-hosts-"))
        self._hosts: dict[str, Host] = {}
        self._lock = threading.Lock()

    def start(self, host_id: str, card: str | None, *, command: str | None = None, env: dict | None = None,
              behaviour: str = "") -> Host:
        """Boot a host: a fake nvidia-smi printing `card`'s reading, then the sample app (or `command`, run
        by bash with `$PORT` set). `behaviour` "silent" starts nothing: the host never answers."""
        self.stop(host_id)
        workdir = self.root / host_id
        shutil.rmtree(workdir, ignore_errors=True)
        (workdir / "bin").mkdir(parents=True)
        install_fake_nvidia_smi(workdir / "bin", card_reading(card))
        host = Host(host_id, card, free_port(), workdir, behaviour=behaviour)
        if behaviour != SILENT:
            host.proc = self._spawn(host, command, env or {})
        with self._lock:
            self._hosts[host_id] = host
        return host

    def _spawn(self, host: Host, command: str | None, env: dict) -> subprocess.Popen:
        run_env = emulated_gpu_env(host.workdir / "bin")
        run_env.update({"PORT": str(host.port), "K_REVISION": host.host_id, "GPUOPS_HOST_DIR": str(host.workdir)})
        run_env.update({k: str(v) for k, v in env.items()})
        argv = ["bash", "-c", command] if command else [*SAMPLE_APP, "--port", str(host.port)]
        log = open(host.log_path, "ab")  # noqa: SIM115 - the child keeps it; closed when the host stops
        try:
            return subprocess.Popen(argv, env=run_env, cwd=host.workdir, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()

    def get(self, host_id: str) -> Host | None:
        with self._lock:
            return self._hosts.get(host_id)

    def hosts(self) -> list[Host]:
        with self._lock:
            return list(self._hosts.values())

    def stop(self, host_id: str) -> bool:
        """Stop the host's processes (its whole group); True when there was one."""
        with self._lock:
            host = self._hosts.pop(host_id, None)
        if host is None:
            return False
        _stop_group(host.proc)
        return True

    def stop_all(self) -> None:
        for host in self.hosts():
            self.stop(host.host_id)

    def wait_answering(self, host_id: str, timeout: float = 15.0, path: str = "/healthz") -> bool:
        """For stand-ins and tests: wait until the host answers `path` (any HTTP status)."""
        host, deadline = self.get(host_id), time.monotonic() + timeout
        while host is not None and host.running and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(host.url + path, timeout=1).close()
                return True
            except urllib.error.HTTPError:
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def __enter__(self) -> "GpuHostFleet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        shutil.rmtree(self.root, ignore_errors=True)


def _stop_group(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    import signal

    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
