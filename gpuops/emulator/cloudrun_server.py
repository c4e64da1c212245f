"""Runs the Cloud Run emulator with uvicorn on 127.0.0.1, in a thread or in the foreground."""

from __future__ import annotations

import argparse
from typing import Any

from .cloudrun_state import (
    EMULATOR_LABEL,
    CloudRunState,
    Fault,
    LoggedRequest,
    SeedSource,
    WorkloadOptions,
    emulated_uri,
)
from .cloudrun_app import build_app
from .cloudrun_jobs import ExecutionRunner
from .id_tokens import DEFAULT_ACCOUNT, TokenIssuer
from .invoker_auth import TOKEN_PATH, AuthPolicies, InvokerAuth, service_auth_from_json
from .loopback_server import LOOPBACK, LoopbackServer


class CloudRunEmulator(LoopbackServer):
    """A stateful Cloud Run Admin API v2 (REST) on 127.0.0.1, for run_v2 clients.

    `with CloudRunEmulator() as emu:` then
    `run_v2.ServicesClient(transport="rest", client_options={"api_endpoint": emu.url},
    credentials=AnonymousCredentials())`.

    With run_workloads=True, job tasks and serving revisions run their container's command + args
    as local processes (images are never pulled), and {url}/emulated/... routes to the revisions.
    """

    def __init__(self, port: int = 0, seed: SeedSource = None, operation_polls_before_done: int = 0,
                 runner: ExecutionRunner | None = None, host: str = LOOPBACK, run_workloads: bool = False,
                 extra_path: list[str] | None = None, extra_env: dict[str, str] | None = None,
                 startup_timeout_s: float = 30.0):
        super().__init__(port, host)
        workloads = WorkloadOptions(run_workloads, list(extra_path or []), dict(extra_env or {}),
                                    startup_timeout_s)
        # URLs are built lazily so they carry the port picked at start().
        self.state = CloudRunState(emulated_uri(lambda: self.url), operation_polls_before_done, runner, seed,
                                   workloads)
        # Invoker authentication of service URLs (Cloud Run's front end) and its token endpoint.
        self.auth_policies, self.token_issuer = AuthPolicies(), TokenIssuer()

    # ------------------------------------------------------------ lifecycle

    name = "Cloud Run emulator"
    def _before_start(self) -> None:
        self.state.apply_initial_seed()

    def _app(self):
        return InvokerAuth(build_app(self.state, self.info), self.auth_policies, self.token_issuer, lambda: self.url)

    def _before_stop(self) -> None:
        self.state.stop_workloads()

    # ------------------------------------------------------------ test helpers

    def info(self) -> dict[str, Any]:
        return {
            "name": EMULATOR_LABEL,
            "emulator": "cloud-run",
            "api": "run.googleapis.com/v2 (REST)",
            "monitoring": "monitoring.googleapis.com/v3 timeSeries.list, Cloud Run request metrics (subset)",
            "secret_manager": "secretmanager.googleapis.com/v1 (REST subset: secrets, versions, access); "
                              "workloads get secretKeyRef values from it",
            "url": self.url if self.port is not None else None,
            "operation_polls_before_done": self.state.ops.polls_before_done,
            "run_workloads": self.state.workload_options.run_workloads,
            "invoker_auth": "per service: Google ID token and/or a header (POST /emulator/v1/auth/services)",
        }

    def reset(self, reseed: bool = True) -> None:
        self.state.reset(reseed)
        self.auth_policies.clear()

    def require_auth(self, service: str, id_token: bool = False, header: str | None = None, value: str = "",
                     audiences: tuple[str, ...] = ()) -> None:
        """Make a service's URLs refuse callers without a Google ID token and/or `header: value`.

        `service` is the full name (projects/P/locations/L/services/S); its tag URLs are covered too.
        The same as POST /emulator/v1/auth/services; requiring nothing makes the service public again.
        """
        body = {"service": service, "id_token": id_token, "header": header, "value": value,
                "audiences": list(audiences)}
        name, auth = service_auth_from_json(body)
        self.auth_policies.require(name, auth)

    def service_account_key(self, email: str = DEFAULT_ACCOUNT) -> dict:
        """A service-account key file's content whose token_uri is this emulator: with it as
        GOOGLE_APPLICATION_CREDENTIALS, google-auth's ID-token flow gets tokens the emulator accepts."""
        return self.token_issuer.service_account_key(self.url + TOKEN_PATH, email)

    def seed(self, data: SeedSource) -> dict[str, list[str]]:
        return self.state.seed(data)

    def add_fault(self, method: str = "*", path: str = ".*", status: int = 503, times: int = 1,
                  mode: str = "before", message: str = "", race: dict | None = None, skip: int = 0) -> Fault:
        """Inject a fault (the same fields as POST /emulator/v1/faults; modes explained on Fault).

        A concurrent deploy landing between a read and a write of service "web":
        `add_fault("PATCH", "/services/web$", mode="race", race={"template": {"containers":
        [{"image": "img:2"}]}, "traffic": [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST",
        "percent": 100}]})`.
        """
        return self.state.faults.add(method=method, path=path, status=status, times=times,
                                     mode=mode, message=message, race=race, skip=skip)

    def clear_faults(self) -> None:
        self.state.faults.clear_faults()

    def requests(self, method: str | None = None, path: str | None = None) -> list[LoggedRequest]:
        """Logged /v2 requests, optionally filtered by method and a path regex."""
        return self.state.faults.requests(method, path)

    def clear_requests(self) -> None:
        self.state.faults.clear_requests()

    def logs(self, name: str) -> str:
        """Output of an execution (tasks in index order) or a revision's process: Cloud Logging's stand-in."""
        text = self.state.logs(name)
        if text is None:
            raise KeyError(f"no local workload output for '{name}' (is run_workloads on?)")
        return text

    def processes(self, running_only: bool = False) -> list[dict[str, Any]]:
        """The emulator's process table: every workload process it started (and has not forgotten)."""
        return self.state.processes.running() if running_only else self.state.processes.snapshot()

    @property
    def operation_polls_before_done(self) -> int:
        return self.state.ops.polls_before_done

    @operation_polls_before_done.setter
    def operation_polls_before_done(self, value: int) -> None:
        self.state.ops.polls_before_done = int(value)

    @property
    def runner(self) -> ExecutionRunner:
        return self.state.runner

    @runner.setter
    def runner(self, runner: ExecutionRunner | None) -> None:
        self.state.runner = runner


