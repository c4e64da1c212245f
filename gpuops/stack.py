"""The local stack: a real Prefect server on SQLite, on 127.0.0.1, started and stopped as a child."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout_s:.0f}s")


def stop_group(proc: subprocess.Popen | None) -> None:
    """Stop a child started with start_new_session and every process it started (a server's helpers,
    a worker's flow runs): TERM, then KILL after 15 s."""
    if proc and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class PrefectServer:
    """`prefect server start` on SQLite under `home` (or on `database_url`); `api_url` is what PREFECT_API_URL takes."""

    home: Path
    port: int = 0
    proc: subprocess.Popen | None = None
    # None: SQLite under `home`. Beyond one machine, PostgreSQL: postgresql+asyncpg://user@host:port/db
    database_url: str | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            **({"PREFECT_API_DATABASE_CONNECTION_URL": self.database_url} if self.database_url else {}),
        }

    def start(self, timeout_s: float = 90) -> "PrefectServer":
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        log = open(self.home / "server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env={**os.environ, **self.env()}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_http(f"{self.api_url}/health", timeout_s, self.proc)
        return self

    def stop(self) -> None:
        stop_group(self.proc)

    def __enter__(self) -> "PrefectServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class Worker:
    """`prefect worker start --pool POOL` as a child (its own process group), with `env` added to ours.

    The worker runs each flow run as a process of its own, which inherits this environment: that is
    how a local "GPU" worker gets the fake nvidia-smi on its PATH and the bucket settings.
    """

    pool: str
    log_path: Path
    env: dict[str, str] | None = None
    worker_type: str = "process"
    proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60) -> "Worker":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", self.pool, "--type",
                   self.worker_type, "--limit", "4", "--prefetch-seconds", "5"]
        # A local worker polls every 2 s, not Prefect's 10: a run starts seconds sooner (benchmarks/pipeline_log_latency.py
        # measured 6-12 s of waiting for the next poll at the default).
        env = {**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "2", **(self.env or {})}
        self.proc = subprocess.Popen(command, env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_until_polling(timeout_s)
        return self

    def _wait_until_polling(self, timeout_s: float) -> None:
        """Until the server has seen the worker's heartbeat on the pool: only then does a run get picked up."""
        from prefect.client.orchestration import get_client

        from datetime import datetime, timedelta, timezone

        # A worker of an earlier run may still be listed: only a heartbeat from now on is ours.
        since = datetime.now(timezone.utc) - timedelta(seconds=1)
        deadline = time.monotonic() + timeout_s
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the worker exited with {self.proc.returncode}: see {self.log_path}")
                if any(w.last_heartbeat_time and w.last_heartbeat_time >= since
                       for w in client.read_workers_for_work_pool(self.pool)):
                    return
                time.sleep(0.5)
        raise TimeoutError(f"the worker on {self.pool} did not report within {timeout_s:.0f} s: see {self.log_path}")

    def stop(self) -> None:
        stop_group(self.proc)

    def __enter__(self) -> "Worker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


PROJECT_ROOT = Path(__file__).resolve().parents[1]


def deploy_here(flow, name: str, pool: str) -> None:
    """Deploy `flow` on a process pool to run from this checkout (what prefect.yaml's pull step does
    with GPUOPS_HOME), for the demo and the tests."""
    flow.to_deployment(name=name, work_pool_name=pool, job_variables={"working_dir": str(PROJECT_ROOT)}).apply()
