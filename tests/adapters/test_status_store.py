"""status.json and logs in an S3-compatible bucket: boto3 over real HTTP to moto on 127.0.0.1.

Conditional writes (If-Match / If-None-Match) keep concurrent writers from losing updates; transient
errors are retried by gpuops.retry; no credential leaves in a repr, an error or a log."""
import logging
import threading
from datetime import datetime, timedelta, timezone

import pytest
from botocore.exceptions import ClientError

from gpuops import job_status as js, retry
from gpuops.status_store import MissingJob, StatusStore

T0 = datetime(2025, 6, 18, 14, 30, tzinfo=timezone.utc)
SHA = "a1b2c3d4"
FAST = retry.Backoff(attempts=4, initial_s=0.001)


@pytest.fixture
def store(status_bucket):
    return StatusStore.from_env(backoff=FAST)


def test_round_trip_and_a_second_create_changes_nothing(store):
    doc = js.new_status(SHA, T0)
    assert store.create(doc) is True
    assert store.read(SHA) == doc
    later = js.transition(doc, "build", "Running", T0 + timedelta(minutes=1))
    assert store.create(later) is False and store.read(SHA) == doc


def test_update_applies_a_transition_and_a_bad_one_writes_nothing(store):
    store.create(js.new_status(SHA, T0))
    written = store.update(SHA, lambda d: js.transition(d, "build", "Running", T0 + timedelta(minutes=1)))
    assert store.read(SHA) == written and written["overallStatus"] == "Running"
    with pytest.raises(js.BadTransition):
        store.update(SHA, lambda d: js.transition(d, "run", "Running", T0 + timedelta(minutes=2)))
    assert store.read(SHA) == written


def test_missing_job(store):
    with pytest.raises(MissingJob):
        store.read("0000000")
    with pytest.raises(MissingJob):
        store.update("0000000", lambda d: d)


def test_two_concurrent_writers_each_applying_50_updates_lose_none(status_bucket):
    # Two processes' worth of writers: each its own client and connection pool.
    writers = [StatusStore.from_env(backoff=FAST) for _ in range(2)]
    writers[0].create({**js.new_status(SHA, T0), "seen": []})
    errors = []

    def work(store, name):
        try:
            for i in range(50):
                store.update(SHA, lambda d: {**d, "seen": d["seen"] + [f"{name}-{i}"]})
        except Exception as exc:  # noqa: BLE001  reported below, with the thread's name
            errors.append((name, exc))

    threads = [threading.Thread(target=work, args=(s, n)) for s, n in zip(writers, "ab")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    seen = writers[0].read(SHA)["seen"]
    assert sorted(seen) == sorted(f"{n}-{i}" for n in "ab" for i in range(50))
    assert [s for s in seen if s.startswith("a-")] == [f"a-{i}" for i in range(50)]  # each writer's order kept


def test_a_transient_503_is_retried(store, status_bucket):
    store.create(js.new_status(SHA, T0))
    status_bucket.stand_in.fail_next("GET", 503, "SlowDown")
    status_bucket.stand_in.fail_next("PUT", 503, "ServiceUnavailable")
    written = store.update(SHA, lambda d: js.transition(d, "build", "Running", T0 + timedelta(minutes=1)))
    assert [(m, s) for m, _, s in status_bucket.stand_in.injected] == [("GET", 503), ("PUT", 503)]
    assert store.read(SHA) == written


@pytest.mark.parametrize("after", [False, True], ids=["put-lost-before", "answer-lost-after"])
def test_a_failed_put_lands_exactly_once(store, status_bucket, after):
    """A put whose answer was lost after it landed is found by the read-back and not applied twice
    (sent again over the old ETag it would meet a 412, and the change would run on its own result)."""
    store.create({**js.new_status(SHA, T0), "n": 0})
    status_bucket.stand_in.fail_next("PUT", 500, "InternalError", after=after)
    assert store.update(SHA, lambda d: {**d, "n": d["n"] + 1})["n"] == 1
    assert store.read(SHA)["n"] == 1
    assert len(status_bucket.stand_in.injected) == 1


def test_a_4xx_is_not_retried(status_bucket):
    store = StatusStore(bucket="no-such-bucket", endpoint_url=status_bucket.url, backoff=FAST)
    with pytest.raises(ClientError) as caught:
        store.read(SHA)
    assert caught.value.response["Error"]["Code"] == "NoSuchBucket"
    assert status_bucket.stand_in.injected == []


def test_errors_give_up_after_the_bound(store, status_bucket):
    status_bucket.stand_in.fail_next("GET", 503, "SlowDown", count=10)
    with pytest.raises(ClientError):
        store.read(SHA)
    assert len(status_bucket.stand_in.injected) == FAST.attempts


def test_logs_append_without_losing_lines_and_the_page_uploads(store, status_bucket):
    store.append_log(SHA, "build", "step 1\n")
    store.append_log(SHA, "build", "step 2\n")
    store.append_log(SHA, "run", "hello from the app\n")
    assert store.read_log(SHA, "build") == "step 1\nstep 2\n"
    assert store.read_log(SHA, "run") == "hello from the app\n"
    assert store.read_log("0000000", "run") == ""
    assert store.upload_page("<html></html>") == f"s3://{status_bucket.bucket}/index.html"


def test_list_jobs_reads_every_status_and_names_a_broken_one(store, status_bucket):
    store.create(js.new_status(SHA, T0))
    store.create(js.new_status("deadbee", T0))
    store.append_log("0123456", "build", "no status yet\n")  # a job folder without status.json
    store._client.put_object(Bucket=status_bucket.bucket, Key="badc0de/status.json", Body=b"{not json")
    store.upload_page("<html></html>")
    jobs = {j["jobId"]: j for j in store.list_jobs()}
    assert set(jobs) == {SHA, "deadbee", "badc0de"}
    assert "not JSON" in jobs["badc0de"]["unreadable"] and jobs[SHA]["overallStatus"] == "Pending"
    assert store.job_ids("dead") == ["deadbee"]


def test_no_credential_in_repr_errors_or_logs(status_bucket, caplog):
    secret = "SuperSecretKey/abc+123"
    store = StatusStore(bucket="no-such-bucket", endpoint_url=status_bucket.url, access_key_id="AKIATESTKEY",
                        secret_access_key=secret, backoff=FAST)
    status_bucket.stand_in.fail_next("GET", 503, "SlowDown")
    with caplog.at_level(logging.DEBUG, logger="gpuops"), pytest.raises(ClientError) as caught:
        store.read(SHA)
    seen = " ".join([repr(store), str(vars(store).keys()), str(caught.value), repr(caught.value),
                     str(caught.value.response), caplog.text])
    assert secret not in seen and "AKIATESTKEY" not in seen
    assert "transient" in caplog.text  # the retry was logged, without the key


def test_r2_endpoints_get_region_auto():
    from gpuops.status_store import default_region

    assert default_region("https://acct.r2.cloudflarestorage.com") == "auto"
