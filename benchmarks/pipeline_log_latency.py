"""The pipeline's two delays, in one run: app.log behind the app, and build-run-publish beyond the app.

1. App-log latency. A child process prints LINES_PER_S lines a second, each carrying its own
   time.time(), through gpuops.process_stream.run_streaming into gpuops.log_shipper.LogShipper, which
   sends batches with StatusStore.append_log to `{jobId}/app.log` in moto's ThreadedMotoServer on
   127.0.0.1 (a process of its own, one request at a time as S3 answers them). Per line: `landed` =
   when the PUT holding it succeeded (the server notes it), `seen` = when a reader GETting the object
   every 20 ms first got it back; both minus the time printed, one clock (this machine's). PUTs and
   their bytes are counted at the server. Side by side: line by line (max_lines=1) and the shipper's
   interval_s 0.25, 1.0 (the default) and 2.0.
2. Pipeline overhead. build-run-publish (source runtime) run in this process against a Prefect server
   on SQLite, a process work pool with `run-app` deployed and a real worker polling it (fake
   nvidia-smi with a recorded L4 reading), moto, and the Hub emulator; the app from
   gpuops.demo_app_repo at two lengths, a new commit per run. Total = wall clock around the call;
   the app's own seconds = what run-app measured around the app's process (in the Hub commit's
   metadata); the split comes from the Prefect API (task runs' start/end, run-app's state history),
   to the millisecond, where status.json keeps whole seconds.

  python benchmarks/pipeline_log_latency.py [--runs 3] [--seconds 5] [--skip-pipeline]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

BUCKET = "gpuops-status"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "bench-access-key", "AWS_SECRET_ACCESS_KEY": "bench-secret-key",
           "AWS_DEFAULT_REGION": "us-east-1"}
HF_TOKEN = "hf_gpuopsBenchToken0123456789"
LINES_PER_S = 20
POLL_S = 0.02
# name -> LogShipper arguments
SHIPPERS = {"line by line (max_lines=1)": {"interval_s": 0.01, "max_lines": 1},
            "interval_s=0.25": {"interval_s": 0.25},
            "interval_s=1.0 (default)": {"interval_s": 1.0},
            "interval_s=2.0": {"interval_s": 2.0}}
# name -> (APP_STEPS, APP_STEP_S)
APPS = {"3 x 0.2 s": (3, 0.2), "10 x 0.5 s": (10, 0.5)}

CHILD = """
import sys, time
rate, seconds = float(sys.argv[1]), float(sys.argv[2])
start = time.time()
for i in range(int(rate * seconds)):
    time.sleep(max(0.0, start + i / rate - time.time()))
    print(f"{i} {time.time():.6f}", flush=True)
"""


MOTO = """
import io, json, logging, sys, threading, time
from moto.server import ThreadedMotoServer

logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
lock, puts, inner = threading.Lock(), [], server._server.app

