"""Local processes standing in for containers: the process table, logs, env, and the job runner."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from google.protobuf.message import Message

BANNER = "[gpuops emulator] image {image} not pulled; running command locally"
SECRET_PLACEHOLDER = "emulated-secret:{secret}:{version}"
# Host variables a workload inherits: enough to find programs and Python, nothing else of the host.
BASE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "PYTHONPATH", "VIRTUAL_ENV", "SYSTEMROOT")
LOG_LIMIT = 1_000_000  # characters kept per task or revision; the rest is dropped with a note
STOP_GRACE_S = 2.0  # SIGTERM, then SIGKILL (Cloud Run waits 10 s; tests should not)
EXIT_NOT_STARTED = 127  # as a shell answers for a command it cannot run
EXIT_TIMEOUT = 124  # as coreutils `timeout` answers


def group_alive(pgid: int) -> bool:
    """Whether a process group still has a live (non-zombie) member.

    killpg(pgid, 0) also counts zombies, and an orphaned child's zombie can linger for a while
    when PID 1 reaps slowly (as in containers), so read /proc where there is one.
    """
    if not os.path.isdir("/proc/self"):
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after its ")".
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def raw(message: Any) -> Message:
    """The protobuf under a proto-plus wrapper (runners receive run_v2.Task and run_v2.Execution)."""
    return type(message).pb(message) if hasattr(type(message), "pb") else message


def banner(container: Message) -> str:
    return BANNER.format(image=container.image or "<none>")


def command_line(container: Message) -> list[str]:
    return list(container.command) + list(container.args)


def no_command_message(container: Message, what: str) -> str:
    return (
        f"[gpuops emulator] {what}: the container has no 'command'; the emulator does not pull or run "
        f"images (image {container.image}), so it only runs an explicit command locally"
    )


# (project, secret, version) -> the secret's value, or None when the version is not there.
SecretResolver = Callable[[str, str, str], "str | None"]


def container_env(container: Message, resolve: SecretResolver | None = None, project: str = "") -> dict[str, str]:
    """Plain values as given; a secretKeyRef gets the value the emulated Secret Manager holds for it, else a
    visible placeholder (where Google would not start the container: the emulator shows what is missing)."""
    env: dict[str, str] = {}
    for var in container.env:
        if var.HasField("value_source"):
            ref = var.value_source.secret_key_ref
            version = ref.version or "latest"
            value = resolve(project, ref.secret, version) if resolve is not None else None
            env[var.name] = SECRET_PLACEHOLDER.format(secret=ref.secret, version=version) if value is None else value
        else:
            env[var.name] = var.value
    return env


@dataclass
class WorkloadEnv:
    """What every workload process gets besides its container's env."""

    extra_path: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    secrets: SecretResolver | None = None  # secretKeyRef values, from the emulated Secret Manager

    def build(self, container: Message, system: dict[str, str], resource: str = "") -> dict[str, str]:
        """`resource`: the revision or task's full name (projects/P/...), whose project a short secret name is in."""
        env = {k: os.environ[k] for k in BASE_ENV_KEYS if k in os.environ}
        path = os.pathsep.join([*map(str, self.extra_path), env.get("PATH", os.defpath)])
        env["PATH"] = path
        env.update(self.extra_env)
        project = resource.split("/")[1] if resource.startswith("projects/") else ""
        env.update(container_env(container, self.secrets, project))
        env.update(system)  # Cloud Run sets these itself; a container cannot override them
        return env


@dataclass(frozen=True)
class LogLine:
    """One line of a workload's output as a log entry: arrival order, time written, text."""

    seq: int  # global order of arrival, unique: breaks ties between equal timestamps
    at_ns: int  # wall clock (epoch nanoseconds) when the line was complete
    text: str  # without its newline


_LINE_SEQ = itertools.count(1)


