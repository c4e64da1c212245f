"""Pub/Sub push into the hub through Google's own Pub/Sub emulator, with its at-least-once redelivery.

The emulator (`gcloud beta emulators pubsub start`, a Java server) holds a topic and a push
subscription; a GCS OBJECT_FINALIZE notification published to the topic is pushed by the emulator
to a small pass-through proxy (this file, 127.0.0.1) in front of `gpuops hub`. The proxy hands the
first delivery of each message to the hub, and when the hub accepts it answers the emulator 503
instead, as if the hub's answer were lost; Pub/Sub then redelivers the same message id, which the
proxy passes through. The hub must have started exactly one flow run of gpu-work for it.
Skipped, saying why, where gcloud or its pubsub-emulator component is not installed.
"""
import base64
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.hub.test_hub_app import (PUSH_TOKEN, deployment_name, flow_run, free_port, hub,  # noqa: F401  fixtures
                                    runs_with, work_deployments)

PROJECT = "gpuops-test"
BUCKET = "gpuops-uploads"


# --- the emulator ------------------------------------------------------------------------------


def _emulator_missing() -> str | None:
    """Why the emulator cannot run here, or None."""
    gcloud = shutil.which("gcloud")
    if not gcloud:
        return "gcloud (Google Cloud SDK) is not installed: the Pub/Sub emulator comes with it"
    sdk_root = Path(os.path.realpath(gcloud)).parent.parent
    if (sdk_root / "platform").is_dir() and not (sdk_root / "platform" / "pubsub-emulator").is_dir():
        return (f"gcloud's pubsub-emulator component is not installed under {sdk_root}: "
                "`gcloud components install pubsub-emulator` (Debian: google-cloud-cli-pubsub-emulator)")
    if not shutil.which("java"):
        return "the Pub/Sub emulator needs a Java runtime (java) on the PATH"
    return None


# Decided at collection, so a machine without the emulator does not start Prefect and the hub first.
_MISSING = _emulator_missing()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")


