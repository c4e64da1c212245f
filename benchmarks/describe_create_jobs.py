"""Time describe + create-jobs against the Cloud Run emulator; print the share spent outside API calls.

Two paths side by side, in one run, on the same emulator and Prefect server:
  flows  - the Prefect flows describe-revision and create-jobs (what an operator runs)
  bare   - the same planners and adapter calls with no Prefect around them
API time is measured at the HTTP layer (every request the google-cloud-run REST transport sends).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

API_SECONDS = [0.0]
_send = requests.Session.request


def _timed_request(self, *args, **kwargs):
    start = time.perf_counter()
    try:
        return _send(self, *args, **kwargs)
    finally:
        API_SECONDS[0] += time.perf_counter() - start


requests.Session.request = _timed_request  # counts wall time inside HTTP calls; changes nothing else

P, R, S = "nca-toolkit-438301", "us-central1", "no-code-architects-toolkit"


def run_flows() -> None:
    from flows.create_jobs import create_jobs
    from flows.describe_revision import describe_revision

    describe_revision(P, R, S)
    create_jobs(P, R, S)


def run_bare() -> None:
    from blocks.cloud_run_blocks import GpuProfile
    from gpuops import cloudrun, gpu_rules, job_plan, revision

    cr = cloudrun.connect()
    name = cloudrun.service_name(P, R, S)
    service = cloudrun.get_service(cr, name)
    live = cloudrun.get_revision(cr, service["latestReadyRevision"])
    revision.summarize(service, live)
    profile = GpuProfile()
    assert gpu_rules.check(profile.spec(), R).ok
    for item in job_plan.plan(live, S, profile.model_dump()).values():
        full = cloudrun.job_name(P, R, item["id"]) if item["kind"] == "job" else cloudrun.service_name(P, R, item["id"])
        create = cloudrun.create_job if item["kind"] == "job" else cloudrun.create_service
        create(cr, full, item["body"])


def measure(fn, emulator, seed, runs: int) -> list[tuple[float, float, int]]:
    out = []
    for _ in range(runs):
        emulator.reset(reseed=False)
        emulator.seed(seed)
        emulator.clear_requests()
        API_SECONDS[0] = 0.0
        start = time.perf_counter()
        fn()
        wall = time.perf_counter() - start
        out.append((wall, API_SECONDS[0], len(emulator.requests())))
    return out


def row(name: str, samples) -> str:
    wall = statistics.median(s[0] for s in samples)
    api = statistics.median(s[1] for s in samples)
    calls = samples[0][2]
    return f"{name:6} {wall * 1000:10.1f} {api * 1000:10.1f} {(wall - api) * 1000:12.1f} {100 * (wall - api) / wall:9.1f}% {calls:6d}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    import json
    from importlib import resources

    from gpuops.emulator import CloudRunEmulator
    from gpuops.stack import PrefectServer

    seed = json.loads(resources.files("gpuops.data").joinpath("demo_seed.json").read_text())
    with tempfile.TemporaryDirectory() as tmp, PrefectServer(Path(tmp) / "prefect") as prefect, \
            CloudRunEmulator(seed=seed) as emulator:
        os.environ.update(prefect.env())
        os.environ["GPUOPS_CLOUD_RUN_API"] = emulator.url
        os.environ["GPUOPS_STATE_DIR"] = str(Path(tmp) / "state")
        run_flows()  # warm-up: imports, first client, Prefect's first-run setup
        flows = measure(run_flows, emulator, seed, args.runs)
        bare = measure(run_bare, emulator, seed, args.runs)
    print(f"describe + create-jobs on the Cloud Run emulator, median of {args.runs} runs "
          f"(Prefect server on SQLite, {os.cpu_count()} cores)")
    print(f"{'path':6} {'wall ms':>10} {'in API ms':>10} {'outside ms':>12} {'outside':>10} {'calls':>6}")
    print(row("flows", flows))
    print(row("bare", bare))
    return 0


if __name__ == "__main__":
    sys.exit(main())
