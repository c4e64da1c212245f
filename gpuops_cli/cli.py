"""The `gpuops` command: every migration flow from the shell, with the UI's parameters."""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import traceback
from typing import Callable

from gpuops.errors import BadInput, CheckFailed, CouldNotRun

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_COULD_NOT_RUN = 0, 1, 2, 3

# Modules that add their own subcommands: each has `register(subparsers)`, and its commands
# set `run(args)` returning a result dict, or (result dict, exit code). Keep them light to import.
COMMAND_MODULES = ("gpuops_cli.migration_cli", "gpuops_cli.cleanup_cli", "gpuops_cli.gpu_cli",
                   "gpuops_cli.sample_app_cli", "gpuops_cli.pipeline_cli", "gpuops_cli.hub_cli",
                   "gpuops_cli.alerts_cli", "gpuops_cli.cost_cli", "gpuops_cli.secrets_cli",
                   "gpuops_cli.review_cli", "gpuops_cli.offers_cli", "gpuops_cli.vast_cli", "gpuops_cli.ec2_cli")


# Each stand-in that runs alone: its default port and how it is served.
EMULATOR_PORTS = {"cloud-run": 8780, "hf-hub": 8790, "registry": 8791, "vast-api": 8795}


def _emulate(args) -> None:
    port = EMULATOR_PORTS[args.system] if args.port is None else args.port
    if args.system == "hf-hub":
        from gpuops.emulator.hf_hub_api import serve as serve_hf_hub

        return serve_hf_hub(port, args.data)
    if args.system == "registry":
        from gpuops.emulator.registry_api import serve as serve_registry

        return serve_registry(port)
    if args.system == "vast-api":
        from gpuops.emulator.vast_api import serve as serve_vast

        return serve_vast(port)
    from gpuops.emulator import serve

    serve(port, args.seed, run_workloads=args.run_workloads,
          extra_path=args.extra_path)


class Parser(argparse.ArgumentParser):
    """Usage errors are bad input like any other: exit 2, and one JSON object with --json."""

    def error(self, message: str):
        raise BadInput(f"{self.prog}: {message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="gpuops", description="GPU operations runbooks as Prefect flows.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("emulate", help="run a local emulator (labelled as one)")
    p.add_argument("system", choices=sorted(EMULATOR_PORTS))
    p.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default " + ", ".join(
        f"{port} {name}" for name, port in EMULATOR_PORTS.items()) + ")")
    p.add_argument("--data", help="hf-hub: directory keeping the repositories, one folder per commit")
    p.add_argument("--seed", help="JSON file of services and jobs to start with")
    p.add_argument("--run-workloads", action="store_true",
                   help="run job tasks and serving revisions as local processes (their command + args)")
    p.add_argument("--extra-path", action="append", default=[],
                   help="directory put first on every workload's PATH, e.g. one holding a fake nvidia-smi")
    p.set_defaults(run=_emulate, json=False)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    for command in sub.choices.values():
        command.add_argument("--verbose", action="store_true",
                             help="show Prefect's logs of failures and the traceback of an internal error")
    return parser


def _quiet_logs_to_stderr() -> None:
    # stdout carries the one JSON object; Prefect's console logs must not mix into it.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)


class _NoFailureRecords(logging.Filter):
    """Prefect logs each failure, traceback included, at ERROR: that stays in the flow run's log in
    Prefect (and shows with --verbose); the console gets gpuops' own one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("prefect"):
            return True
        # "Finished in state Failed(...)" repeats at INFO the message gpuops prints once.
        return record.levelno < logging.ERROR and not str(record.msg).startswith("Finished in state Failed")


def _quiet_prefect_failures() -> None:
    from prefect import flow  # noqa: F401  this import (not prefect.logging's) sets up Prefect's console handlers

    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.Logger.manager.loggerDict))]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            # Console handlers only (Prefect's, and the stderr one --json sets up); the handler that
            # ships logs to the Prefect API keeps every record.
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.addFilter(_NoFailureRecords())


def _print(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
        return
    for key, value in result.items():
        if isinstance(value, (list, dict)):
            value = json.dumps(value, default=str)
        print(f"{key}: {value}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Known before parsing, so that even a usage error answers in the form asked for.
    as_json, verbose = "--json" in argv, "--verbose" in argv
    if as_json:
        _quiet_logs_to_stderr()
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "uses_prefect", False) and not verbose:
            _quiet_prefect_failures()
        run: Callable = args.run
        result = run(args)
    except BadInput as exc:
        return _fail(as_json, "bad-input", str(exc), [], EXIT_BAD_INPUT)
    except CheckFailed as exc:
        return _fail(as_json, "check-failed", str(exc), exc.details, EXIT_CHECK_FAILED)
    except (Exception, KeyboardInterrupt) as exc:  # anything else: gpuops could not do its job
        if verbose:
            traceback.print_exc(file=sys.stderr)
        return _fail(as_json, "could-not-run", could_not_run_message(exc), [], EXIT_COULD_NOT_RUN)
    code = EXIT_OK
    if isinstance(result, tuple):
        result, code = result
    if result is not None:
        _print(result, as_json)
    return code


def could_not_run_message(exc: BaseException) -> str:
    """One line: what failed, and what the operator can do. Flows that change traffic raise
    CouldNotRun themselves, saying whether they put it back on stable."""
    if isinstance(exc, CouldNotRun):
        return str(exc)
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return (f"could not run ({what}). Every gpuops write converges, so running the same command again "
            "resumes; --verbose shows the traceback, and the flow run's log in Prefect has the details.")


def _fail(as_json: bool, kind: str, message: str, details: list, code: int) -> int:
    if as_json:
        print(json.dumps({"error": kind, "message": message, "details": details, "exit_code": code},
                         indent=2, default=str))
    print(f"gpuops: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
