"""`make demo`: the GPU migration on the local stack (Prefect on SQLite + the Cloud Run emulator), then one
build → run → publish pipeline (gpuops_cli/demo_pipeline.py) and runbook 002's EC2 migration (demo_ec2.py)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from gpuops.stack import PrefectServer
from gpuops_cli.demo_output import DemoFailed, expect, say, step

PROJECT, REGION, SERVICE = "nca-toolkit-438301", "us-central1", "no-code-architects-toolkit"
# Short windows so the demo takes a minute; production defaults are 30 s windows of 30 requests.
CANARY = {"window_s": 1.0, "probe_requests": 10, "min_requests": 5}


@contextmanager
def quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def start_stack(workdir: Path):
    from gpuops.emulator import CloudRunEmulator

    from gpuops.demo_seed import workload_seed
    from gpuops.emulator.fake_nvidia_smi import install_fake_nvidia_smi, recorded_reading

    step("Starting the local stack (everything on 127.0.0.1)")
    prefect = PrefectServer(workdir / "prefect").start()
    os.environ.update(prefect.env())
    say(f"   Prefect server (SQLite): {prefect.ui_url}")
    # No GPU here: the jobs see a fake nvidia-smi printing a real L4's recorded reading.
    install_fake_nvidia_smi(workdir / "fake-gpu-bin", recorded_reading("l4"))
    emulator = CloudRunEmulator(seed=workload_seed(), run_workloads=True,
                                extra_path=[str(workdir / "fake-gpu-bin")]).start()
    os.environ["GPUOPS_CLOUD_RUN_API"] = emulator.url
    os.environ["GPUOPS_STATE_DIR"] = str(workdir / "state")
    say(f"   Cloud Run Admin API: gpuops EMULATOR at {emulator.url} (not Google), seeded with "
        f"{SERVICE} (gen2, 8 CPU, 32 GiB, concurrency 80, six env vars)")
    say("   Containers are not pulled: each revision and job runs `gpuops sample-app` as a local process;")
    say("   the GPU is EMULATED (a recorded NVIDIA L4 nvidia-smi reading).")
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
    from blocks.cloud_run_blocks import GpuProfile
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


def run_smoke_test() -> dict:
    from flows.smoke_test import gpu_smoke_test

    step("Phase 2-C  gpu-smoke-test (GPU版動作テスト)")
    result = gpu_smoke_test(PROJECT, REGION, SERVICE)
    for check in result["checks"]:
        say(f"   {'PASS' if check['passed'] else 'FAIL'} {check['check']}: {check['detail']}")
    for row in result["comparison"]:
        say(f"   {row['side']}: median {row['median_ms']} ms over {row['requests']} requests ({row['how']})")
    expect(result["passed"], f"smoke test passed ({result['gpu_label']})")
    return result


def release(bad: bool) -> None:
    from gpuops.demo_seed import release as new_release

    new_release(PROJECT, REGION, SERVICE, bad)


def run_failing_canary() -> None:
    from flows.canary import canary_shift
    from gpuops.errors import CheckFailed

    step("Phase 7  canary-shift with a bad release (its /generate answers 500)")
    release(bad=True)
    try:
        with quiet("prefect.flow_runs"):
            canary_shift(PROJECT, REGION, SERVICE, **CANARY)
        raise DemoFailed("a failing GPU revision was promoted")
    except CheckFailed as exc:
        say(f"   {exc}")
        for h in exc.details[0]["history"]:
            say(f"   window at {h['percent']}%: {h['requests']} requests, {h['errors']} errors -> {h['verdict']}")
    expect(serving_stable(), "rolled back automatically: the stable revision serves 100%")


def serving_stable() -> bool:
    from gpuops import cloudrun
    from gpuops import cloud_run_traffic

    service = cloudrun.get_service(cloudrun.connect(), cloudrun.service_name(PROJECT, REGION, SERVICE))
    state = cloud_run_traffic.state_of(service)
    return state is not None and cloud_run_traffic.serving_percent(service, state.stable) == 100


def run_migration() -> dict:
    from flows.migrate import migrate_to_gpu

    step("The fixed release: migrate-to-gpu, the whole migration as one flow")
    release(bad=False)
    result = migrate_to_gpu(PROJECT, REGION, SERVICE, canary_window_s=CANARY["window_s"],
                            probe_requests=CANARY["probe_requests"], min_requests=CANARY["min_requests"],
                            approve_final=False, job_args=["--job", "--steps", "200000"])
    for row in result["phases"]:
        say(f"   {row['phase']:12} {row['status']:5} {row['percent']:3}%  {row['evidence']}")
    for row in result.get("job_times", []):  # runbook 6-B: CPU Job実行時間 / GPU Job実行時間, measured
        figure = f"x{row['speedup']}" if "speedup" in row else f"{row['measured_s']} s"
        say(f"   6-B {row['ja']}: {figure}" + (f"  (execution {row['execution']})" if row["execution"] else ""))
    if result.get("canary_windows"):
        say("   6-B response time, measured in each canary window with the same requests to both "
            "(on the emulator both are local processes: not a GPU measure):")
    for w in result.get("canary_windows", []):  # runbook 6-B response time, GPU beside CPU in the same window
        say(f"   6-B response time at {w['percent']}% GPU: GPU p95 {w['p95_ms']} ms vs CPU p95 "
            f"{w.get('stable_p95_ms')} ms over {w['requests']} requests each (GPU/CPU median x{w.get('median_ratio')}, "
            f"p={w.get('p_value')}) -> {w['verdict']}")
    est = result["cost"]["estimate"]
    say(f"   cost ESTIMATE from stated inputs (100 job h + 50 service h a month): ${est['usd_per_month']}/month "
        f"at ${est['rate']['total']}/h ({est['price_source']})")
    serving = [t for t in result["serving"] if t["percent"]]
    say("   serving: " + ", ".join(f"{t['revision']} {t['percent']}%" for t in serving))
    expect(len(serving) == 1 and "-gpu-" in serving[0]["revision"], "the GPU revision serves 100%")
    return result


def run_cleanup_dry_run() -> None:
    from flows.cleanup import cleanup
    from gpuops import cloudrun

    step("Phase 8-A  cleanup, dry run (不要リソース削除): deleting needs an approval naming each resource")
    result = cleanup(PROJECT, REGION, SERVICE)
    for item in result["items"]:
        verdict = "could delete" if item["deletable"] else "keeps     "
        say(f"   {verdict} {item['kind']:8} {cloudrun.short(item['name'])}  ({item['why_not'] or item['reason']})")
    expect(result["dry_run"] and not result["deleted"], "the dry run deleted nothing")


def report(prefect: PrefectServer, summary: dict) -> None:
    step("Where to look")
    say(f"   Prefect UI:     {prefect.ui_url}  (flow runs, artifacts)")
    say(f"   Artifacts:      migration-{SERVICE} (checklist and cost), canary-{SERVICE}, smoke-test-{SERVICE},")
    say(f"                   cleanup-{SERVICE},")
    say(f"                   describe-{SERVICE}, env-{SERVICE}, create-jobs-plan-{SERVICE}, create-jobs-{SERVICE}")
    say(f"   Snapshot:       {summary['snapshot_path']}")
    say(f"   Server log:     {prefect.home / 'server.log'}")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpuops-demo", description=__doc__)
    parser.add_argument("--workdir", default=".gpuops/demo", help="where the demo keeps its Prefect DB and state")
    parser.add_argument("--keep", action="store_true",
                        help="keep the stack running until Ctrl-C, for the Prefect UI (`make demo KEEP=1`)")
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    workdir = Path(args.workdir).resolve()
    # A kill (not only Ctrl-C) still stops the stack: the server runs in its own process group.
    signal.signal(signal.SIGTERM, _interrupt)
    prefect, emulator = start_stack(workdir)
    pipeline_stand_ins = ExitStack()
    try:
        summary = run_describe()
        run_create_jobs()
        run_smoke_test()
        run_failing_canary()
        run_migration()
        run_cleanup_dry_run()
        from gpuops_cli import demo_ec2, demo_pipeline

        # Before the pipeline's worker polls: its health latency is judged against the runbook's 50 ms.
        migration = demo_ec2.run(workdir, pipeline_stand_ins)
        stack = demo_pipeline.start_pipeline_stack(workdir, pipeline_stand_ins)
        job = demo_pipeline.run_pipeline(workdir, stack)
        page = demo_pipeline.render_dashboard(workdir, stack)
        report(prefect, summary)
        demo_pipeline.report(job, page, stack)
        demo_ec2.report(migration)
        say("\nDemo finished: every step did what it says.")
        if args.keep:
            say(f"Stack kept running: the Prefect UI is at {prefect.ui_url}; Ctrl-C stops it.")
            while True:
                time.sleep(3600)
        say("The Prefect server stops with the demo: `make demo KEEP=1` keeps it up for the UI (Ctrl-C stops it).")
        return 0
    except DemoFailed as exc:
        say(f"\nDEMO FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        try:  # send the last flow-run logs before the server goes away
            for name in ("prefect.flow_runs", "prefect.task_runs"):
                for handler in logging.getLogger(name).handlers:
                    handler.flush()
        finally:  # whatever happened, leave no server or workload process behind
            say(f"\nStopping the worker, the pipeline's stand-ins, the Prefect server ({prefect.ui_url}) and the "
                f"Cloud Run emulator ({emulator.url}).")
            pipeline_stand_ins.close()
            emulator.stop()
            prefect.stop()
            say("Stopped the Prefect server and the emulator.")


if __name__ == "__main__":
    sys.exit(main())
