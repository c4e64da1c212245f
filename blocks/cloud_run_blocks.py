"""Blocks for the Cloud Run migration: where the service lives, and the GPU it moves to."""
from __future__ import annotations

import copy
import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.blocks.core import Block, schema_extra
from pydantic import ConfigDict, Field
from pydantic_core import core_schema

from gpuops.gpu_rules import GpuSpec

# prefect_gcp's package imports BigQuery, Storage, Secret Manager, Vertex AI and its workers (1.5 s):
# it is imported only when a CloudRunTarget actually holds credentials or is registered with a
# Prefect API. Until then the block's schema (what the UI's form and the API see) comes from
# GcpCredentials' own schema, stored in gcp_credentials.schema.json and checked against the
# installed prefect-gcp by tests/blocks.
_GCP_SCHEMA_FILE = Path(__file__).with_name("gcp_credentials.schema.json")
_GCP_CORE_REF = "prefect_gcp.credentials.GcpCredentials:lazy"


@lru_cache(maxsize=1)
def _stored_gcp_credentials_schema() -> dict:
    return json.loads(_GCP_SCHEMA_FILE.read_text())["schema"]


def gcp_credentials_schema() -> dict:
    """`GcpCredentials.model_json_schema()` of the prefect-gcp this project pins (a copy each call)."""
    return copy.deepcopy(_stored_gcp_credentials_schema())


def _gcp_credentials_class():
    from prefect_gcp import GcpCredentials

    return GcpCredentials


def _validate_gcp_credentials(value: Any):
    # What a field typed `GcpCredentials` accepts: an instance as it is, or its fields as a dict.
    cls = _gcp_credentials_class()
    return value if isinstance(value, cls) else cls.model_validate(value)


class LazyGcpCredentials:
    """Annotation of a field holding prefect-gcp `GcpCredentials`, without importing prefect_gcp
    until a value is validated. Its JSON schema is GcpCredentials' (a `$ref` to its definition)."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> core_schema.CoreSchema:
        # The ref makes pydantic put the schema under `definitions` and point at it, as it does for
        # a model; the serializer of the value's own class is used, as for a field typed with it.
        return core_schema.no_info_plain_validator_function(_validate_gcp_credentials, ref=_GCP_CORE_REF)

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema, handler: Any) -> dict:
        # As pydantic writes a Block nested in a model: without Prefect's `position` keys, and with
        # `additionalProperties` (Blocks allow extra fields); Block.model_json_schema puts the
        # positions back and drops additionalProperties, see CloudRunTarget.model_json_schema.
        fragment = gcp_credentials_schema()
        for prop in fragment.get("properties", {}).values():
            prop.pop("position", None)
        return {**fragment, "additionalProperties": True}


def _target_schema_extra(schema: dict[str, Any], model: type[Block]) -> None:
    """Prefect's block schema extras, plus what it derives from a nested Block annotation (secret
    fields, block schema reference) for the credentials field, whose annotation is lazy."""
    schema_extra(schema, model)
    gcp = gcp_credentials_schema()
    schema["secret_fields"] = [*schema["secret_fields"], *(f"credentials.{s}" for s in gcp["secret_fields"])]
    schema["block_schema_references"] = {
        **schema["block_schema_references"],
        "credentials": {"block_type_slug": gcp["block_type_slug"],
                        "block_schema_checksum": Block._calculate_schema_checksum(gcp)},
    }


class CloudRunTarget(Block):
    """A Cloud Run service to migrate, and how to reach its Admin API."""

    _block_type_name = "gpuops Cloud Run target"
    _block_type_slug = "gpuops-cloud-run-target"
    _documentation_url = "https://cloud.google.com/run/docs/reference/rest"
    _code_example = """
    ```python
    from blocks.cloud_run_blocks import CloudRunTarget

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
    credentials: Optional[LazyGcpCredentials] = Field(
        default=None,
        description="prefect-gcp credentials; empty means Application Default Credentials.",
    )

    model_config = ConfigDict(json_schema_extra=_target_schema_extra)

    def google_credentials(self):
        return self.credentials.get_credentials_from_service_account() if self.credentials else None

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        schema = super().model_json_schema(*args, **kwargs)
        if "GcpCredentials" in schema.get("definitions", {}):
            schema["definitions"]["GcpCredentials"] = gcp_credentials_schema()  # with Prefect's positions
        return schema

    @classmethod
    async def aregister_type_and_schema(cls, client=None) -> None:
        # Prefect registers a nested block's type first, found from the field's annotation.
        await _gcp_credentials_class().aregister_type_and_schema(client=client)
        await super().aregister_type_and_schema(client=client)

    @classmethod
    @async_dispatch(aregister_type_and_schema)
    def register_type_and_schema(cls, client=None) -> None:
        _gcp_credentials_class().register_type_and_schema(_sync=True)
        super().register_type_and_schema(_sync=True)


class GpuProfile(Block):
    """The GPU shape the service's jobs and GPU service get on Cloud Run."""

    _block_type_name = "gpuops GPU profile"
    _block_type_slug = "gpuops-gpu-profile"
    _documentation_url = "https://cloud.google.com/run/docs/configuring/services/gpu"
    _code_example = """
    ```python
    from blocks.cloud_run_blocks import GpuProfile

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


if __name__ == "__main__" and sys.argv[1:] == ["--write-gcp-credentials-schema"]:
    from prefect_gcp import GcpCredentials, __version__

    _GCP_SCHEMA_FILE.write_text(json.dumps({
        "_comment": json.loads(_GCP_SCHEMA_FILE.read_text())["_comment"],
        "prefect_gcp_version": __version__,
        "schema": GcpCredentials.model_json_schema(),
    }, indent=2) + "\n")
    print(f"wrote {_GCP_SCHEMA_FILE} (prefect-gcp {__version__})")
