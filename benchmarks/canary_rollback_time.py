"""Time from a failed canary gate to all traffic back on the stable revision, over several runs.

On the Cloud Run emulator with workloads running (the sample app as local processes), each run
releases a bad revision (its /generate answers 500), runs canary-shift, and measures:
  first 5xx -> verdict    from the probe's first failing answer to the window's fail verdict
  verdict -> written      from the verdict to the rollback write acknowledged by the API
  verdict -> clients      from the verdict to the last answer a client got from the candidate
                          (a watcher polls the service URL every 10 ms throughout)
Side by side, 5 s windows of 20 probe requests: the window ending as soon as its errors break the
limit (the default), and the window always running its full length.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

P, R, S = "nca-toolkit-438301", "us-central1", "no-code-architects-toolkit"


class Watcher(threading.Thread):
    """A client of the service URL: remembers when each revision last answered."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.last_seen, self.stop = url, {}, threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self.stop.is_set():
                try:
                    revision = client.get(f"{self.url}/healthz").headers.get("x-gpuops-revision")
                    self.last_seen[revision] = time.time()
                except httpx.HTTPError:
                    pass
                time.sleep(0.01)


def one_run(emulator, stop_early: bool, window_s: float = 5.0, requests: int = 20) -> dict:
    from flows.canary import canary_shift
    from gpuops import cloudrun
    from gpuops.demo_seed import release, workload_seed
    from gpuops.errors import CheckFailed

    emulator.reset(reseed=False)
    emulator.seed(workload_seed())
    release(P, R, S, bad=True)
    service = cloudrun.get_service(cloudrun.connect(), cloudrun.service_name(P, R, S))
    watcher = Watcher(service["uri"])
    watcher.start()
    try:
        canary_shift(P, R, S, window_s=window_s, probe_requests=requests, min_requests=5,
                     stop_window_early=stop_early)
        raise SystemExit("the bad release was promoted: benchmark invalid")
    except CheckFailed as exc:
        details = exc.details[0]
    time.sleep(0.5)  # let the watcher see a few answers after the rollback
    watcher.stop.set()
    watcher.join()
    fail = details["history"][-1]
    seen = [t for r, t in watcher.last_seen.items() if r and "-gpu-" in r]
    # The candidate's last answer to a client, after the verdict; 0 when none came after it.
    after = max(0.0, seen[0] - fail["ended_at"]) if seen else 0.0
    return {
        "first_error_to_verdict": fail["ended_at"] - fail["first_error_at"],
        "verdict_to_written": details["rolled_back_at"] - fail["ended_at"],
        "verdict_to_clients": after,
        "clients_saw_candidate": bool(seen),
    }


def summary(name: str, runs: list[dict]) -> str:
    cells = []
    for key in ("first_error_to_verdict", "verdict_to_written", "verdict_to_clients"):
        values = [r[key] * 1000 for r in runs]
        cells.append(f"{statistics.median(values):9.0f} {max(values):7.0f}")
    saw = sum(r["clients_saw_candidate"] for r in runs)
    return f"{name:22} " + "  ".join(cells) + f"   {saw}/{len(runs)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")  # the rollbacks are expected
    from gpuops.emulator import CloudRunEmulator
    from gpuops.stack import PrefectServer

    configs = {"stop early (default)": True, "full window": False}
    results = {}
    with tempfile.TemporaryDirectory() as tmp, PrefectServer(Path(tmp) / "prefect") as prefect, \
            CloudRunEmulator(run_workloads=True) as emulator:
        os.environ.update(prefect.env())
        os.environ["GPUOPS_CLOUD_RUN_API"] = emulator.url
        os.environ["GPUOPS_STATE_DIR"] = str(Path(tmp) / "state")
        for name, stop_early in configs.items():
            results[name] = [one_run(emulator, stop_early) for _ in range(args.runs)]
    print(f"canary gate failure -> stable, {args.runs} runs each, ms (median, max); "
          f"Cloud Run emulator + Prefect on SQLite, {os.cpu_count()} cores")
    print(f"{'config':22} {'1st 5xx->verdict':>17}  {'verdict->written':>17}  {'verdict->clients':>17}"
          "   runs where a client got the candidate")
    for name, runs in results.items():
        print(summary(name, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