class LogBuffer:
    """Thread-safe output of one process, capped at LOG_LIMIT characters: as text, and line by line."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._lines: list[LogLine] = []
        self._partial = ""  # a line still waiting for its newline
        self._size = 0
        self._dropped = False
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            if self._size + len(text) > LOG_LIMIT:
                if not self._dropped:
                    note = "[gpuops emulator] log limit reached; further output dropped\n"
                    self._parts.append(note)
                    self._add_lines(note)
                    self._dropped = True
                return
            self._parts.append(text)
            self._size += len(text)
            self._add_lines(text)

    def _add_lines(self, text: str) -> None:
        *complete, self._partial = (self._partial + text).split("\n")
        stamp = time.time_ns()
        self._lines += [LogLine(next(_LINE_SEQ), stamp, line) for line in complete]

    def line(self, text: str) -> None:
        self.write(text.rstrip("\n") + "\n")

    def end_line(self) -> None:
        """At a process's end: output without a final newline still becomes a line (as Cloud Run logs it)."""
        with self._lock:
            if self._partial:
                self._parts.append("\n")
                self._add_lines("\n")

    def text(self) -> str:
        with self._lock:
            return "".join(self._parts)

    def lines(self) -> list[LogLine]:
        """Complete lines; a last line without its newline is not a log entry yet."""
        with self._lock:
            return list(self._lines)

    def tail(self, chars: int = 2000) -> str:
        return self.text()[-chars:]


