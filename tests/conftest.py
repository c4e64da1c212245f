"""Session-wide stand-ins, each started once: the Cloud Run emulator (plain, and running workloads), a Prefect server."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

# Retries back off in milliseconds here; production keeps its defaults.
os.environ.setdefault("GPUOPS_RETRY_INITIAL_S", "0.01")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def cloudrun_emulator():
    """One CloudRunEmulator on 127.0.0.1 for the whole session (state is shared: reset it)."""
    from gpuops.emulator import CloudRunEmulator

    with CloudRunEmulator() as emulator:
        yield emulator


def emptied(emulator):
    """The emulator emptied before and after a test: resources, faults, log, runner, processes."""
    emulator.reset()
    emulator.runner = None
    yield emulator
    emulator.runner = None
    emulator.reset()


@pytest.fixture
def fresh_cloudrun_emulator(cloudrun_emulator):
    yield from emptied(cloudrun_emulator)


@pytest.fixture(scope="session")
def cloudrun_clients(cloudrun_emulator):
    """The real google-cloud-run v2 clients, over REST, pointed at the emulator."""
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import run_v2

    kwargs = dict(
        transport="rest",
        client_options=ClientOptions(api_endpoint=cloudrun_emulator.url),
        credentials=AnonymousCredentials(),
    )
    return SimpleNamespace(
        services=run_v2.ServicesClient(**kwargs),
        revisions=run_v2.RevisionsClient(**kwargs),
        jobs=run_v2.JobsClient(**kwargs),
        executions=run_v2.ExecutionsClient(**kwargs),
        tasks=run_v2.TasksClient(**kwargs),
    )


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect server (subprocess, SQLite, 127.0.0.1) for the session; yields its API URL.

    prefect_test_harness also points this process's settings (PREFECT_API_URL) at it.
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    # Startup takes ~20 s on a 2-core machine: allow more than the default 30 s under load.
    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture
def seeded_cloud_run(fresh_cloudrun_emulator, monkeypatch, tmp_path):
    """The emulator holding the runbook's service, with gpuops pointed at it and a fresh state dir."""
    from importlib import resources

    seed = resources.files("gpuops.data").joinpath("demo_seed.json").read_text()
    fresh_cloudrun_emulator.seed(json.loads(seed))
    fresh_cloudrun_emulator.clear_requests()
    monkeypatch.setenv("GPUOPS_CLOUD_RUN_API", fresh_cloudrun_emulator.url)
    monkeypatch.setenv("GPUOPS_STATE_DIR", str(tmp_path / "state"))
    return fresh_cloudrun_emulator


def use_nvidia_smi_reading(directory: str, card: str) -> None:
    """Make the fake nvidia-smi in directory print a recorded reading (`l4`, `gtx1080`, ...)."""
    from gpuops.emulator.fake_nvidia_smi import install_fake_nvidia_smi, recorded_reading

    install_fake_nvidia_smi(directory, recorded_reading(card))


@pytest.fixture(scope="session")
def workload_emulator(tmp_path_factory):
    """An emulator that runs workloads as local processes, with gpuops' fake nvidia-smi (a recorded
    L4 reading) first on their PATH, so the probe runs for real inside emulated jobs."""
    from gpuops.emulator import CloudRunEmulator

    bin_dir = str(tmp_path_factory.mktemp("fake-gpu-bin"))
    use_nvidia_smi_reading(bin_dir, "l4")
    with CloudRunEmulator(run_workloads=True, extra_path=[bin_dir], extra_env={"GPUOPS_EMULATED_GPU": "1"},
                          startup_timeout_s=15) as emulator:
        emulator.fake_smi_dir = bin_dir
        yield emulator


@pytest.fixture
def fresh_workload_emulator(workload_emulator):
    yield from emptied(workload_emulator)


@pytest.fixture
def gpu_cloud_run(fresh_workload_emulator, monkeypatch, tmp_path):
    """The GPU workload emulator seeded with workload_seed() (the sample app), gpuops pointed at it,
    a fresh state dir, and the L4 reading; `use_reading(card)` swaps the reading for this test."""
    from gpuops.demo_seed import workload_seed

    emu = fresh_workload_emulator
    use_nvidia_smi_reading(emu.fake_smi_dir, "l4")
    emu.seed(workload_seed())
    emu.clear_requests()
    emu.use_reading = lambda card: use_nvidia_smi_reading(emu.fake_smi_dir, card)
    monkeypatch.setenv("GPUOPS_CLOUD_RUN_API", emu.url)
    monkeypatch.setenv("GPUOPS_STATE_DIR", str(tmp_path / "state"))
    yield emu
    use_nvidia_smi_reading(emu.fake_smi_dir, "l4")


