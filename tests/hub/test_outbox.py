"""The hub's outbox on both backends: idempotent accepts, leases, two processes draining one outbox,
and accepts that survive a SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gpuops.hub.outbox import NewTask, OutboxError, open_outbox
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgresql"])
def outbox_url(request, fast_tmp_path):
    """A fresh, empty outbox on each backend: a SQLite file, or a new database on the session's cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{fast_tmp_path / 'outbox.sqlite3'}"
    return request.getfixturevalue("postgres_database")


@pytest.fixture
def outbox(outbox_url):
    with open_outbox(outbox_url) as box:
        yield box


def new_task(key=None, **fields):
    fields = {"kind": "task", "deployment": "hub-work/gpu", "parameters": {"input_uri": "gs://b/a.mp4"},
              "route": "gpu", "destination": "cloud-run", "idempotency_key": key} | fields
    task = NewTask(**fields)
    task.answer = {"id": task.id, "status_url": f"/v1/tasks/{task.id}"}
    return task


def test_accepting_one_key_five_times_gives_one_task(outbox):
    results = [outbox.accept(new_task("key-1")) for _ in range(5)]
    first = results[0][0]
    assert [created for _, created in results] == [True, False, False, False, False]
    assert {task.id for task, _ in results} == {first.id}
    assert all(task.answer == {"id": first.id, "status_url": f"/v1/tasks/{first.id}"} for task, _ in results)
    assert (first.state, first.attempts, first.parameters) == ("queued", 0, {"input_uri": "gs://b/a.mp4"})
    # Keys are per kind (a Pub/Sub message id never collides with a client's key); no key: always new.
    assert outbox.accept(new_task("key-1", kind="pubsub"))[1] is True
    assert outbox.accept(new_task())[1] and outbox.accept(new_task())[1]
    assert outbox.counts() == {"queued": 4, "dispatched": 0, "dead-lettered": 0}


def test_concurrent_accepts_of_one_key_give_one_task(outbox_url):
    """Eight threads, each with its own connection, accept each of 10 keys at once: one task per key,
    the winner's, returned to every loser too."""
    boxes = [open_outbox(outbox_url) for _ in range(8)]
    barrier = threading.Barrier(len(boxes))
    results: list[tuple[str, str, bool]] = []

    def accept_all(box):
        for n in range(10):
            barrier.wait()
            task, created = box.accept(new_task(f"key-{n}"))
            results.append((f"key-{n}", task.id, created))

    threads = [threading.Thread(target=accept_all, args=(box,)) for box in boxes]
    [thread.start() for thread in threads]
    [thread.join(60) for thread in threads]
    try:
        assert len(results) == 80
        for n in range(10):
            mine = [(task_id, created) for key, task_id, created in results if key == f"key-{n}"]
            assert len({task_id for task_id, _ in mine}) == 1, f"key-{n} gave two tasks"
            assert sum(created for _, created in mine) == 1
        assert boxes[0].counts()["queued"] == 10
    finally:
        [box.close() for box in boxes]


def test_only_the_lease_holder_moves_a_task(outbox):
    task, _ = outbox.accept(new_task("k"))
    assert outbox.get("no-such-task") is None
    [claimed] = outbox.claim("hub-a", limit=10, lease_s=60)
    assert (claimed.id, claimed.attempts) == (task.id, 1)
    assert outbox.claim("hub-b", limit=10, lease_s=60) == []  # leased: nobody else gets it
    # hub-b holds no lease: nothing it says changes the task.
    assert not outbox.dispatched(task.id, "hub-b", "run-b")
    assert not outbox.retry_later(task.id, "hub-b", "err", 0)
    assert not outbox.dead_letter(task.id, "hub-b", "err")
    assert outbox.get(task.id).state == "queued"

    # A retry frees the task and makes it due later, not now.
    assert outbox.retry_later(task.id, "hub-a", "Prefect answered 503", delay_s=0.5)
    again = outbox.get(task.id)
    assert (again.state, again.last_error, again.attempts) == ("queued", "Prefect answered 503", 1)
    assert again.next_attempt_at >= again.updated_at + 0.5 - 1e-3
    assert not outbox.dispatched(task.id, "hub-a", "run-a")  # the lease went with the retry
    assert outbox.claim("hub-b", limit=10, lease_s=60) == []
    time.sleep(0.6)
    assert [t.id for t in outbox.claim("hub-b", limit=10, lease_s=60)] == [task.id]

    assert outbox.dispatched(task.id, "hub-b", "run-b")
    done = outbox.get(task.id)
    assert (done.state, done.flow_run_id, done.attempts, done.next_attempt_at) == ("dispatched", "run-b", 2, None)
    # Finished: no second dispatch, no retry, no claim.
    assert not outbox.dispatched(task.id, "hub-b", "run-c")
    assert not outbox.retry_later(task.id, "hub-b", "late", 0)
    assert outbox.claim("hub-a", limit=10, lease_s=60) == []

    doomed, _ = outbox.accept(new_task("k2", deployment="gone/missing"))
    outbox.claim("hub-a", limit=10, lease_s=60)
    assert outbox.dead_letter(doomed.id, "hub-a", "deployment gone/missing not found")
    dead = outbox.get(doomed.id)
    assert (dead.state, dead.flow_run_id) == ("dead-lettered", None)
    assert dead.last_error == "deployment gone/missing not found"
    assert outbox.counts() == {"queued": 0, "dispatched": 1, "dead-lettered": 1}