class Proc:
    """One workload process in its own process group, its output pumped into a LogBuffer."""

    def __init__(self, kind: str, name: str, argv: list[str], env: dict[str, str], cwd: str | None,
                 log: LogBuffer, port: int | None = None):
        self.kind, self.name, self.argv, self.port, self.log = kind, name, argv, port, log
        self.started = time.time()
        # A new session makes the pid the group id, so a stop reaches the workload's children too.
        self.popen = subprocess.Popen(
            argv, env=env, cwd=cwd or None, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._pump = threading.Thread(target=self._read, name=f"log-{self.popen.pid}", daemon=True)
        self._pump.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        for chunk in iter(self.popen.stdout.readline, b""):
            self.log.write(chunk.decode("utf-8", errors="replace"))
        self.log.end_line()
        self.popen.stdout.close()

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code, or None when the timeout passed first."""
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._pump.join(timeout=1)  # a child still holding the pipe must not hang us
        return code

    @property
    def running(self) -> bool:
        return self.popen.poll() is None or group_alive(self.pid)

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM the group, SIGKILL what is left after the grace period, reap the leader."""
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.running and time.monotonic() < deadline:
            time.sleep(0.02)
        self._signal(signal.SIGKILL)
        self.wait(timeout=5)

    def reap_group(self) -> None:
        """After the leader exits: Cloud Run tears the container down, so leftovers go too."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "name": self.name, "pid": self.pid, "argv": self.argv, "port": self.port,
            "running": self.running, "exit_code": self.popen.returncode, "started": self.started,
        }


class ProcessTable:
    """Every process the emulator started, so tests (and people) can see that none leaked."""

    def __init__(self) -> None:
        self._procs: dict[int, Proc] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, proc: Proc) -> None:
        with self._lock:
            self._procs[next(self._ids)] = proc

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            procs = list(self._procs.values())
        return [p.to_dict() for p in procs]

    def running(self) -> list[dict[str, Any]]:
        return [p for p in self.snapshot() if p["running"]]

    def forget_finished(self) -> None:
        with self._lock:
            self._procs = {k: p for k, p in self._procs.items() if p.running}


@dataclass
class _Execution:
    logs: dict[int, LogBuffer] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)
    cancelled: bool = False


class ProcessRunner:
    """ExecutionRunner that runs each task's command + args as a local process (images are not pulled)."""

    def __init__(self, env: WorkloadEnv | None = None, table: ProcessTable | None = None):
        self.env = env or WorkloadEnv()
        self.table = table or ProcessTable()
        self._runs: dict[str, _Execution] = {}
        self._lock = threading.Lock()

    def start(self, execution, tasks, report) -> None:
        execution, tasks = raw(execution), [raw(t) for t in tasks]
        with self._lock:
            run = self._runs.setdefault(execution.name, _Execution())
            for task in tasks:
                run.logs[task.index] = LogBuffer()
        # Execution.parallelism caps how many tasks run at once (0: all of them).
        slots = threading.Semaphore(execution.parallelism or max(len(tasks), 1))
        short = execution.name.rsplit("/", 1)[-1]
        for task in tasks:
            threading.Thread(target=self._run_task, args=(execution, task, run, slots, report),
                             name=f"task-{task.index}-{short}", daemon=True).start()

    def _run_task(self, execution: Message, task: Message, run: _Execution, slots, report) -> None:
        log, container = run.logs[task.index], task.containers[0]
        log.line(banner(container))
        if not container.command:
            message = no_command_message(container, f"task {task.index}")
            log.line(message)
            report(task.name, EXIT_NOT_STARTED, message)
            return
        with slots:
            code, message = self._attempt(execution, task, container, run, log)
        if code is not None:
            log.line(f"[gpuops emulator] task {task.index} exited with code {code}")
            report(task.name, code, message)

    def _attempt(self, execution, task, container, run: _Execution, log: LogBuffer) -> tuple[int | None, str]:
        system = {
            "CLOUD_RUN_JOB": execution.job, "CLOUD_RUN_EXECUTION": execution.name.rsplit("/", 1)[-1],
            "CLOUD_RUN_TASK_INDEX": str(task.index), "CLOUD_RUN_TASK_COUNT": str(execution.task_count),
            "CLOUD_RUN_TASK_ATTEMPT": "0",
        }
        with self._lock:
            if run.cancelled:
                return None, ""
            try:
                proc = Proc("task", task.name, command_line(container),
                            self.env.build(container, system, task.name), container.working_dir, log)
            except OSError as exc:
                message = f"[gpuops emulator] task {task.index}: cannot run {command_line(container)}: {exc}"
                log.line(message)
                return EXIT_NOT_STARTED, message
            run.procs.append(proc)
            self.table.add(proc)
        timeout = task.timeout.ToTimedelta().total_seconds() or None
        code = proc.wait(timeout)
        if code is None:
            proc.stop()
            message = f"Task {task.index} timed out after {timeout:g} s; the emulator killed its processes"
            log.line(f"[gpuops emulator] {message}")
            return EXIT_TIMEOUT, message
        proc.reap_group()
        with self._lock:
            if run.cancelled:
                return None, ""  # the store already marked the task cancelled
        return code, ""

    def cancel(self, execution_name: str) -> None:
        """Kill the execution's process groups and wait until they are gone."""
        with self._lock:
            run = self._runs.get(execution_name)
            if run is None:
                return
            run.cancelled = True
            procs = list(run.procs)
        for proc in procs:
            proc.stop()
            proc.log.line("[gpuops emulator] execution cancelled; process group stopped")

    def logs(self, execution_name: str) -> str | None:
        """The execution's output, task by task in index order; None for an unknown execution."""
        with self._lock:
            run = self._runs.get(execution_name)
            if run is None:
                return None
            buffers = [run.logs[i] for i in sorted(run.logs)]
        return "".join(b.text() for b in buffers)

    def log_lines(self) -> list[tuple[str, int, LogLine]]:
        """Every execution's output lines as (execution name, task index, line): Cloud Logging's source."""
        with self._lock:
            buffers = [(name, index, buffer) for name, run in self._runs.items()
                       for index, buffer in run.logs.items()]
        return [(name, index, line) for name, index, buffer in buffers for line in buffer.lines()]

    def reset(self) -> None:
        """Stop every process of every execution and forget their logs."""
        with self._lock:
            names = list(self._runs)
        for name in names:
            self.cancel(name)
        with self._lock:
            self._runs.clear()
        self.table.forget_finished()
