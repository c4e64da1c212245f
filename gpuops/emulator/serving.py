"""Revisions that serve traffic run as local HTTP processes, started and stopped with the traffic."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

from google.protobuf.message import Message

from .cloudrun_common import FAILED, RECONCILING, SUCCEEDED, Name
from .workloads import LogBuffer, Proc, ProcessTable, WorkloadEnv, banner, command_line, no_command_message

STARTING, READY, FAILED_TO_START, EXITED, NOT_STARTED = "starting", "ready", "failed", "exited", "not-started"

# revision full name -> (revision, service full name): what should be running right now.
Desired = dict[str, "tuple[Message, str]"]
# mark(revision full name, condition state, message): how readiness reaches the revision's conditions.
MarkFn = Callable[[str, int, str], None]


def free_port() -> int:
    # Racy by nature (the port is free now, not promised later); good enough on a quiet loopback.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def ingress_container(revision: Message) -> Message:
    """The container that receives requests: the one with a port (Cloud Run's rule), else the first."""
    return next((c for c in revision.containers if c.ports), revision.containers[0])


@dataclass
class Instance:
    """One revision's process (or why there is none)."""

    revision: str
    service: str
    state: str
    reason: str = ""
    port: int | None = None
    proc: Proc | None = None
    log: LogBuffer | None = None
    request_timeout_s: float = 300.0

    @property
    def short(self) -> str:
        return Name.parse(self.revision).id


class RevisionProcesses:
    """Keeps one process per serving revision: reconcile() starts what is missing, stops the rest."""

    def __init__(self, env: WorkloadEnv, table: ProcessTable, mark: MarkFn, startup_timeout_s: float = 30.0):
        self.env, self.table, self.mark = env, table, mark
        self.startup_timeout_s = startup_timeout_s
        self._instances: dict[str, Instance] = {}
        self._logs: dict[str, LogBuffer] = {}  # kept after a stop, until reset
        self._changed = threading.Condition()

    def reconcile(self, desired: Callable[[], Desired]) -> None:
        """Take the desired set under our lock (so two syncs cannot apply stale views), then act."""
        with self._changed:
            wanted = desired()
            gone = [self._instances.pop(n) for n in list(self._instances) if n not in wanted]
            for name, (revision, service) in wanted.items():
                if name not in self._instances:
                    self._instances[name] = self._launch(revision, service)
            self._changed.notify_all()
        for instance in gone:
            self._stop(instance)

    def _launch(self, revision: Message, service: str) -> Instance:
        container = ingress_container(revision)
        log = self._logs[revision.name] = LogBuffer()
        log.line(banner(container))
        instance = Instance(revision.name, service, STARTING, log=log,
                            request_timeout_s=revision.timeout.ToTimedelta().total_seconds() or 300.0)
        if not container.command:
            instance.state = NOT_STARTED
            instance.reason = no_command_message(container, f"revision {instance.short}")
            log.line(instance.reason)
            return instance
        instance.port = free_port()
        system = {"PORT": str(instance.port), "K_SERVICE": Name.parse(service).id,
                  "K_REVISION": instance.short, "K_CONFIGURATION": Name.parse(service).id}
        try:
            instance.proc = Proc("revision", revision.name, command_line(container),
                                 self.env.build(container, system, revision.name), container.working_dir, log,
                                 instance.port)
        except OSError as exc:
            instance.state, instance.reason = FAILED_TO_START, f"cannot run {command_line(container)}: {exc}"
            log.line(f"[gpuops emulator] {instance.reason}")
            self.mark(revision.name, FAILED, instance.reason)
            return instance
        self.table.add(instance.proc)
        self.mark(revision.name, RECONCILING, "")
        threading.Thread(target=self._supervise, args=(instance,), name=f"rev-{instance.short}",
                         daemon=True).start()
        return instance

    def _supervise(self, instance: Instance) -> None:
        """Wait for the port to accept connections (bounded), then for the process to end."""
        proc, deadline = instance.proc, time.monotonic() + self.startup_timeout_s
        while proc.popen.poll() is None and not accepts(instance.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.popen.poll() is None and accepts(instance.port):
            self._settle(instance, READY, "", SUCCEEDED)
        else:
            why = (f"exited with code {proc.popen.returncode}" if proc.popen.poll() is not None
                   else f"did not listen on PORT={instance.port} within {self.startup_timeout_s:g} s")
            proc.stop()
            reason = (f"The user-provided container failed to start and listen on the port defined by the "
                      f"PORT={instance.port} environment variable: it {why}. Output:\n{instance.log.tail()}")
            self._settle(instance, FAILED_TO_START, reason, FAILED)
            return
        code = proc.wait()
        proc.reap_group()
        with self._changed:
            if self._instances.get(instance.revision) is instance and instance.state == READY:
                instance.state, instance.reason = EXITED, f"its process exited with code {code}"
                instance.log.line(f"[gpuops emulator] revision {instance.short} exited with code {code}")
            self._changed.notify_all()

    def _settle(self, instance: Instance, state: str, reason: str, condition_state: int) -> None:
        with self._changed:
            current = self._instances.get(instance.revision) is instance
            if current:
                instance.state, instance.reason = state, reason
            self._changed.notify_all()
        if current:
            self.mark(instance.revision, condition_state, reason)

    def _stop(self, instance: Instance) -> None:
        if instance.proc is not None:
            instance.proc.stop()
            instance.log.line(f"[gpuops emulator] revision {instance.short} stopped")

    def instance(self, revision: str, wait_s: float = 0.0) -> Instance | None:
        """The revision's instance; while it is starting, wait up to wait_s for it to settle."""
        deadline = time.monotonic() + wait_s
        with self._changed:
            while True:
                found = self._instances.get(revision)
                left = deadline - time.monotonic()
                if found is None or found.state != STARTING or left <= 0:
                    return found
                self._changed.wait(left)

    def settled(self, service: str) -> bool:
        with self._changed:
            return not any(i.service == service and i.state == STARTING for i in self._instances.values())

    def wait_settled(self, service: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not self.settled(service):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    def failure(self, revision: str) -> str | None:
        with self._changed:
            found = self._instances.get(revision)
            return found.reason if found is not None and found.state == FAILED_TO_START else None

    def logs(self, revision: str) -> str | None:
        with self._changed:
            log = self._logs.get(revision)
        return log.text() if log is not None else None

    def stop_all(self, forget_logs: bool = True) -> None:
        with self._changed:
            gone = list(self._instances.values())
            self._instances.clear()
            if forget_logs:
                self._logs.clear()
            self._changed.notify_all()
        for instance in gone:
            self._stop(instance)
