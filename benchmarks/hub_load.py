"""Load on the hub's `POST /v1/tasks`, and how fast it turns accepted tasks into flow runs, in one run.

Starts a real Prefect server (SQLite), the hub's gpu-work deployment on a pool nothing polls (as
tests/hub/test_hub_app.py's fixture does, so each dispatched task is a flow run that stays
Scheduled; the server's late-runs service is off, see main()), `gpuops hub` as a process with its
SQLite outbox in a temporary directory, and a bare FastAPI app that only answers 202, served by
uvicorn the same way the hub serves itself (a process of its own, log level warning, no access
log). Then, on 127.0.0.1:

1. Accept. One client (httpx.AsyncClient, 20 coroutines each sending its next request when its
   last is answered: concurrency 20) POSTs --tasks task bodies (`gs://.../N.mp4`, the GPU route)
   with the API key, first to the bare endpoint, then to the hub, after 20 unmeasured requests to
   each. Latency = send to answer, per request; accepted/s = 202 answers / wall time of the batch.
2. Hub dispatch. The hub's dispatcher works through everything it accepted while (and after) the
   batch arrives. Progress is polled from the outbox file (read-only); once all are dispatched, each
   task's `updated` time comes from `GET /v1/tasks/{id}`; sustained rate = (dispatched - 1) /
   (last dispatch - first dispatch). The hub paces itself at --rate-per-s (its default, 10/s). The
   wait is bounded (--drain-s): on a slow machine the rate is of what was dispatched by then.
3. Direct. The hub is stopped, then this process calls `run_deployment("process-file/gpu-work",
   timeout=0)` sequentially against the same server, --direct times (or --direct-s seconds);
   rate = calls / wall time, latency per call.

The hub's flow runs (tag gpuops-hub) are counted once it has stopped: one per task, never two
(the exit status says so).
Every process is stopped (its whole group) and the temporary directory removed, whatever happens.

  python benchmarks/hub_load.py [--tasks 1000] [--concurrency 20] [--rate-per-s 10] [--direct 150]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

API_KEY = "hub-bench-key-0123456789"
GPUOPS = str(Path(sys.executable).parent / "gpuops")
WARMUP = 20
POOL = "hub-bench-idle"


# --- the bare endpoint (this file, run as `--serve-bare PORT`) -----------------------------------


def serve_bare(port: int) -> None:
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    @app.post("/v1/tasks")
    async def post_task():
        return JSONResponse({"id": str(uuid.uuid4())}, status_code=202)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)  # as `gpuops hub` does


# --- helpers --------------------------------------------------------------------------------------


def started(command: list[str], env: dict, log: Path, health: str, timeout_s: float = 90) -> subprocess.Popen:
    from gpuops.stack import wait_http

    with open(log, "ab") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        wait_http(health, timeout_s, proc)
    except Exception:
        from gpuops.stack import stop_group

        stop_group(proc)
        raise RuntimeError(f"{command[0]} did not come up:\n{log.read_text()[-2000:]}") from None
    return proc


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def create_work_deployment() -> None:
    """process-file/gpu-work, where the hub sends every benchmark task (an .mp4: the GPU route), on a pool
    nothing polls, so each dispatched task stays a Scheduled flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from flows.hub_work import process_file
    from gpuops.stack import deploy_here

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))  # a new server: the pool is new
    deploy_here(process_file, "gpu-work", POOL)


async def load(url: str, count: int, concurrency: int, tag: str) -> dict:
    """`count` POSTs (after WARMUP unmeasured ones) with `concurrency` in flight; latencies and 202 ids."""
    import httpx

    headers = {"X-API-Key": API_KEY}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as client:
        async def one(i: int, latencies: list, ids: list, statuses: dict) -> None:
            body = {"input_uri": f"gs://bench-media/{tag}/{i:05d}.mp4", "params": {"i": i}}
            sent = time.perf_counter()
            answer = await client.post("/v1/tasks", json=body)
            latencies.append(time.perf_counter() - sent)
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
            if answer.status_code == 202:
                ids.append(answer.json()["id"])

        async def run(first: int, n: int) -> tuple[list, list, dict, float]:
            latencies, ids, statuses, queue = [], [], {}, iter(range(first, first + n))

            async def worker():
                for i in queue:  # shared iterator: each coroutine takes the next index
                    await one(i, latencies, ids, statuses)

            began = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return latencies, ids, statuses, time.perf_counter() - began

        _, warm_ids, _, _ = await run(0, WARMUP)
        latencies, ids, statuses, wall = await run(WARMUP, count)
    return {"latencies": latencies, "ids": warm_ids + ids, "measured_ids": ids, "statuses": statuses, "wall": wall,
            "accepted_per_s": statuses.get(202, 0) / wall}


def outbox_counts(db: Path) -> dict:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM hub_tasks GROUP BY state").fetchall())