def test_claims_take_the_oldest_due_tasks_up_to_the_limit(outbox):
    ids = [outbox.accept(new_task(f"k{n}"))[0].id for n in range(5)]
    assert [t.id for t in outbox.claim("hub-a", limit=2, lease_s=60)] == ids[:2]
    assert [t.id for t in outbox.claim("hub-b", limit=10, lease_s=60)] == ids[2:]


def test_an_expired_lease_is_taken_over(outbox):
    """A hub that crashed after claiming never finishes: its lease runs out and another hub takes the task;
    the first hub, should it come back, can no longer finish it."""
    task, _ = outbox.accept(new_task("k"))
    assert len(outbox.claim("hub-a", limit=1, lease_s=0.3)) == 1
    assert outbox.claim("hub-b", limit=1, lease_s=60) == []
    time.sleep(0.4)
    [taken] = outbox.claim("hub-b", limit=1, lease_s=60)
    assert (taken.id, taken.attempts) == (task.id, 2)
    assert not outbox.dispatched(task.id, "hub-a", "run-a")
    assert outbox.dispatched(task.id, "hub-b", "run-b")
    assert outbox.get(task.id).flow_run_id == "run-b"


# One hub process in miniature: open the outbox, say it is ready, wait for the start signal, then
# claim -> dispatched until nothing is left; record every task it claimed and every task it marked
# dispatched. Each dispatch takes a millisecond, as a real run_deployment call takes longer, so neither
# process can drain the outbox before the other has begun.
DRAIN = """
import json, os, sys, time
from gpuops.hub.outbox import open_outbox
url, owner, ready, go, record = sys.argv[1:]
claimed, dispatched = [], []
with open_outbox(url) as box:
    open(ready, "w").close()
    while not os.path.exists(go):
        time.sleep(0.01)
    while True:
        tasks = box.claim(owner, limit=10, lease_s=300)
        if not tasks and box.counts()["queued"] == 0:
            break
        for task in tasks:
            claimed.append(task.id)
            time.sleep(0.001)
            if box.dispatched(task.id, owner, f"run-of-{owner}"):
                dispatched.append(task.id)
with open(record, "w") as out:
    json.dump({"claimed": claimed, "dispatched": dispatched}, out)
"""


def test_two_processes_drain_one_outbox_each_task_dispatched_once(outbox_url, tmp_path):
    with open_outbox(outbox_url) as box:
        ids = {box.accept(new_task(f"key-{n}"))[0].id for n in range(1000)}
        go = tmp_path / "go"
        hubs = {owner: subprocess.Popen([sys.executable, "-c", DRAIN, outbox_url, owner, str(tmp_path / f"{owner}.ready"),
                                         str(go), str(tmp_path / f"{owner}.json")], cwd=ROOT)
                for owner in ("hub-a", "hub-b")}
        wait_until(lambda: all((tmp_path / f"{owner}.ready").exists() for owner in hubs), "both hubs opened the outbox")
        go.touch()  # both start together, so they really contend
        assert all(hub.wait(120) == 0 for hub in hubs.values())
        records = {owner: json.loads((tmp_path / f"{owner}.json").read_text()) for owner in hubs}

        a, b = (records[owner] for owner in ("hub-a", "hub-b"))
        if outbox_url.startswith("postgresql"):
            # SKIP LOCKED lets both work at once. SQLite serializes writers: under load one process can win
            # every lock (seen in CI), which is still exactly-once, so only PostgreSQL must show both working.
            assert a["dispatched"] and b["dispatched"], "one hub drained everything: no contention was shown"
        assert not set(a["claimed"]) & set(b["claimed"]), "a task was leased to both hubs"
        per_task = {task_id: 0 for task_id in ids}
        for record in (a, b):
            for task_id in record["dispatched"]:
                per_task[task_id] += 1
        assert set(per_task.values()) == {1}
        for owner, record in records.items():  # the outbox agrees on who dispatched what
            recorded = {box.get(task_id).flow_run_id for task_id in record["dispatched"]}
            assert recorded <= {f"run-of-{owner}"}, f"{owner}'s tasks name another hub's run: {recorded}"
        assert box.counts() == {"queued": 0, "dispatched": 1000, "dead-lettered": 0}


