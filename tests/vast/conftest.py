"""The vast.ai stand-in, started once per session; each test gets it emptied, with gpuops pointed at it."""
import sys

import pytest

from tests.adapters.test_registry import registry, registry_emulator  # noqa: F401  fixtures (the image's lookup)

RUNTIME_IMAGE = "nvidia/cuda:12.4.1-runtime-ubuntu22.04"  # in the registry stand-in: 4 GB, official
APP = f"{sys.executable} -m gpuops_cli.sample_app_cli --port $APP_PORT"
FETCH = "mkdir -p models/demo && head -c 1500000 /dev/zero > models/demo/weights.bin"  # no network in tests


@pytest.fixture(scope="session")
def vast_api():
    from gpuops.emulator.vast_api import VastApiEmulator

    with VastApiEmulator(boot_s=0.2) as emulator:
        yield emulator


@pytest.fixture
def stand_in(vast_api, monkeypatch):
    """The stand-in with the sample's offers and machines, no instances or logged requests; VAST_API_KEY and
    GPUOPS_VAST_API (the module docstring of gpuops.vast) pointing at it."""
    vast_api.reset()
    monkeypatch.setenv("GPUOPS_VAST_API", vast_api.url)
    monkeypatch.setenv("VAST_API_KEY", vast_api.api_key)
    yield vast_api
    vast_api.reset()


def provision_args(**changes) -> dict:
    """provision-vast's parameters for tests: the sample app behind the real set-up template, bounds in seconds."""
    return {"image": RUNTIME_IMAGE, "app_command": APP, "model_dir": "models/demo", "model_min_mb": 1,
            "model_fetch": FETCH, "model_gib": 10.0, "offer_filter": {"gpu_name": "Tesla T4"}, "wait_s": 6.0,
            "boot_timeout_s": 10.0, "approval_timeout_s": 1, "latency_target_ms": 2000.0, "steps": 50, **changes}