async def task_views(url: str, ids: list[str], concurrency: int) -> list[dict]:
    import httpx

    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": API_KEY}, timeout=60) as client:
        async def one(task_id: str) -> dict:
            async with semaphore:
                return (await client.get(f"/v1/tasks/{task_id}")).json()

        return await asyncio.gather(*(one(i) for i in ids))


def wait_drained(db: Path, total: int, timeout_s: float) -> tuple[dict, bool]:
    deadline, last_print = time.monotonic() + timeout_s, 0.0
    while True:
        counts = outbox_counts(db)
        if counts.get("queued", 0) == 0 and sum(counts.values()) >= total:
            return counts, True
        if time.monotonic() > deadline:
            return counts, False
        if time.monotonic() - last_print > 15:
            print(f"  hub outbox: {counts}", flush=True)
            last_print = time.monotonic()
        time.sleep(0.5)


def direct_run_deployment(count: int, max_s: float) -> dict:
    from prefect.deployments import run_deployment

    latencies, began = [], time.perf_counter()
    for i in range(count):
        sent = time.perf_counter()
        run_deployment("process-file/gpu-work", timeout=0, as_subflow=False,
                       parameters={"task_id": str(uuid.uuid4()), "input_uri": f"gs://bench-media/direct/{i:05d}.mp4",
                                   "params": {"i": i}}, idempotency_key=str(uuid.uuid4()), tags=["bench-direct"])
        latencies.append(time.perf_counter() - sent)
        if time.perf_counter() - began > max_s:
            break
    wall = time.perf_counter() - began
    return {"latencies": latencies, "wall": wall, "per_s": len(latencies) / wall}