@pytest.fixture
def key_file(gpu_cloud_run, tmp_path, monkeypatch):
    """A service-account key file from the emulator as GOOGLE_APPLICATION_CREDENTIALS: google-auth's own
    ID-token flow then gets tokens the emulator signed and checks."""
    path = tmp_path / "prober-key.json"
    path.write_text(json.dumps(gpu_cloud_run.service_account_key()))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    return path


@pytest.fixture
def artifact_text(prefect_api):
    """Read every artifact with a key from the Prefect server, as one JSON text to search."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    def read(key: str) -> str:
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
        assert found, f"no artifact {key}"
        return json.dumps([a.data for a in found], default=str)

    return read


# The Hugging Face Hub emulator: no Xet (it serves regular uploads only), no telemetry, never offline.
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.pop("HF_HUB_OFFLINE", None)
HF_TEST_TOKEN = "hf_gpuopsTestToken0123456789"


@pytest.fixture(scope="session")
def hf_hub_emulator(tmp_path_factory):
    """One HfHubEmulator on 127.0.0.1 for the session, writes needing HF_TEST_TOKEN (`.write_token`)."""
    from gpuops.emulator.hf_hub_api import HfHubEmulator

    with HfHubEmulator(data_dir=tmp_path_factory.mktemp("hf-hub"), token=HF_TEST_TOKEN) as emulator:
        emulator.write_token = HF_TEST_TOKEN
        yield emulator


@pytest.fixture
def fresh_hf_hub(hf_hub_emulator, monkeypatch):
    """The Hub emulator emptied before and after a test, with HF_ENDPOINT pointing at it."""
    hf_hub_emulator.reset()
    monkeypatch.setenv("HF_ENDPOINT", hf_hub_emulator.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield hf_hub_emulator
    hf_hub_emulator.reset()


class S3StandIn:
    """moto's S3 served by ThreadedMotoServer on 127.0.0.1, with a thin WSGI layer in front that
    (1) makes each request atomic, as S3 and R2 make a conditional put (moto checks If-Match, then
    writes, with no lock between), and (2) answers the next matching requests with an injected
    error (`fail_next`), so transient faults travel over real HTTP to the real boto3 client; with
    `after=True` the request is served first and only its answer is lost."""

    def __init__(self):
        import logging
        import threading

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        self._lock, self._faults, self.injected = threading.Lock(), [], []
        inner = self.server._server.app  # werkzeug's server calls `.app` per request
        self.server._server.app = lambda environ, start: self._serve(inner, environ, start)

    def fail_next(self, method: str, status: int = 503, code: str = "SlowDown", count: int = 1,
                  after: bool = False) -> None:
        self._faults += [(method, status, code, after)] * count

    def reset(self) -> None:
        import urllib.request

        self._faults.clear()
        self.injected.clear()
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=10)

    def _serve(self, inner, environ, start):
        method = environ["REQUEST_METHOD"]
        with self._lock:
            fault = next((f for f in self._faults if f[0] == method), None)
            if fault is not None:
                self._faults.remove(fault)
                self.injected.append((method, environ.get("PATH_INFO", ""), fault[1]))
        if fault is not None and fault[3]:
            with self._lock:
                list(inner(environ, lambda *a: None))  # served, and its answer dropped
        if fault is not None:
            body = f"<Error><Code>{fault[2]}</Code><Message>injected by the test</Message></Error>".encode()
            start(f"{fault[1]} Injected", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
            return [body]
        # Reads too: moto answers a GET racing a PUT of the same key with a 500 (its value's file is closed
        # under it), which S3 and R2 never do.
        with self._lock:
            return list(inner(environ, start))

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="session")
def moto_s3():
    """One S3 stand-in (moto) on 127.0.0.1 for the session; `status_bucket` empties it per test."""
    stand_in = S3StandIn()
    yield stand_in
    stand_in.stop()


@pytest.fixture
def status_bucket(moto_s3, monkeypatch):
    """An empty status bucket on the stand-in, and gpuops pointed at it (CONTRACTS §2 variables)."""
    import boto3

    moto_s3.reset()
    bucket = "gpuops-status"
    for name, value in {"GPUOPS_S3_ENDPOINT": moto_s3.url, "GPUOPS_STATUS_BUCKET": bucket,
                        "AWS_ACCESS_KEY_ID": "test-access-key", "AWS_SECRET_ACCESS_KEY": "test-secret-key",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    boto3.session.Session().client("s3", endpoint_url=moto_s3.url, region_name="us-east-1").create_bucket(Bucket=bucket)
    yield SimpleNamespace(url=moto_s3.url, bucket=bucket, stand_in=moto_s3)
    moto_s3.reset()
