"""Session-wide fixtures: one local Cloud Run emulator per test session, and run_v2 REST clients."""

from __future__ import annotations

from types import SimpleNamespace

import pytest


@pytest.fixture(scope="session")
def cloudrun_emulator():
    """One CloudRunEmulator on 127.0.0.1 for the whole session (state is shared: reset it)."""
    from gpuops.emulator import CloudRunEmulator

    with CloudRunEmulator() as emulator:
        yield emulator


@pytest.fixture
def fresh_cloudrun_emulator(cloudrun_emulator):
    """The session emulator, emptied before and after the test (resources, faults, log, runner)."""
    cloudrun_emulator.reset()
    cloudrun_emulator.runner = None
    yield cloudrun_emulator
    cloudrun_emulator.runner = None
    cloudrun_emulator.reset()


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


import os

# Retries back off in milliseconds here; production keeps its defaults.
os.environ.setdefault("GPUOPS_RETRY_INITIAL_S", "0.01")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