def serve(environ, start):
    if environ["PATH_INFO"] == "/_bench/puts":
        start("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(puts).encode()]
    if environ["REQUEST_METHOD"] != "PUT":
        with lock:
            return list(inner(environ, start))
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    environ["wsgi.input"], status = io.BytesIO(body), []
    with lock:
        answer = list(inner(environ, lambda s, h, *a: (status.append(s), start(s, h, *a))[1]))
        puts.append({"path": environ["PATH_INFO"], "bytes": len(body), "lines": body.count(b"\\n"),
                     "landed": time.time() if status[0].startswith("200") else None})
    return answer

server._server.app = serve
print("http://%s:%s" % server.get_host_and_port(), flush=True)
sys.stdin.read()
"""


class S3:
    """moto's S3 (ThreadedMotoServer) on 127.0.0.1 in a process of its own, so that it does not share this
    process's GIL with the shipper and the reader it serves. One request at a time: S3 checks If-Match and
    writes atomically and a read never sees half a write, moto does neither (a GET racing a PUT of the
    same key fails with a 500). It keeps each PUT's path, bytes, lines and, when it succeeded, the
    time.time() it landed (GET /_bench/puts)."""

    def __init__(self):
        import subprocess

        self.proc = subprocess.Popen([sys.executable, "-c", MOTO], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.url = self.proc.stdout.readline().strip()
        if not self.url:
            raise SystemExit(f"moto did not start (exit {self.proc.wait()})")

    def puts(self) -> list[dict]:
        """Every PUT served so far: path, bytes, lines, landed (None: refused)."""
        import httpx

        return httpx.get(f"{self.url}/_bench/puts", timeout=10).json()

    def client(self):
        import boto3

        return boto3.session.Session().client("s3", endpoint_url=self.url, region_name="us-east-1")

    def stop(self) -> None:
        from gpuops.stack import stop_group

        stop_group(self.proc)


# --- 1. app-log latency -----------------------------------------------------------------------------

class Reader(threading.Thread):
    """GETs `key` every POLL_S and notes when each line first appears (time the GET returned)."""

    def __init__(self, s3: S3, key: str):
        super().__init__(daemon=True)
        self.client, self.key, self.stop = s3.client(), key, threading.Event()
        self.seen: dict[int, float] = {}
        self.round_trips: list[float] = []

    def run(self) -> None:
        while True:
            last = self.stop.is_set()
            sent = time.time()
            try:
                body = self.client.get_object(Bucket=BUCKET, Key=self.key)["Body"].read().decode()
            except self.client.exceptions.NoSuchKey:
                body = ""
            now = time.time()
            self.round_trips.append(now - sent)
            for line in body.splitlines()[len(self.seen):]:
                self.seen[int(line.split()[0])] = now
            if last:
                return
            time.sleep(POLL_S)


def log_latency(s3: S3, name: str, shipper_args: dict, seconds: float) -> dict:
    from gpuops.log_shipper import LogShipper
    from gpuops.process_stream import run_streaming
    from gpuops.status_store import StatusStore

    job_id = hashlib.sha1(name.encode()).hexdigest()
    key = f"{job_id}/app.log"
    store = StatusStore(BUCKET, endpoint_url=s3.url, access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                        secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"])
    written: dict[int, float] = {}

    def keep(line: str) -> None:
        index, stamp = line.split()
        written[int(index)] = float(stamp)

    puts_before = len(s3.puts())
    reader = Reader(s3, key)
    reader.start()
    shipper = LogShipper(lambda text: store.append_log(job_id, "run", text), **shipper_args)
    with shipper:
        done = run_streaming([sys.executable, "-c", CHILD, str(LINES_PER_S), str(seconds)], tempfile.gettempdir(),
                             lambda line: (keep(line), shipper(line)), timeout_s=seconds + 30)
    time.sleep(0.1)
    reader.stop.set()
    reader.join()
    if not done.ok or set(reader.seen) != set(written):
        raise SystemExit(f"{name}: {len(written)} lines written, {len(reader.seen)} seen: benchmark invalid")
    puts = [p for p in s3.puts()[puts_before:] if p["path"].endswith(key)]
    landed = sorted((p["landed"], p["lines"]) for p in puts if p["landed"] is not None)
    in_bucket = [next(t for t, lines in landed if lines > i) - written[i] for i in written]
    return {"name": name, "lines": len(written), "landed": percentiles(in_bucket),
            "seen": percentiles([reader.seen[i] - written[i] for i in written]), "puts": len(puts),
            "kib": sum(p["bytes"] for p in puts) / 1024, "poll_s": statistics.median(reader.round_trips) + POLL_S}


def percentiles(seconds: list[float]) -> tuple[float, float, float]:
    """p50, p95, max in ms."""
    ms = sorted(s * 1000 for s in seconds)
    return statistics.median(ms), ms[round(0.95 * (len(ms) - 1))], ms[-1]


def print_log_latency(rows: list[dict], seconds: float) -> None:
    print(f"app.log latency: a child prints {LINES_PER_S} lines/s for {seconds:g} s (each its time.time()) through "
          "run_streaming -> LogShipper -> StatusStore.append_log into moto on 127.0.0.1;")
    print("landed = time.time() the PUT holding the line succeeded, noted by the server - time printed; "
          f"seen = time the GET showing it returned, a reader GETting app.log every {POLL_S * 1000:.0f} ms "
          f"(median poll period {statistics.median(r['poll_s'] for r in rows) * 1000:.0f} ms) - time printed;")
    print("PUTs (attempts) and bytes PUT counted at the server: each append rewrites the whole object "
          f"(GET + conditional PUT). {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'shipper':28} {'lines':>5}  {'landed p50/p95/max ms':>22}  {'seen p50/p95/max ms':>22} {'PUTs':>5} "
          f"{'KiB PUT':>8}")
    for r in rows:
        print(f"{r['name']:28} {r['lines']:5}  {'/'.join(f'{v:.0f}' for v in r['landed']):>22}  "
              f"{'/'.join(f'{v:.0f}' for v in r['seen']):>22} {r['puts']:5} {r['kib']:8.1f}")


# --- 2. pipeline overhead ---------------------------------------------------------------------------

class Stack:
    """Prefect server (SQLite), Hub emulator, a process pool with run-app deployed and a worker on it."""

    def __init__(self, tmp: Path, s3: S3):
        self.tmp, self.s3 = tmp, s3
        self.prefect = self.hub = self.worker = None

    def start(self) -> "Stack":
        from gpuops.emulator.fake_nvidia_smi import install_fake_nvidia_smi, recorded_reading
        from gpuops.emulator.hf_hub_api import HfHubEmulator
        from gpuops.stack import PrefectServer, Worker

        self.prefect = PrefectServer(self.tmp / "prefect").start()
        os.environ.update(self.prefect.env())
        self.hub = HfHubEmulator(data_dir=self.tmp / "hf-hub", token=HF_TOKEN).start()
        bucket_env = {**S3_KEYS, "GPUOPS_S3_ENDPOINT": self.s3.url, "GPUOPS_STATUS_BUCKET": BUCKET,
                      "HF_ENDPOINT": self.hub.url, "HF_TOKEN": HF_TOKEN}
        os.environ.update(bucket_env)  # the build stage runs here, run-app on the worker

        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import WorkPoolCreate

        from flows.run_app import run_app
        from gpuops.stack import deploy_here

        self.pool = f"bench-gpu-{uuid.uuid4().hex[:6]}"
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name=self.pool, type="process"))
        deploy_here(run_app, self.pool, self.pool)
        fake_bin = self.tmp / "fake-gpu-bin"
        install_fake_nvidia_smi(fake_bin, recorded_reading("l4"))
        env = {**bucket_env, "PATH": f"{fake_bin}:{os.environ['PATH']}", "GPUOPS_EMULATED_GPU": "1",
               "GPUOPS_WORKDIR": str(self.tmp / "worker-jobs"), "PREFECT_LOGGING_LEVEL": "INFO"}
        self.worker = Worker(self.pool, self.tmp / "worker.log", env=env)
        self.worker.start()
        return self

    def stop(self) -> None:
        for part in (self.worker, self.hub, self.prefect):
            if part is not None:
                try:
                    part.stop()
                except Exception as exc:  # noqa: BLE001  stop the others all the same
                    print(f"stopping {type(part).__name__}: {exc}", file=sys.stderr)


def pipeline_run(stack: Stack, repo: Path, steps: int, step_s: float) -> dict:
    from flows.build_run_publish import build_run_publish
    from gpuops.demo_app_repo import make_app_repo

    sha = make_app_repo(repo)
    started = time.time()
    doc = build_run_publish(repo=str(repo), sha=sha, hf_repo="bench/out", run_deployment_name=f"run-app/{stack.pool}",
                            run_job_variables={"env": {"APP_STEPS": str(steps), "APP_STEP_S": str(step_s)}})
    ended = time.time()
    if doc["overallStatus"] != "Succeeded":
        raise SystemExit(f"job {sha} ended {doc['overallStatus']}: benchmark invalid")
    shutil.rmtree(Path(tempfile.gettempdir()) / "gpuops-builds" / sha, ignore_errors=True)
    return split(stack, sha, doc, started, ended)


def split(stack: Stack, sha: str, doc: dict, started: float, ended: float) -> dict:
    """Where the wall time went, from the Prefect API's timestamps (one clock: this machine's)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        parent = tasks(client, doc["prefect"]["flowRunId"])
        on_pool = DeploymentFilter(name=DeploymentFilterName(any_=[stack.pool]))
        child = next(r for r in client.read_flow_runs(deployment_filter=on_pool) if r.parameters.get("job_id") == sha)
        states = {s.type.value: s.timestamp.timestamp() for s in client.read_flow_run_states(child.id)}
        inner = tasks(client, child.id)
    commit = next(c for c in stack.hub.commits("bench/out") if sha in c["title"])
    app_s = float(json.loads(commit["message"])["app seconds"])
    run_start, run_end = inner["run-app-command"]
    return {
        "total": ended - started, "app": app_s, "overhead": ended - started - app_s,
        "claim": parent["claim-job"][1] - started,
        "build": parent["build"][1] - parent["claim-job"][1],
        "poll": states["PENDING"] - parent["build"][1],  # run_deployment creates it, the worker's next poll takes it
        "start": states["RUNNING"] - states["PENDING"],  # the worker's new process: Python, Prefect, the flow's code
        "gpu_prep": run_start - states["RUNNING"],  # status Running, check-gpu, checkout + install at the SHA
        "app_task": run_end - run_start - app_s,  # Prefect's task around the app's process
        "publish": states["COMPLETED"] - run_end,  # publish-output (one Hub commit), status Succeeded, last log flush
        "notice": parent["run-on-gpu-pool"][1] - states["COMPLETED"],  # run_deployment polling (1 s)
        "wrap_up": ended - parent["run-on-gpu-pool"][1],  # status read, artifacts, flow run Completed
    }


