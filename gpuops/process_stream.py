"""Run a command and hand over each line of its output as it comes (a build log, an app log).

Lines go to `on_line` while the process runs, not at the end, so a log in a bucket follows the work.
"""
from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

LineSink = Callable[[str], None]
NOT_RUNNABLE = 127  # the exit code a shell gives a command it cannot find or run
# gpuops' own credentials stay out of the job's processes (its clone, its install, its app): they run the
# job's code, not ours, and a build script can print its environment into a public log.
WITHHELD_FROM_JOBS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN", "PREFECT_API_KEY",
                      "PREFECT_API_AUTH_STRING", "VAST_API_KEY", "GPUOPS_HUB_API_KEY", "GITHUB_WEBHOOK_SECRET",
                      "GPUOPS_PUBSUB_PUSH_TOKEN")


def job_env(**extra: str) -> dict[str, str]:
    """This process's environment without gpuops' credentials, plus `extra`: for a job's own commands."""
    env = {k: v for k, v in os.environ.items() if k not in WITHHELD_FROM_JOBS}
    env.update(extra)
    return env


@dataclass(frozen=True)
class Finished:
    """How a command ended: its exit code (None: killed at the deadline), time taken, last lines."""

    command: tuple[str, ...]
    exit_code: int | None
    seconds: float
    tail: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def run_streaming(command: Sequence[str], cwd: str, on_line: LineSink, timeout_s: float,
                  env: dict[str, str] | None = None, tail_lines: int = 20) -> Finished:
    """Run `command` (stdout and stderr merged), streaming lines; killed at `timeout_s`."""
    started = time.monotonic()
    tail: list[str] = []
    try:
        proc = subprocess.Popen(list(command), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace", bufsize=1)
    except OSError as exc:  # not installed, not executable: as a shell says it, exit 127
        said = f"{command[0]}: cannot run: {exc.strerror or exc} (is it installed on this worker?)"
        on_line(said)
        return Finished(tuple(command), NOT_RUNNABLE, round(time.monotonic() - started, 3), (said,))
    timer = threading.Timer(timeout_s, proc.kill)
    timer.start()
    try:
        for raw in proc.stdout:  # type: ignore[union-attr]
            line = raw.rstrip("\n")
            tail = (tail + [line])[-tail_lines:]
            on_line(line)
        code = proc.wait()
    finally:
        timer.cancel()
    killed = code < 0 and time.monotonic() - started >= timeout_s
    return Finished(tuple(command), None if killed else code, round(time.monotonic() - started, 3), tuple(tail))
