"""`make demo`: the GPU migration on the local stack (Prefect on SQLite + the Cloud Run emulator)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from gpuops.stack import PrefectServer

PROJECT, REGION, SERVICE = "nca-toolkit-438301", "us-central1", "no-code-architects-toolkit"


def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say(f"\n== {title}")


@contextmanager
def quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


class DemoFailed(RuntimeError):
    pass


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise DemoFailed(what)
    say(f"   ok: {what}")


def start_stack(workdir: Path):
    from gpuops.emulator import CloudRunEmulator

    step("Starting the local stack (everything on 127.0.0.1)")
    prefect = PrefectServer(workdir / "prefect").start()
    os.environ.update(prefect.env())
    say(f"   Prefect server (SQLite): {prefect.ui_url}")
    seed = json.loads(resources.files("gpuops.data").joinpath("demo_seed.json").read_text())
    emulator = CloudRunEmulator(seed=seed).start()
    os.environ["GPUOPS_CLOUD_RUN_API"] = emulator.url
    os.environ["GPUOPS_STATE_DIR"] = str(workdir / "state")
    say(f"   Cloud Run Admin API: gpuops EMULATOR at {emulator.url} (not Google), seeded with "
        f"{SERVICE} (gen2, 8 CPU, 32 GiB, concurrency 80, six env vars)")
    return prefect, emulator


def run_describe() -> dict:
    from flows.describe_revision import describe_revision

    step("Phase 0-A  describe-revision (現在のRevision情報取得)")
    summary = describe_revision(PROJECT, REGION, SERVICE)
    say(f"   revision {summary['revision']}  image {summary['image']}")
    say(f"   {summary['execution_environment']}, {summary['cpu']} CPU, {summary['memory']}, "
        f"concurrency {summary['concurrency']}, service account {summary['service_account']}")
    say(f"   env names: {', '.join(summary['env_names'])} (values never read into reports)")
    for finding in summary["findings"]:
        say(f"   finding [{finding['code']}] {finding['message']}")
    expect(len(summary["env_names"]) == 6, "six environment variable names reported")
    expect(summary["plaintext_secret_suspects"] == ["API_KEY"], "plaintext API_KEY flagged for Secret Manager")
    return summary


def run_create_jobs() -> dict:
    from blocks.cloud_run import GpuProfile
    from flows.create_jobs import create_jobs
    from gpuops.errors import CheckFailed

    step("Guardrail: an L4 with 2 CPU is refused before any API call")
    try:
        with quiet("prefect.flow_runs"):  # the refusal is expected: no traceback on screen
            create_jobs(PROJECT, REGION, SERVICE, gpu_profile=GpuProfile(cpu="2"))
        raise DemoFailed("a 2-CPU L4 plan was accepted")
    except CheckFailed as exc:
        say("   " + str(exc).replace("\n", "\n   "))

    step("Phases 1-A, 2-A, 2-B  create-jobs --dry-run (CPU Job作成 / GPU Job作成 / GPU Service作成)")
    plan = create_jobs(PROJECT, REGION, SERVICE, dry_run=True)
    for role, item in plan["bodies"].items():
        say(f"   would create {item['kind']} {item['id']}")
    expect("test123" not in json.dumps(plan), "dry-run bodies show no env value")

    step("create-jobs, then once more (idempotent)")
    first = create_jobs(PROJECT, REGION, SERVICE)
    for r in first["resources"]:
        say(f"   {r['action']:9} {r['kind']:7} {r['id']}")
    second = create_jobs(PROJECT, REGION, SERVICE)
    expect([r["action"] for r in second["resources"]] == ["unchanged"] * 3, "second run changed nothing")
    return first


def report(prefect: PrefectServer, summary: dict) -> None:
    step("Where to look")
    say(f"   Prefect UI:     {prefect.ui_url}  (flow runs, artifacts)")
    say(f"   Artifacts:      describe-{SERVICE}, env-{SERVICE}, create-jobs-plan-{SERVICE}, create-jobs-{SERVICE}")
    say(f"   Snapshot:       {summary['snapshot_path']}")
    say(f"   Server log:     {prefect.home / 'server.log'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpuops-demo", description=__doc__)
    parser.add_argument("--workdir", default=".gpuops/demo", help="where the demo keeps its Prefect DB and state")
    parser.add_argument("--keep", action="store_true", help="keep the stack running until Ctrl-C")
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    workdir = Path(args.workdir).resolve()
    prefect, emulator = start_stack(workdir)
    try:
        summary = run_describe()
        run_create_jobs()
        report(prefect, summary)
        say("\nDemo finished: every step did what it says.")
        if args.keep:
            say("Stack kept running; Ctrl-C to stop.")
            while True:
                time.sleep(3600)
        return 0
    except DemoFailed as exc:
        say(f"\nDEMO FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        emulator.stop()
        prefect.stop()


if __name__ == "__main__":
    sys.exit(main())