def _stop_group(proc: subprocess.Popen) -> None:
    """TERM the emulator's process group (gcloud and its Java child), KILL what is left after 15 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # the group outlives gcloud while the Java child runs
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(5)


@pytest.fixture(scope="module")
def pubsub_emulator(tmp_path_factory):
    """Google's Pub/Sub emulator on a free loopback port, in its own process group; yields its REST URL."""
    home = tmp_path_factory.mktemp("pubsub-emulator")
    port = free_port()
    env = {**os.environ, "CLOUDSDK_CONFIG": str(home / "gcloud-config"), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
           "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1", "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "1"}
    (home / "data").mkdir()
    log_path = home / "emulator.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(["gcloud", "beta", "emulators", "pubsub", "start", f"--host-port=127.0.0.1:{port}",
                                 f"--project={PROJECT}", f"--data-dir={home / 'data'}"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the Pub/Sub emulator exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:  # answers "Ok" once serving
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the Pub/Sub emulator did not answer within 90 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        _stop_group(proc)


def _rest(method: str, url: str, body: dict | None = None) -> dict:
    answer = httpx.request(method, url, json=body, timeout=30)
    assert answer.status_code == 200, f"{method} {url}: {answer.status_code} {answer.text}"
    return answer.json()


@contextmanager
def push_subscription(emulator: str, name: str, push_endpoint: str):
    """A new topic and a push subscription to `push_endpoint` (retried at Pub/Sub's shortest backoff);
    yields the topic's path; deletes both after, so a message the hub refuses stops being redelivered."""
    suffix = uuid.uuid4().hex[:8]
    topic = f"projects/{PROJECT}/topics/{name}-{suffix}"
    subscription = f"projects/{PROJECT}/subscriptions/{name}-{suffix}-hub"
    _rest("PUT", f"{emulator}/v1/{topic}")
    created = _rest("PUT", f"{emulator}/v1/{subscription}", {
        "topic": topic, "ackDeadlineSeconds": 10, "pushConfig": {"pushEndpoint": push_endpoint},
        # 0 s is the least minimumBackoff Pub/Sub allows (its default is 10 s): redelivery within seconds.
        "retryPolicy": {"minimumBackoff": "0s", "maximumBackoff": "2s"}})
    assert created["pushConfig"]["pushEndpoint"] == push_endpoint
    try:
        yield topic
    finally:
        httpx.delete(f"{emulator}/v1/{subscription}", timeout=30)
        httpx.delete(f"{emulator}/v1/{topic}", timeout=30)


def publish(emulator: str, topic: str, data: bytes, attributes: dict) -> str:
    published = _rest("POST", f"{emulator}/v1/{topic}:publish", {
        "messages": [{"data": base64.b64encode(data).decode(), "attributes": attributes}]})
    return published["messageIds"][0]


def gcs_finalize(bucket: str, name: str) -> tuple[bytes, dict]:
    """What Cloud Storage publishes for a new object (payload format JSON_API_V1): the object's JSON
    resource as data, and the notification's attributes."""
    generation = str(time.time_ns() // 1000)
    resource = {"kind": "storage#object", "id": f"{bucket}/{name}/{generation}", "name": name, "bucket": bucket,
                "generation": generation, "metageneration": "1", "contentType": "video/mp4", "size": "1048576",
                "storageClass": "STANDARD", "timeCreated": "2026-11-23T00:00:00.000Z",
                "updated": "2026-11-23T00:00:00.000Z", "md5Hash": "1B2M2Y8AsgTpgAmY7PhCfg==", "crc32c": "AAAAAA=="}
    attributes = {"notificationConfig": f"projects/_/buckets/{bucket}/notificationConfigs/1",
                  "eventType": "OBJECT_FINALIZE", "payloadFormat": "JSON_API_V1", "bucketId": bucket,
                  "objectId": name, "objectGeneration": generation, "eventTime": "2026-11-23T00:00:00.000000Z"}
    return json.dumps(resource).encode(), attributes


# --- the proxy that loses the hub's first answer -----------------------------------------------


@dataclass
class Delivery:
    message_id: str | None
    hub_status: int
    hub_body: dict | None
    answered: int  # what the emulator got back


class LossyProxy:
    """Pass-through from the emulator to the hub. The first delivery of a message id that the hub
    accepts (2xx) is answered 503 to the emulator, the hub's answer dropped; everything else as the hub said."""

    def __init__(self, upstream: str):
        self.upstream, self.deliveries, self._lock = upstream, [], threading.Lock()
        self._accepted_once: set[str] = set()
        self._client = httpx.Client(timeout=30)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    message_id = json.loads(body)["message"].get("messageId")
                except (ValueError, KeyError, TypeError, AttributeError):
                    message_id = None
                hub = proxy._client.post(f"{proxy.upstream}{self.path}", content=body,
                                         headers={"content-type": self.headers.get("content-type", "application/json")})
                with proxy._lock:
                    lose = 200 <= hub.status_code < 300 and message_id not in proxy._accepted_once
                    if lose:
                        proxy._accepted_once.add(message_id)
                    answered = 503 if lose else hub.status_code
                    try:
                        hub_body = hub.json()
                    except ValueError:
                        hub_body = None
                    proxy.deliveries.append(Delivery(message_id, hub.status_code, hub_body, answered))
                out = b'{"error": "the hub\'s answer was lost"}' if lose else hub.content
                self.send_response(answered)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="lossy-proxy", daemon=True)
        self._thread.start()

    def of(self, message_id: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.message_id == message_id]

    def wait_for(self, message_id: str, done, timeout_s: float = 60) -> list[Delivery]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            seen = self.of(message_id)
            if done(seen):
                return seen
            time.sleep(0.1)
        raise TimeoutError(f"deliveries of message {message_id} after {timeout_s} s: {self.of(message_id)}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._client.close()


@pytest.fixture(scope="module")
def proxy(hub):  # noqa: F811  the hub fixture imported above
    running = LossyProxy(hub.url)
    yield running
    running.close()


def push_endpoint(proxy: LossyProxy) -> str:
    return f"{proxy.url}/v1/pubsub/push?token={PUSH_TOKEN}"


# --- tests -------------------------------------------------------------------------------------


def test_a_finalize_notification_starts_one_run_though_the_first_answer_is_lost_and_pubsub_redelivers(
        hub, pubsub_emulator, proxy):  # noqa: F811
    name = f"in/{uuid.uuid4().hex}/movie.mp4"
    uri = f"gs://{BUCKET}/{name}"
    with push_subscription(pubsub_emulator, "uploads", push_endpoint(proxy)) as topic:
        data, attributes = gcs_finalize(BUCKET, name)
        message_id = publish(pubsub_emulator, topic, data, attributes)
        # Until a delivery of it is acknowledged (2xx to the emulator): the first is not, so Pub/Sub redelivers.
        deliveries = proxy.wait_for(message_id, lambda seen: any(d.answered < 300 for d in seen))

        assert len(deliveries) >= 2, deliveries
        assert deliveries[0].hub_status == 202 and deliveries[0].answered == 503
        assert {d.hub_status for d in deliveries} == {202}
        assert len({d.hub_body["id"] for d in deliveries}) == 1  # every delivery: the first answer
        first = deliveries[0].hub_body
        assert first["route"] == "gpu" and first["idempotency_key"] == message_id

        seen = hub.wait_dispatched(first["id"])
        assert seen["state"] == "dispatched" and seen["kind"] == "pubsub"
        run = flow_run(seen["flow_run_id"])
        assert deployment_name(run) == "gpu-work"
        assert run.parameters["task_id"] == first["id"] and run.parameters["input_uri"] == uri
        assert run.parameters["params"]["pubsub_attributes"]["objectId"] == name

        time.sleep(2)  # a second run would show by now
        # At least once: Pub/Sub may deliver it yet again, even after the acknowledgement; each gets the first answer.
        again = proxy.of(message_id)
        assert {(d.hub_status, d.hub_body["id"]) for d in again} == {(202, first["id"])}, again
    assert len(runs_with("gpu-work", input_uri=uri)) == 1


def test_a_malformed_notification_published_to_the_topic_gets_400_from_the_hub(
        hub, pubsub_emulator, proxy):  # noqa: F811
    name = f"in/{uuid.uuid4().hex}/broken.mp4"
    with push_subscription(pubsub_emulator, "malformed", push_endpoint(proxy)) as topic:
        # A publisher that sent plain text where Cloud Storage's JSON_API_V1 payload is the object's JSON.
        _, attributes = gcs_finalize(BUCKET, name)
        message_id = publish(pubsub_emulator, topic, b"movie.mp4 uploaded", attributes)
        deliveries = proxy.wait_for(message_id, lambda seen: len(seen) >= 1)
    # Pub/Sub keeps redelivering a 400 unless the subscription has a dead-letter policy: the subscription is gone now.
    delivered = deliveries[0]
    assert (delivered.hub_status, delivered.answered) == (400, 400)
    assert delivered.hub_body["field"] == "message.data", delivered.hub_body
    assert runs_with("gpu-work", input_uri=f"gs://{BUCKET}/{name}") == []
