"""`gpuops sample-app`, and the sample workload's container entrypoint the emulator runs
(`python -m gpuops_cli.sample_app_cli`): it also answers `gpu-probe`, as an image shipping the probe does."""
from __future__ import annotations

import argparse
import os
import sys

from gpuops.sample_app import DEFAULT_PORT, DEFAULT_PROMPT, DEFAULT_STEPS, run_job, serve

DESCRIPTION = "A sample GPU-style workload (stdlib only: it plays the container) with switches to make it fail."


def _port(args: argparse.Namespace) -> int:
    return args.port if args.port is not None else int(os.environ.get("PORT") or DEFAULT_PORT)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, help=f"port on 127.0.0.1 (default $PORT or {DEFAULT_PORT})")
    parser.add_argument("--job", action="store_true", help="run one generation and exit (batch job mode)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt of the job mode's generation")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="steps of the job mode's generation")


def _run(args: argparse.Namespace):
    """The `gpuops sample-app` command: serves forever (None), or a job's (result, exit code)."""
    if args.job:
        code = run_job(args.prompt, args.steps)
        return {"job": "ok" if code == 0 else "failed"}, code
    serve(_port(args))
    return None


def register(subparsers) -> None:
    parser = subparsers.add_parser("sample-app", help="run the sample workload (HTTP server or --job)")
    add_arguments(parser)
    parser.set_defaults(run=_run, json=False)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["gpu-probe"]:
        # An image that ships the probe runs it when its args say so (the smoke test's override).
        from gpuops_cli.cli import main as gpuops_main

        return gpuops_main(argv)
    parser = argparse.ArgumentParser(prog="python -m gpuops_cli.sample_app_cli", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.job:
        return run_job(args.prompt, args.steps)
    serve(_port(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
