"""gpuops-docker-gpu: prefect-docker's worker asks the Docker engine for the host's GPUs.

Tested up to the engine boundary: the pool file's template goes through prefect-docker's own job
configuration and `DockerWorker._build_container_settings` / `_create_container`, and docker-py sends
`POST /containers/create` over real HTTP to a recorder on 127.0.0.1, which answers only what docker-py
reads back (`/version`, the created container's `/json`). No engine runs a container here.
"""

import asyncio
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
POOL_FILE = ROOT / "deployments" / "work_pools" / "gpuops-docker-gpu.json"
CONTAINER_ID = "c0ffee" * 10 + "c0ff"
ALL_GPUS = {"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}


class _EngineRecorder(BaseHTTPRequestHandler):
    """Records each request; answers as Docker Engine 27 (API 1.47) would for these three calls."""

    def log_message(self, *args):  # quiet
        pass

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.server.requests.append(("GET", self.path, None))
        if self.path.endswith("/version"):
            self._answer(200, {"Version": "27.3.1", "ApiVersion": "1.47", "MinAPIVersion": "1.24", "Os": "linux"})
        elif self.path.endswith(f"/containers/{CONTAINER_ID}/json"):
            self._answer(200, {"Id": CONTAINER_ID, "Name": "/" + self.server.created_name,
                               "State": {"Status": "created"}})
        else:
            self._answer(404, {"message": f"not recorded: {self.path}"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
        self.server.requests.append(("POST", self.path, body))
        if "/containers/create" in self.path:
            self.server.created_name = self.path.split("name=", 1)[-1]
            self._answer(201, {"Id": CONTAINER_ID, "Warnings": []})
        else:
            self._answer(404, {"message": f"not recorded: {self.path}"})


@pytest.fixture
def docker_host(monkeypatch):
    """DOCKER_HOST pointing at the recorder, so the worker's own `docker.from_env()` client talks to it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EngineRecorder)
    server.requests, server.created_name = [], ""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{server.server_port}")
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    monkeypatch.delenv("DOCKER_CERT_PATH", raising=False)
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def create_container_body(job_variables: dict) -> dict:
    """The body of the worker's `POST /containers/create` for a flow run with these job variables."""
    from prefect.client.schemas.objects import FlowRun
    from prefect_docker.worker import DockerWorker, DockerWorkerJobConfiguration

    template = json.loads(POOL_FILE.read_text())["base_job_template"]
    configuration = asyncio.run(DockerWorkerJobConfiguration.from_template_and_values(template, job_variables))
    configuration.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="gpu-container"))
    worker = DockerWorker(work_pool_name="gpuops-docker-gpu", test_mode=True)
    docker_client = worker._get_client()  # docker.from_env(): DOCKER_HOST
    try:
        settings = worker._build_container_settings(docker_client, configuration)
        container = worker._create_container(docker_client, **settings)
    finally:
        docker_client.close()
    assert container.id == CONTAINER_ID
    return settings


def _posted(server) -> dict:
    (create,) = [body for method, path, body in server.requests if method == "POST"]
    return create


def test_the_container_create_request_asks_for_every_gpu(docker_host, prefect_api):
    settings = create_container_body({"image": "ghcr.io/gpuops/run-app:0123abc", "env": {"GPUOPS_RUN": "x"}})

    assert settings["device_requests"] == [{"Count": -1, "Capabilities": [["gpu"]]}]  # from the template
    body = _posted(docker_host)
    # What `docker run --gpus all` sends (the CLI sends DeviceIDs null, an empty list is the same).
    assert body["HostConfig"]["DeviceRequests"] == [ALL_GPUS]
    assert body["Image"] == "ghcr.io/gpuops/run-app:0123abc"
    assert body["Cmd"] == ["prefect", "flow-run", "execute"]
    env = dict(item.split("=", 1) for item in body["Env"])
    assert env["GPUOPS_RUN"] == "x" and env["PREFECT_API_URL"] == prefect_api
    assert "PREFECT__FLOW_RUN_ID" in env
    assert body["HostConfig"]["NetworkMode"] == "host"  # a 127.0.0.1 API, on Linux
    assert "/version" in docker_host.requests[0][1]  # docker-py negotiated the API version first
    create_path = next(path for method, path, _ in docker_host.requests if method == "POST")
    assert create_path.startswith("/v1.47/containers/create?name=gpu-container")


@pytest.mark.parametrize("request_, sent", [
    ({"DeviceIDs": ["0"], "Capabilities": [["gpu"]]}, {**ALL_GPUS, "Count": 0, "DeviceIDs": ["0"]}),
    # CDI, as `docker run --device nvidia.com/gpu=all` sends it (the README's host-side variant).
    ({"Driver": "cdi", "DeviceIDs": ["nvidia.com/gpu=all"]},
     {**ALL_GPUS, "Driver": "cdi", "Count": 0, "DeviceIDs": ["nvidia.com/gpu=all"], "Capabilities": []}),
])
def test_a_deployment_can_ask_for_other_gpus(docker_host, prefect_api, request_, sent):
    create_container_body({"container_create_kwargs": {"device_requests": [request_], "shm_size": "8g"}})
    host_config = _posted(docker_host)["HostConfig"]
    assert host_config["DeviceRequests"] == [sent]
    assert host_config["ShmSize"] == 8 * 1024**3


def test_container_create_kwargs_without_device_requests_drop_the_gpu(docker_host, prefect_api):
    """The pitfall the variable's description warns of: job variables replace the default whole."""
    create_container_body({"container_create_kwargs": {"shm_size": "8g"}})
    assert "DeviceRequests" not in _posted(docker_host)["HostConfig"]