def tasks(client, flow_run_id) -> dict[str, tuple[float, float]]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    found = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    # A task run is named `{task name}-{3 characters}`.
    return {t.name.rsplit("-", 1)[0]: (t.start_time.timestamp(), t.end_time.timestamp())
            for t in found if t.start_time and t.end_time}


COLUMNS = [("total", "total"), ("app", "app"), ("overhead", "overhead"), ("claim", "claim"), ("build", "build"),
           ("poll", "poll"), ("start", "start"), ("gpu_prep", "gpu+prep"), ("app_task", "app task"),
           ("publish", "publish"), ("notice", "notice"), ("wrap_up", "wrap-up")]


def print_pipeline(results: dict[str, list[dict]]) -> None:
    runs = len(next(iter(results.values())))
    print(f"\nbuild-run-publish overhead, source runtime, {runs} runs per app length, seconds; Prefect on SQLite, "
          "a process worker (default polling), moto, Hub emulator, all on 127.0.0.1")
    print("total = wall clock around the in-process call; app = the app process's own seconds (run-app's "
          "run_streaming, from the Hub commit's metadata); overhead = total - app; split from the Prefect API:")
    print("  claim = call -> claim-job done; build = build task; poll = build done -> run-app Pending "
          "(run_deployment creates it, the worker's next poll submits it); start = Pending -> Running "
          "(a new process: Python, Prefect, the flow's code);")
    print("  gpu+prep = Running -> app task start (check-gpu, checkout + install again on the worker); app task = "
          "task around the app - app; publish = app task end -> run-app Completed;")
    print("  notice = run-app Completed -> run-on-gpu-pool done (run_deployment polls every 1 s); wrap-up = that "
          "-> call returns (status read, artifacts)")
    print(f"{'app':10} {'run':>6} " + " ".join(f"{title:>8}" for _, title in COLUMNS))
    for name, rows in results.items():
        for i, row in enumerate(rows, 1):
            print(f"{name:10} {i:>6} " + " ".join(f"{row[key]:8.2f}" for key, _ in COLUMNS))
        print(f"{name:10} {'median':>6} " + " ".join(f"{statistics.median(r[key] for r in rows):8.2f}"
                                                     for key, _ in COLUMNS))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="pipeline runs per app length")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the log child prints")
    parser.add_argument("--skip-pipeline", action="store_true", help="only the app.log latency")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # this process's flow logs; the worker's go to a file
    os.environ.update({"HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1", **S3_KEYS})
    os.environ.pop("HF_HUB_OFFLINE", None)

    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpuops-bench-") as tmp:
        s3 = S3()
        stack = Stack(Path(tmp), s3)
        try:
            s3.client().create_bucket(Bucket=BUCKET)
            rows = [log_latency(s3, name, shipper_args, args.seconds) for name, shipper_args in SHIPPERS.items()]
            print_log_latency(rows, args.seconds)
            if args.skip_pipeline:
                return 0
            sys.stdout.flush()
            stack.start()
            results = {name: [pipeline_run(stack, Path(tmp) / "app", steps, step_s) for _ in range(args.runs)]
                       for name, (steps, step_s) in APPS.items()}
            print_pipeline(results)
            print(f"(the whole benchmark: {time.monotonic() - began:.0f} s, starting the stack included; "
                  f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        finally:
            stack.stop()
            s3.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
