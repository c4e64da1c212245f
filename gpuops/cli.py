"""The `gpuops` command: every migration flow from the shell, with the UI's parameters."""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from typing import Callable

from gpuops.errors import BadInput, CheckFailed

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT = 0, 1, 2

# Modules that add their own subcommands: each has `register(subparsers)`, and its commands
# set `run(args)` returning a result dict, or (result dict, exit code). Keep them light to import.
COMMAND_MODULES = ("gpuops.migration_cli", "gpuops.cleanup_cli", "gpuops.gpu_cli", "gpuops.sample_app")


def _emulate(args) -> None:
    from gpuops.emulator import serve

    serve(args.port, args.seed, run_workloads=args.run_workloads, extra_path=args.extra_path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpuops", description="GPU operations runbooks as Prefect flows.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("emulate", help="run a local emulator (labelled as one)")
    p.add_argument("system", choices=["cloud-run"])
    p.add_argument("--port", type=int, default=8780)
    p.add_argument("--seed", help="JSON file of services and jobs to start with")
    p.add_argument("--run-workloads", action="store_true",
                   help="run job tasks and serving revisions as local processes (their command + args)")
    p.add_argument("--extra-path", action="append", default=[],
                   help="directory put first on every workload's PATH, e.g. one holding a fake nvidia-smi")
    p.set_defaults(run=_emulate, json=False)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def _quiet_logs_to_stderr() -> None:
    # stdout carries the one JSON object; Prefect's console logs must not mix into it.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)


def _print(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
        return
    for key, value in result.items():
        if isinstance(value, (list, dict)):
            value = json.dumps(value, default=str)
        print(f"{key}: {value}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "json", False):
        _quiet_logs_to_stderr()
    run: Callable = args.run
    try:
        result = run(args)
    except BadInput as exc:
        return _fail(args, "bad-input", str(exc), [], EXIT_BAD_INPUT)
    except CheckFailed as exc:
        return _fail(args, "check-failed", str(exc), exc.details, EXIT_CHECK_FAILED)
    code = EXIT_OK
    if isinstance(result, tuple):
        result, code = result
    if result is not None:
        _print(result, getattr(args, "json", False))
    return code


def _fail(args, kind: str, message: str, details: list, code: int) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"error": kind, "message": message, "details": details}, indent=2))
    print(f"gpuops: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
