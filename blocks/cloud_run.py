"""Blocks for the Cloud Run migration: where the service lives, and the GPU it moves to."""
from __future__ import annotations

from typing import Optional

from prefect.blocks.core import Block
from prefect_gcp import GcpCredentials
from pydantic import Field

from gpuops.gpu_rules import GpuSpec



class CloudRunTarget(Block):
    """A Cloud Run service to migrate, and how to reach its Admin API."""

    _block_type_name = "gpuops Cloud Run target"
    _block_type_slug = "gpuops-cloud-run-target"
    _documentation_url = "https://cloud.google.com/run/docs/reference/rest"
    _code_example = """
    ```python
    from blocks.cloud_run import CloudRunTarget

    target = CloudRunTarget.load("BLOCK_NAME")
    ```
    """

    project: str = Field(description="Google Cloud project ID that owns the service, e.g. `nca-toolkit-438301`.")
    region: str = Field(description="Cloud Run region of the service, e.g. `us-central1`.")
    service: str = Field(description="Name of the existing Cloud Run service, e.g. `no-code-architects-toolkit`.")
    endpoint: Optional[str] = Field(
        default=None,
        description=(
            "Cloud Run Admin API base URL. Empty means Google's endpoint; an `http://127.0.0.1:PORT` "
            "URL is a local emulator reached without credentials. `GPUOPS_CLOUD_RUN_API` wins over it."
        ),
    )
    credentials: Optional[GcpCredentials] = Field(
        default=None,
        description="prefect-gcp credentials; empty means Application Default Credentials.",
    )

    def google_credentials(self):
        return self.credentials.get_credentials_from_service_account() if self.credentials else None


class GpuProfile(Block):
    """The GPU shape the service's jobs and GPU service get on Cloud Run."""

    _block_type_name = "gpuops GPU profile"
    _block_type_slug = "gpuops-gpu-profile"
    _documentation_url = "https://cloud.google.com/run/docs/configuring/services/gpu"
    _code_example = """
    ```python
    from blocks.cloud_run import GpuProfile

    profile = GpuProfile.load("BLOCK_NAME")
    ```
    """

    gpu_type: str = Field(
        default="nvidia-l4",
        description="Cloud Run GPU type (`nodeSelector.accelerator`): `nvidia-l4` or `nvidia-rtx-pro-6000`.",
    )
    gpu_count: int = Field(default=1, description="GPUs per instance; Cloud Run allows exactly 1.")
    cpu: str = Field(default="8", description="CPU per GPU instance; an L4 needs at least 4.")
    memory: str = Field(default="32Gi", description="Memory per GPU instance; an L4 needs at least 16Gi.")
    gpu_zonal_redundancy: bool = Field(
        default=True,
        description=(
            "Keep GPU zonal redundancy (Cloud Run's default). Off is cheaper and best-effort "
            "(`gpuZonalRedundancyDisabled`), with its own quota."
        ),
    )
    min_instances: int = Field(
        default=0, description="Minimum GPU service instances; idle instances are billed at the full rate."
    )
    max_instances: int = Field(
        default=3,
        description="Maximum GPU service instances; 1 means a GPU maintenance event is downtime (3 recommended).",
    )
    concurrency: int = Field(default=1, description="Requests per GPU service instance; 1 gives each request the whole GPU.")
    timeout_seconds: int = Field(default=1800, description="Request timeout of the GPU service and task timeout of the jobs, in seconds.")
    job_max_retries: int = Field(default=3, description="Retries of a failed job task before the execution fails.")
    job_task_count: int = Field(default=1, description="Tasks per job execution.")

    def spec(self) -> GpuSpec:
        return GpuSpec(
            gpu_type=self.gpu_type,
            gpu_count=self.gpu_count,
            cpu=self.cpu,
            memory=self.memory,
            max_instances=self.max_instances,
            min_instances=self.min_instances,
        )