def serve(port: int = 8780, seed: SeedSource = None, operation_polls_before_done: int = 0,
          run_workloads: bool = False, extra_path: list[str] | None = None) -> None:
    """Run the emulator in the foreground until interrupted (for `gpuops emulate cloud-run`)."""
    emulator = CloudRunEmulator(port=port, seed=seed, operation_polls_before_done=operation_polls_before_done,
                                run_workloads=run_workloads, extra_path=extra_path)
    emulator.serve_forever(lambda: f"{EMULATOR_LABEL}\nlistening on {emulator.url}  (GPUOPS_CLOUD_RUN_API={emulator.url})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpuops emulate cloud-run", description=EMULATOR_LABEL)
    parser.add_argument("--port", type=int, default=8780, help="port on 127.0.0.1 (0 picks a free one)")
    parser.add_argument("--seed", help="JSON file {\"services\": [...], \"jobs\": [...]} to load at start")
    parser.add_argument("--operation-polls-before-done", type=int, default=0,
                        help="polls an operation answers 'not done' before it completes")
    parser.add_argument("--run-workloads", action="store_true",
                        help="run job tasks and serving revisions as local processes (their command + args)")
    parser.add_argument("--extra-path", action="append", default=[],
                        help="directory prepended to every workload's PATH (repeatable)")
    args = parser.parse_args(argv)
    serve(args.port, args.seed, args.operation_polls_before_done, args.run_workloads, args.extra_path)
    return 0


__all__ = ["CloudRunEmulator", "serve", "main"]
