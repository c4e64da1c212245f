"""prefect-gcp's Cloud Run v2 worker, pointed at `GPUOPS_CLOUD_RUN_API` when it is set."""

from __future__ import annotations

import os

from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from googleapiclient import discovery
from googleapiclient.discovery import Resource
from prefect_gcp.workers.cloud_run_v2 import CloudRunWorkerJobV2Configuration, CloudRunWorkerV2

from gpuops.cloudrun import ENDPOINT_ENV

WORKER_TYPE = "gpuops-cloud-run-v2"


def cloud_run_endpoint() -> str | None:
    """The Cloud Run Admin API base URL gpuops is pointed at; None means Google's own."""
    return os.environ.get(ENDPOINT_ENV) or None


class GpuopsCloudRunWorkerV2(CloudRunWorkerV2):
    """prefect-gcp's CloudRunWorkerV2, unchanged but for its client's endpoint.

    prefect-gcp fixes `https://run.googleapis.com` in `_get_client`; this worker type uses
    `GPUOPS_CLOUD_RUN_API` when set (an `http://` URL, the local emulator, without credentials), so
    the same job template, job body, submission, polling and clean-up code runs against the emulator.
    Unset, it is prefect-gcp's worker exactly.
    """

    type = WORKER_TYPE
    _display_name = "Google Cloud Run V2 (gpuops: GPUOPS_CLOUD_RUN_API)"
    _description = (
        "prefect-gcp's Cloud Run V2 worker that honours GPUOPS_CLOUD_RUN_API (the gpuops Cloud Run "
        "emulator on 127.0.0.1, or another endpoint); unset, it talks to run.googleapis.com."
    )

    @staticmethod
    def _get_client(configuration: CloudRunWorkerJobV2Configuration) -> Resource:
        endpoint = cloud_run_endpoint()
        if endpoint is None:
            return CloudRunWorkerV2._get_client(configuration)
        if endpoint.startswith("http://"):
            credentials = AnonymousCredentials()  # a local emulator: no Google credentials
        else:
            credentials = configuration.credentials.get_credentials_from_service_account()
        # static_discovery: the Run v2 discovery document shipped with google-api-python-client,
        # so building the client needs no network (the default for the default discovery URL too).
        return (
            discovery.build(
                "run", "v2", client_options=ClientOptions(api_endpoint=endpoint), credentials=credentials,
                static_discovery=True, num_retries=3,
            )
            .projects()
            .locations()
        )


__all__ = ["GpuopsCloudRunWorkerV2", "WORKER_TYPE", "cloud_run_endpoint"]