def hub_flow_runs() -> tuple[int, int]:
    """(flow runs the hub created, distinct task ids among them): tag gpuops-hub, read page by page."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    tagged = FlowRunFilter(tags=FlowRunFilterTags(all_=["gpuops-hub"]))
    runs, task_ids = 0, set()
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_flow_runs(flow_run_filter=tagged, sort=FlowRunSort.ID_DESC, limit=200, offset=runs)
            runs += len(page)
            task_ids.update(run.parameters.get("task_id") for run in page)
            if len(page) < 200:
                return runs, len(task_ids)


# --- main -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000, help="measured POSTs per endpoint (default 1000)")
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rate-per-s", type=float, default=10.0, help="the hub's --rate-per-s (its default: 10)")
    parser.add_argument("--direct", type=int, default=150, help="sequential run_deployment calls (default 150)")
    parser.add_argument("--direct-s", type=float, default=40.0, help="...or this many seconds, whichever is first")
    parser.add_argument("--drain-s", type=float, default=150.0,
                        help="longest wait for the hub to dispatch all (default 150 s)")
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0

    from gpuops.stack import PrefectServer, free_port, stop_group

    work = Path(tempfile.mkdtemp(prefix="gpuops-hub-bench-"))
    server, hub, bare = PrefectServer(work / "prefect"), None, None
    try:
        load_before = os.getloadavg()[0]
        print(f"starting Prefect server (SQLite) under {work} ...", flush=True)
        # Nothing polls the pool, so every run would turn Late 15 s on; marking hundreds Late every 5 s slowed
        # this server's run creation about threefold (measured), hub and direct alike: not what is measured here.
        os.environ["PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED"] = "false"
        server.start(timeout_s=180)
        os.environ.update(server.env())  # before prefect is imported here: this process's client uses it
        create_work_deployment()

        db = work / "outbox.sqlite"
        hub_port, bare_port = free_port(), free_port()
        hub_env = {**os.environ, **server.env(), "GPUOPS_HUB_API_KEY": API_KEY,
                   "GITHUB_WEBHOOK_SECRET": "bench-github-secret", "GPUOPS_PUBSUB_PUSH_TOKEN": "bench-push-token"}
        hub = started([GPUOPS, "hub", "--port", str(hub_port), "--db", str(db), "--rate-per-s", str(args.rate_per_s)],
                      hub_env, work / "hub.log", f"http://127.0.0.1:{hub_port}/healthz")
        bare = started([sys.executable, str(Path(__file__).resolve()), "--serve-bare", str(bare_port)],
                       dict(os.environ), work / "bare.log", f"http://127.0.0.1:{bare_port}/healthz")

        print(f"accept: {args.tasks} POSTs, concurrency {args.concurrency}, bare FastAPI then the hub ...", flush=True)
        bare_load = asyncio.run(load(f"http://127.0.0.1:{bare_port}", args.tasks, args.concurrency, "bare"))
        accept_began = time.time()
        hub_load = asyncio.run(load(f"http://127.0.0.1:{hub_port}", args.tasks, args.concurrency, "hub"))

        total = len(hub_load["ids"])
        print(f"hub dispatch: waiting for {total} accepted tasks to be dispatched ...", flush=True)
        counts, drained = wait_drained(db, total, args.drain_s)
        views = asyncio.run(task_views(f"http://127.0.0.1:{hub_port}", hub_load["ids"], args.concurrency))
        done_at = sorted(datetime.fromisoformat(v["updated"].replace("Z", "+00:00")).timestamp()
                         for v in views if v["state"] == "dispatched")
        dispatched = len(done_at)
        span = done_at[-1] - done_at[0] if dispatched > 1 else float("nan")
        dispatch_per_s = (dispatched - 1) / span if dispatched > 1 else float("nan")
        stop_group(hub)  # before the direct calls: nothing else creates flow runs while they are timed
        runs_by_hub, tasks_with_runs = hub_flow_runs()

        print(f"direct: sequential run_deployment(timeout=0), up to {args.direct} calls / {args.direct_s:.0f} s ...",
              flush=True)
        direct = direct_run_deployment(args.direct, args.direct_s)

        drain_note = "" if drained else (f" (not drained within --drain-s {args.drain_s:.0f}: the rate is of "
                                          "those dispatched)")
        ms = lambda s: f"{s * 1000:.1f}"  # noqa: E731
        rows = [
            ("accept  POST /v1/tasks", "gpuops hub (SQLite outbox, fsync)", len(hub_load["latencies"]),
             ms(statistics.median(hub_load["latencies"])), ms(percentile(hub_load["latencies"], 99)),
             f"{hub_load['accepted_per_s']:.0f} accepted/s"),
            ("accept  POST /v1/tasks", "bare FastAPI, answers 202", len(bare_load["latencies"]),
             ms(statistics.median(bare_load["latencies"])), ms(percentile(bare_load["latencies"], 99)),
             f"{bare_load['accepted_per_s']:.0f} accepted/s"),
            ("dispatch accepted -> flow run", f"gpuops hub (--rate-per-s {args.rate_per_s:g})", dispatched, "-", "-",
             f"{dispatch_per_s:.1f} dispatched/s"),
            ("dispatch run_deployment", "direct, sequential, timeout=0", len(direct["latencies"]),
             ms(statistics.median(direct["latencies"])), ms(percentile(direct["latencies"], 99)),
             f"{direct['per_s']:.1f} runs/s"),
        ]
        header = ("measure", "target", "n", "p50 ms", "p99 ms", "rate")
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        line = lambda r: "  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(r, widths)))
        print()
        print(line(header))
        print("  ".join("-" * w for w in widths))
        for row in rows:
            print(line(row))
        print()
        print(f"loopback, {os.cpu_count()} CPUs shared by the client, the hub, the bare app and the Prefect server "
              f"(1-minute load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after: anything else running "
              f"shows in every row); outbox on {db.parent} ({filesystem(db.parent)}); Prefect on SQLite, its late-runs "
              "service off (the pool is idle on purpose).")
        print(f"accept: {args.tasks} measured POSTs per endpoint after {WARMUP} unmeasured, one httpx.AsyncClient, "
              f"{args.concurrency} in flight; latency = send to answer; rate = 202s / batch wall time "
              f"(hub {hub_load['wall']:.1f} s, bare {bare_load['wall']:.1f} s). Answers: hub {hub_load['statuses']}, "
              f"bare {bare_load['statuses']}.")
        print(f"hub dispatch: all {total} accepted tasks (warm-up included); rate = (dispatched - 1) / (last - first "
              f"`updated` of GET /v1/tasks/{{id}}) = {dispatched - 1} / {span:.1f} s; last dispatch "
              f"{(done_at[-1] - accept_began) if done_at else float('nan'):.1f} s after the batch began; outbox "
              f"{counts}{drain_note}; "
              f"flow runs tagged gpuops-hub in Prefect after the hub stopped: {runs_by_hub} for {tasks_with_runs} "
              f"distinct task ids.")
        print(f"direct: run_deployment('process-file/gpu-work', timeout=0) called {len(direct['latencies'])} times "
              f"one after another from this process against the same server once the hub was stopped (until "
              f"{args.direct} calls or {args.direct_s:.0f} s); rate = calls / {direct['wall']:.1f} s wall.")
        # A run created just before the hub stopped may have no "dispatched" yet; a second run per task is a bug.
        ok = runs_by_hub == tasks_with_runs >= dispatched and hub_load["statuses"] == {202: args.tasks}
        if not ok:
            print("FAILED: a task has more than one flow run, or a POST was not accepted", file=sys.stderr)
        return 0 if ok else 1
    finally:
        for proc in (bare, hub):
            stop_group(proc)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def filesystem(path: Path) -> str:
    try:
        out = subprocess.run(["df", "--output=fstype", str(path)], capture_output=True, text=True, timeout=10)
        return out.stdout.split()[-1]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "filesystem unknown"


if __name__ == "__main__":
    sys.exit(main())
