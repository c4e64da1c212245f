"""The weekly review's time and peak memory for 1,000, 10,000 and 50,000 runs, side by side.

Starts its own Prefect server (prefect_test_harness: a `uvicorn` child on SQLite in a temporary directory,
127.0.0.1), makes four deployments through the API (two on GPU pools, two on the CPU pool, three of them
process-file with processingTime artifacts), and writes each size's runs into a week of its own
(non-overlapping windows in 2024) with benchmarks/run_history.py: straight into the server's SQLite database
through the server's own models (the bulk insert Prefect's scheduler uses), because the API stamps states with
the server's clock and cannot write last week. Generating is not timed.

Each size is then reviewed in a fresh Python process, through the API as the flow does
(flows.weekly_review.collect: deployments, the runs in pages of 200 with their processingTime artifacts,
backlog, prices; then the markdown and the chart), twice: once timed, once under tracemalloc for the peak of
Python allocations. Also printed: the process's peak RSS (VmHWM) after imports and after the timed review.
No status bucket or Cloud Monitoring project is configured (both "not configured"): the Prefect reads are what
grows with the runs.

  python benchmarks/review_scale.py [--sizes 1000,10000,50000]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DAYS = 7
FIRST_END = datetime(2024, 1, 8, 1, 0, tzinfo=timezone.utc)  # a Monday 01:00 UTC (10:00 in Tokyo)
SPACING = timedelta(weeks=4)  # between the sizes' windows, so no run of one is in another's window


def _specs():
    from benchmarks.run_history import DeploymentSpec

    return [DeploymentSpec("process-file", "gpu-work", "gpuops-cloud-run-gpu", processing=True),
            DeploymentSpec("process-file", "gpu-work-gke", "gpuops-kubernetes-gpu", processing=True),
            DeploymentSpec("process-file", "cpu-work", "gpuops-process", processing=True),
            DeploymentSpec("nightly-batch", "batch", "gpuops-process")]


def _rss_mib() -> float:
    """This process's peak resident set size so far (VmHWM). Not ru_maxrss: Linux carries that across exec,
    so a child started by this (large) generating process would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(end: datetime) -> dict:
    """In the child: the review of the week ending at `end`, timed, then again under tracemalloc."""
    import tracemalloc

    from prefect.client.orchestration import get_client

    from flows.weekly_review import artifact_markdown, collect

    start = end - timedelta(days=DAYS)
    rss_imports = _rss_mib()
    with get_client(sync_client=True) as client:
        began = time.perf_counter()
        report = collect(client, start, end)
        markdown = artifact_markdown(report)
        seconds = time.perf_counter() - began
        rss_after = _rss_mib()
        tracemalloc.start()
        collect(client, start, end)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return {"runs": report["runs"], "seconds": seconds, "rss_imports_mib": rss_imports, "rss_after_mib": rss_after,
            "tracemalloc_peak_mib": peak / 2**20, "markdown_kib": len(markdown) / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000", help="runs per review, comma-separated")
    parser.add_argument("--measure-end", help=argparse.SUPPRESS)  # the child's part
    args = parser.parse_args()
    if args.measure_end:
        print(json.dumps(measure(datetime.fromisoformat(args.measure_end))))
        return 0

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from benchmarks.run_history import insert_history, make_deployments, plan_history

    sizes = [int(s) for s in args.sizes.split(",")]
    specs = _specs()
    rows = []
    with prefect_test_harness(server_startup_timeout=180):
        with get_client(sync_client=True) as client:
            made = make_deployments(client, specs)
            adhoc = client.create_flow_from_name("adhoc")
        for i, size in enumerate(sizes):
            end = FIRST_END + i * SPACING
            history = plan_history(specs, end, DAYS, size // len(specs), seed=size)
            began = time.monotonic()
            written = insert_history(history, made, adhoc)
            generated_s = time.monotonic() - began
            env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_LOGGING_LEVEL": "WARNING"}
            child = subprocess.run([sys.executable, __file__, "--measure-end", end.isoformat()], env=env, cwd=ROOT,
                                   capture_output=True, text=True, timeout=3600)
            if child.returncode != 0:
                print(child.stderr[-3000:], file=sys.stderr)
                return 1
            measured = json.loads(child.stdout.strip().splitlines()[-1])
            rows.append({"size": size, "written": written, "generated_s": generated_s, **measured})
            print(f"{size} runs: generated {written} rows in {generated_s:.1f} s; reviewed {measured['runs']} runs "
                  f"in {measured['seconds']:.1f} s", file=sys.stderr)
    load = os.getloadavg()
    print(f"\nweekly review, {os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
          f"(1/5/15 min) at the end")
    print(f"{'runs reviewed':>14} {'review (s)':>11} {'runs/s':>8} {'peak RSS after imports':>23} "
          f"{'peak RSS after review':>22} {'tracemalloc peak':>17} {'generated (not timed)':>22}")
    for r in rows:
        print(f"{r['runs']:>14,} {r['seconds']:>11.1f} {r['runs'] / r['seconds']:>8.0f} "
              f"{r['rss_imports_mib']:>19.0f} MiB "
              f"{r['rss_after_mib']:>18.0f} MiB {r['tracemalloc_peak_mib']:>13.1f} MiB "
              f"{r['written']:>9,} rows {r['generated_s']:>6.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