# Accept one task, say so, then hang holding the connection open until killed.
ACCEPT_THEN_HANG = """
import sys, time
from gpuops.hub.outbox import NewTask, open_outbox
box = open_outbox(sys.argv[1])
task, _ = box.accept(NewTask(kind="pubsub", deployment="hub-work/cpu", parameters={"input_uri": "gs://b/x.csv"},
                             idempotency_key="message-1", answer={"accepted": True}))
print(task.id, flush=True)
time.sleep(600)
"""


def test_an_accepted_task_survives_sigkill(outbox_url):
    """accept() has committed when it returns: a hub killed right after is restarted to find the task.
    (A SIGKILL cannot show the fsync itself; that is synchronous=FULL in WAL mode / PostgreSQL's commit.)"""
    hub = subprocess.Popen([sys.executable, "-c", ACCEPT_THEN_HANG, outbox_url], cwd=ROOT,
                           stdout=subprocess.PIPE, text=True)
    try:
        task_id = hub.stdout.readline().strip()
    finally:
        os.kill(hub.pid, signal.SIGKILL)
        hub.wait(10)
        hub.stdout.close()
    assert task_id
    with open_outbox(outbox_url) as box:
        task = box.get(task_id)
        assert task is not None and (task.state, task.kind, task.answer) == ("queued", "pubsub", {"accepted": True})
        assert task.parameters == {"input_uri": "gs://b/x.csv"}
        again, created = box.accept(NewTask(kind="pubsub", deployment="hub-work/cpu", parameters={},
                                            idempotency_key="message-1"))
        assert (again.id, created) == (task_id, False)  # Pub/Sub's redelivery after the restart: no new task
        assert [t.id for t in box.claim("hub-restarted", limit=10, lease_s=60)] == [task_id]


def test_no_secret_or_request_in_reprs_and_errors(outbox_url, tmp_path):
    task, _ = (box := open_outbox(outbox_url)).accept(new_task(parameters={"prompt": "private words"}))
    try:
        assert "private words" not in repr(task)
        # A value the database refuses (PostgreSQL: NUL in text) must not come back in the error.
        if outbox_url.startswith("postgresql"):
            with pytest.raises(OutboxError) as refused:
                box.accept(new_task("private-key\x00"))
            assert "private-key" not in str(refused.value) and refused.value.__cause__ is None
    finally:
        box.close()
    with pytest.raises(ValueError) as bad_scheme:
        open_outbox("mysql://hub:hunter2@127.0.0.1/outbox")
    assert "hunter2" not in str(bad_scheme.value)
    with pytest.raises(OutboxError) as unreachable:  # port 9 (discard) on loopback: nothing listens
        open_outbox("postgresql://hub:hunter2@127.0.0.1:9/outbox")
    assert "hunter2" not in str(unreachable.value)


def test_the_default_outbox_is_a_sqlite_file_in_the_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUOPS_STATE_DIR", str(tmp_path))
    with open_outbox(None) as box:
        box.accept(new_task("k"))
    with open_outbox("") as box:
        assert box.counts()["queued"] == 1
    assert (tmp_path / "hub" / "outbox.sqlite3").exists()


def test_prefect_itself_runs_on_the_same_postgresql(postgres_server, tmp_path):
    """Beyond one machine Prefect runs on PostgreSQL too (PREFECT_API_DATABASE_CONNECTION_URL): the server
    starts on the cluster and creates flow runs with idempotency keys as on SQLite."""
    import psycopg

    from gpuops.stack import PrefectServer

    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as admin:
        admin.execute('CREATE DATABASE "prefect_on_pg"')
    url = postgres_server.replace("postgresql://", "postgresql+asyncpg://") + "/prefect_on_pg"
    server = PrefectServer(tmp_path / "prefect", database_url=url).start(timeout_s=180)
    try:
        import httpx

        api = server.api_url
        flow = httpx.post(f"{api}/flows/", json={"name": "pg-check"}, timeout=30).json()
        runs = [httpx.post(f"{api}/flow_runs/", json={"flow_id": flow["id"], "idempotency_key": "same"},
                           timeout=30).json()["id"] for _ in range(3)]
        assert len(set(runs)) == 1
        with psycopg.connect(f"{postgres_server}/prefect_on_pg") as db:
            assert db.execute("SELECT count(*) FROM flow_run").fetchone()[0] == 1  # it really is in PostgreSQL
    finally:
        server.stop()
